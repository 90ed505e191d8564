"""Failsafe's conversation over real HTTP: each member is a real ApiServer whose POST /failsafe is
vouch.answer over that member's memory; the leader's round is vouch.ask_members. What a member
promises and when it refuses; what the leader concludes, within its time bound."""
from __future__ import annotations

import time
from dataclasses import replace
from types import SimpleNamespace

import pytest

from governor import config as config_mod
from governor import failsafe, observe, vouch
from governor.api import ApiServer
from governor.failsafe import FailsafeList
from governor.memory import NodeMemory
from governor.peers import Peers
from governor.postgres.disk import DataDirectory
from governor.postgres.server import ServerState
from governor.status import NodeStatus
from governor.wakeups import OnChange

SYSID = "7000000000000000001"


def node(tmp_path, name: str, role: str = "replica", leader: str = "leader", mode: bool = True,
         sysid: str = SYSID) -> SimpleNamespace:
    pg = {"name": name, "data_dir": str(tmp_path / name), "bin_dir": "/usr/lib/postgresql/15/bin",
          "replication": {"password": "p"}}
    cfg = config_mod.validate({"etcd": {"scope": "s", "ttl": 10}, "retry_timeout": 4, "loop_wait": 1,
                               "failsafe_mode": mode, "postgresql": pg}, {}, "test")
    cfg = replace(cfg, restapi=replace(cfg.restapi, port=0))
    mem = NodeMemory()
    mem.last_leader, mem.sysid = leader, sysid
    state = ServerState(role=role, sysid=sysid, timeline=1, lsn=1, replay_lsn=1, receiving_from=None)
    return SimpleNamespace(name=name, config=cfg, mem=mem, server_state=state, once=OnChange(), peers=Peers(),
                           disk=DataDirectory(lambda: cfg.postgresql))


def serve(member: SimpleNamespace, delay: float = 0.0) -> ApiServer:
    def answer(body: dict):
        time.sleep(delay)
        return vouch.answer(member, body)

    api = ApiServer(member.config, lambda: NodeStatus(name=member.name, scope="s"),
                    controls={"POST /failsafe": answer})
    api.start()
    return api


@pytest.fixture
def members(tmp_path):
    made = []

    def make(*specs):
        out = []
        for spec in specs:
            spec = dict(spec)
            delay = spec.pop("delay", 0.0)
            member = node(tmp_path, **spec)
            api = serve(member, delay)
            made.append(api)
            out.append((member, f"http://127.0.0.1:{api.httpd.server_address[1]}"))
        return out

    yield make
    for api in made:
        api.stop()


def leader_for(tmp_path, listed) -> SimpleNamespace:
    lead = node(tmp_path, "leader", role="primary", leader="leader")
    lead.mem.failsafe_list = FailsafeList("leader", {m.name: url for m, url in listed})
    return lead


def test_every_member_vouches_and_promises_ttl(tmp_path, members):
    listed = members({"name": "node2"}, {"name": "node3"})
    lead = leader_for(tmp_path, listed)
    before = time.monotonic()
    sent = vouch.ask_members(lead)
    assert sent is not None and before <= sent <= time.monotonic()
    for member, _url in listed:
        assert vouch.promised_to(member) == "leader"
        assert member.mem.failsafe_promise[1] >= sent + 10


@pytest.mark.parametrize("said,spec", [
    ("the leader this member knows is node9", {"name": "node3", "leader": "node9"}),
    ("PostgreSQL here is not running as a replica", {"name": "node3", "role": "primary"}),
    ("failsafe_mode is off on this member", {"name": "node3", "mode": False}),
    ("system identifier 7000000000000000001 is not this member's (123)", {"name": "node3", "sysid": "123"}),
])
def test_one_member_in_doubt_fails_the_round_and_the_leader_logs_why(tmp_path, members, said, spec, caplog):
    listed = members({"name": "node2"}, spec)
    with caplog.at_level("WARNING", logger="governor"):
        assert vouch.ask_members(leader_for(tmp_path, listed)) is None
    assert vouch.promised_to(listed[1][0]) is None
    assert f"node3: answered 409: not vouching for leader: {said}" in caplog.text


def test_a_silent_slow_or_impostor_member_fails_the_round_within_its_time(tmp_path, members):
    times = failsafe.timing(10, 1, 4)
    listed = members({"name": "node2"}, {"name": "node3", "delay": times[0] + 2})
    lead = leader_for(tmp_path, listed)
    started = time.monotonic()
    assert vouch.ask_members(lead) is None
    assert time.monotonic() - started < times[0] + 0.5, "the round waited past its bound"
    # an address that leads to another member, and one where nothing listens
    (node2, url2), = members({"name": "node2"})
    for url in (url2, "http://127.0.0.1:9"):
        lead.mem.failsafe_list = FailsafeList("leader", {"node4": url})
        assert vouch.ask_members(lead) is None


def test_a_member_asked_while_its_loop_reads_postgresql_answers_from_what_it_knew(tmp_path, monkeypatch):
    """The leader's round and the member's own pass run at once (both wake when etcd fails): a
    read of PostgreSQL in progress is no reason to doubt. (It was: the loop cleared what it knew
    before asking, and the answer in between was 409 "not running as a replica".)"""
    member = node(tmp_path, "node2")
    member.pg, member.cluster = member.config.postgresql, None
    known = member.server_state
    answers = []

    def state() -> ServerState:
        answers.append(vouch.answer(member, {"leader": "leader", "sysid": SYSID})[0])
        return known

    member.controller = SimpleNamespace(is_running=lambda: True)
    member.server = SimpleNamespace(state=state, refuses_new_connections=lambda: None)
    monkeypatch.setattr(observe.datadir, "classify", lambda _d: observe.datadir.POSTGRES)
    local = observe.observe_local(member)
    assert local.role == "replica" and answers == [200]


def test_no_list_or_no_room_in_the_timing_means_no_failsafe(tmp_path):
    lead = node(tmp_path, "leader", role="primary")
    assert vouch.ask_members(lead) is None
    lead.mem.failsafe_list = FailsafeList("leader", {})
    assert vouch.ask_members(lead) is not None          # a cluster of one: nobody else can race
    lead.config = replace(lead.config, retry_timeout=3)
    assert vouch.ask_members(lead) is None


def test_a_member_taking_the_lock_promises_nothing_and_a_promise_stops_its_race(tmp_path):
    member = node(tmp_path, "node2")
    assert vouch.start_racing(member) is None
    code, body = vouch.answer(member, {"leader": "leader", "sysid": SYSID})
    assert code == 409 and "taking the leader lock" in body["error"]
    other = node(tmp_path, "node3")
    assert vouch.answer(other, {"leader": "leader", "sysid": SYSID})[0] == 200
    assert vouch.start_racing(other) == "leader"


@pytest.mark.parametrize("body", [{}, {"leader": 5}, {"leader": "bad name!"}, {"leader": "leader", "sysid": 7},
                                  {"leader": "x" * 1000}])
def test_a_malformed_request_gets_400_and_no_promise(tmp_path, body):
    member = node(tmp_path, "node2")
    assert vouch.answer(member, body)[0] == 400
    assert vouch.promised_to(member) is None


def test_a_member_never_vouches_for_itself(tmp_path):
    member = node(tmp_path, "node2", leader="node2")
    assert vouch.answer(member, {"leader": "node2", "sysid": SYSID})[0] == 409


def test_failsafe_mode_is_refused_where_the_timing_leaves_no_room(tmp_path):
    from governor import dynamic
    pg = {"name": "n", "data_dir": str(tmp_path / "n"), "bin_dir": "/usr/lib/postgresql/15/bin",
          "replication": {"password": "p"}}
    with pytest.raises(config_mod.ConfigError) as info:
        config_mod.validate({"etcd": {"scope": "s", "ttl": 10}, "retry_timeout": 3, "loop_wait": 1,
                             "failsafe_mode": True, "postgresql": pg}, {}, "g.yml")
    assert info.value.problems == ["g.yml: failsafe_mode: failsafe_mode needs at least 1 s for the members to "
                                   "answer before the lock fence's margin (2 s at ttl 10): retry_timeout - margin - "
                                   "0.5 and ttl - margin - loop_wait - retry_timeout - 0.5 must both be >= 1; got "
                                   "ttl 10, loop_wait 1, retry_timeout 3"]
    assert dynamic.validate({"failsafe_mode": "yes"}) == ["config: failsafe_mode: expected true or false, got 'yes'"]
    assert dynamic.validate({"failsafe_mode": True, "ttl": 10, "loop_wait": 1, "retry_timeout": 3})[0].startswith(
        "config: failsafe_mode: failsafe_mode needs at least 1 s")
    assert dynamic.validate({"failsafe_mode": True}) == []        # the defaults (30, 10, 10) leave room
    base = config_mod.validate({"etcd": {"scope": "s"}, "postgresql": pg}, {}, "g")
    cfg = dynamic.apply(base, {"failsafe_mode": True})
    assert cfg.failsafe_mode is True


def test_list_shows_what_failsafe_has_a_member_do_and_nothing_a_key_could_smuggle():
    from governor.cluster import Cluster, Leader, Member
    from governor.ctl_view import format_table
    quiet = Member.from_json("node3", '{"role": "replica", "state": "running"}')
    promised = Member.from_json("node2", '{"role": "replica", "state": "running", '
                                         '"failsafe": "vouched for node1: not racing\\u001b[2J\\u0007"}')
    assert promised.failsafe == "vouched for node1: not racing[2J"
    table = format_table("s", Cluster(initialize="1", leader=Leader("node1"), members=(promised, quiet)))
    assert "Failsafe" in table and "vouched for node1" in table and "\x1b" not in table
    assert "Failsafe" not in format_table("s", Cluster(initialize="1", leader=Leader("node1"), members=(quiet,)))
