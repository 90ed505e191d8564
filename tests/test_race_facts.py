"""What a replica asks before a leader race (observe.race_facts): a server that cannot say whether it
takes writes blocks the race, unless its own governor answers that it is a standby still in
recovery (only that governor could promote it, and it holds no lock). Found in the ten-crash
synchronous test: a rewound replica waited for WAL from the leader that had just died, said
"the database system is starting up", and no other member would promote: nothing ever moved."""
from __future__ import annotations

from types import SimpleNamespace

from governor.cluster import Cluster, Member
from governor.observe import race_facts
from governor.peers import member_from_status


def node(answers, statuses):
    class Peers:
        def ask_all(self, members, servers, pg, sysid, cafile):
            return {name: member_from_status(statuses.get(name), name) for name in members}, \
                [answers[address] for address in servers]
    return SimpleNamespace(name="node1", mem=SimpleNamespace(last_leader_at=None), server_state=None, pg=None,
                           peers=Peers(), config=SimpleNamespace(restapi=SimpleNamespace(cafile=None)))


def members():
    return Cluster(initialize="1", leader=None, members=(
        Member(name="node1", role="replica", state="running", conn_url="postgres://10.0.0.1:5432/postgres",
               api_url="http://10.0.0.1:8008"),
        Member(name="node3", role="unknown", state="starting", conn_url="postgres://10.0.0.3:5432/postgres",
               api_url="http://10.0.0.3:8008")))


def status(**extra):
    return {"name": "node3", "role": "unknown", "state": "starting", "running": True, **extra}


def test_a_server_that_cannot_say_blocks_the_race():
    facts = race_facts(node({("10.0.0.3", 5432): None}, {"node3": status()}), members(), "1")
    assert facts["unknown_elsewhere"] == ("node3 (10.0.0.3:5432)",)


def test_unless_its_governor_says_it_is_a_standby_still_recovering():
    facts = race_facts(node({("10.0.0.3", 5432): None}, {"node3": status(recovering_standby=True)}), members(), "1")
    assert facts["unknown_elsewhere"] == () and facts["writable_elsewhere"] == ()


def test_its_governors_word_counts_only_for_its_own_server_and_only_as_a_plain_true():
    for said in ("true", 1, {"x": 1}):
        facts = race_facts(node({("10.0.0.3", 5432): None}, {"node3": status(recovering_standby=said)}),
                           members(), "1")
        assert facts["unknown_elsewhere"] == ("node3 (10.0.0.3:5432)",), said
    # another member's status naming node3 does not vouch for node3's server
    other = {"name": "node4", "recovering_standby": True}
    facts = race_facts(node({("10.0.0.3", 5432): None}, {"node3": status(), "node4": other}), members(), "1")
    assert facts["unknown_elsewhere"] == ("node3 (10.0.0.3:5432)",)


def test_a_writable_answer_always_blocks():
    facts = race_facts(node({("10.0.0.3", 5432): True}, {"node3": status(recovering_standby=True)}), members(), "1")
    assert facts["writable_elsewhere"] == ("node3 (10.0.0.3:5432)",)
