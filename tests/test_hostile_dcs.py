"""Whatever the keys under /service/<scope>/ hold, a snapshot is built without an exception, and
everything in it is either valid or unknown (never a safe-looking default)."""
from __future__ import annotations

import json

from hypothesis import given, settings
from hypothesis import strategies as st

from governor import ha
from governor.cluster import parse_conn_url
from governor.dcs.keys import UNKNOWN_HOLDER, Entry, build_cluster
from governor.sync import SyncState

KEYS = ["initialize", "leader", "optime/leader", "pause", "failover", "sync", "config", "history", "failsafe",
        "members/node1", "members/node2", "members/", "members/a b", "members/" + "x" * 80, "other"]
json_values = st.recursive(st.one_of(st.none(), st.booleans(), st.integers(min_value=-2**70, max_value=2**70),
                                     st.floats(), st.text(max_size=20)),
                           lambda inner: st.one_of(st.lists(inner, max_size=4),
                                                   st.dictionaries(st.text(max_size=10), inner, max_size=4)),
                           max_leaves=20)
values = st.one_of(st.none(), st.text(max_size=40), json_values.map(lambda v: json.dumps(v)),
                   st.just("[" * 100000), st.just("\ufffd\ufffd"), st.just("18446744073709551616"),
                   st.just("-5"), st.just('{"quorum": 1e999, "members": ["node1"]}'),
                   st.just('{"leader": "node2", "members": {"node3": "http://127.0.0.1:8008"}}'),
                   st.just('{"leader": "node2", "members": {"node1": "http://127.0.0.1:8008"}}'))
entries = st.lists(st.tuples(st.one_of(st.sampled_from(KEYS), st.text(max_size=20)), values), max_size=12)


@settings(max_examples=600, deadline=None)
@given(entries)
def test_any_keys_give_a_snapshot_of_valid_or_unknown_values(pairs):
    cluster = build_cluster([Entry(k, v, i) for i, (k, v) in enumerate(pairs)], 1)
    assert cluster.leader_lsn is None or 0 <= cluster.leader_lsn < 2**64
    for m in cluster.members:
        assert 0 < len(m.name) <= 63 and " " not in m.name
        assert m.lsn is None or 0 <= m.lsn < 2**64
        assert m.conn_url is None or isinstance(m.conn_url, str)
    if cluster.sync is not None:
        assert isinstance(cluster.sync.members, tuple) and all(isinstance(x, str) for x in cluster.sync.members)
    local = ha.LocalState(name="node1", data=ha.POSTGRES, sysid=cluster.initialize, running=True, role="replica",
                          lsn=100)
    decision = ha.decide(cluster, local)      # never raises
    if decision.case == "leader_race":
        assert not cluster.leader_lsn_unreadable, "raced with an unreadable leader position"
        assert not cluster.failsafe_unreadable, "raced with an unreadable failsafe list"
        assert cluster.failsafe is None or "node1" in cluster.failsafe.members, "raced off the failsafe list"
        assert cluster.sync is None or not cluster.sync.synchronous or "node1" in cluster.sync.members


def test_unreadable_leader_and_sync_keys_are_held_and_unknown():
    cluster = build_cluster([Entry("initialize", "1", 1), Entry("leader", "", 2), Entry("sync", "{", 3),
                             Entry("optime/leader", "100", 4)], 5)
    assert cluster.leader.name == UNKNOWN_HOLDER
    assert cluster.sync == SyncState.unknown(3)
    assert len(cluster.problems) == 2
    local = ha.LocalState(name="node1", data=ha.POSTGRES, sysid="1", running=True, role="primary", lsn=100)
    assert ha.decide(cluster, local).case == "demote_for_new_leader"   # demoted; rewound once a primary is known
    no_leader = build_cluster([Entry("initialize", "1", 1), Entry("sync", "{", 3), Entry("optime/leader", "100", 4)],
                              5)
    replica = ha.LocalState(name="node1", data=ha.POSTGRES, sysid="1", running=True, role="replica", lsn=100)
    assert ha.decide(no_leader, replica).case == "race_not_synchronous"


def test_conn_urls_that_would_inject_into_primary_conninfo_are_refused():
    assert parse_conn_url("postgres://10.0.0.1:5432/postgres") == ("10.0.0.1", 5432)
    assert parse_conn_url("postgres://[fe80::1]:5433/postgres") == ("fe80::1", 5433)
    for bad in ("postgres://x' host=evil:5432/", "postgres://a b:5432/", "postgres://h:99999/", "postgres://h:x/",
                "postgres://\n:5432/", 5432, None):
        assert parse_conn_url(bad) is None, bad


standby_values = st.one_of(json_values, st.fixed_dictionaries(
    {"host": st.one_of(st.text(max_size=30), st.sampled_from(["site-a", "10.0.0.1", "a' b", "h\nrestore_command=x"])),
     "port": st.one_of(st.integers(-5, 70000), st.booleans(), st.text(max_size=5))},
    optional={"primary_slot_name": json_values, "restore_command": json_values, "x": json_values}))


@settings(max_examples=400, deadline=None)
@given(standby_values, st.sampled_from([None, "node1", "node2"]), st.sampled_from(["primary", "replica", None]),
       st.booleans())
def test_any_standby_cluster_value_promotes_nothing_and_reaches_postgres_only_when_valid(value, leader, role, empty):
    config = json.dumps({"standby_cluster": value})
    pairs = [("config", config)] + ([] if empty else [("initialize", "7000000000000000001")])
    if leader:
        pairs.append(("leader", leader))
    cluster = build_cluster([Entry(k, v, i + 1) for i, (k, v) in enumerate(pairs)], 1)
    local = ha.LocalState(name="node1", data=ha.EMPTY if empty else ha.POSTGRES,
                          sysid=None if empty else "7000000000000000001", running=role is not None and not empty,
                          role=None if empty else role, lsn=100)
    decision = ha.decide(cluster, local)
    assert ha.Action.PROMOTE not in decision.actions, decision
    if empty:
        assert decision.actions in ((), (ha.Action.BOOTSTRAP,)) and (decision.actions == () or decision.remote), \
            "a standby cluster never runs initdb"
    if decision.remote is not None:
        host, port = decision.remote[0], decision.remote[1]
        assert parse_conn_url(f"postgres://{host}:{port}/x") == (host, port), decision.remote
        assert decision.remote[3] is None or "\n" not in decision.remote[3]
