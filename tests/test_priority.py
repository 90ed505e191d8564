"""failover_priority: validated in the configuration, read defensively from etcd, shown in
`list`, refused as a switchover's target at 0 (the race cases are rows of tests/test_ha.py)."""
from __future__ import annotations

import pytest

from governor import config
from governor.cluster import Cluster, Leader, Member, failover_priority
from governor.ctl_view import format_table

PG = {"name": "pg1", "data_dir": "/tmp/none", "bin_dir": "/usr/lib/postgresql/15/bin",
      "replication": {"password": "p"}}


def validated(tags) -> config.Config:
    return config.validate({"etcd": {"scope": "s"}, "postgresql": PG, "tags": tags}, {}, "governor.yml")


def test_a_priority_from_0_to_10000_is_accepted_and_absent_is_1():
    assert validated({"failover_priority": 0}).tags["failover_priority"] == 0
    assert validated({"failover_priority": 10000}).tags["failover_priority"] == 10000
    assert failover_priority(validated({}).tags) == 1


@pytest.mark.parametrize("tags,said", [
    ({"failover_priority": -1}, "tags.failover_priority: expected 0 (never leads) to 10000"),
    ({"failover_priority": 10001}, "tags.failover_priority: expected 0 (never leads) to 10000"),
    ({"failover_priority": "high"}, "tags.failover_priority: expected an integer"),
    ({"failover_priority": True}, "tags.failover_priority: expected an integer"),
    ({"failover_priority": 3, "nofailover": True}, "tags.failover_priority: contradicts tags.nofailover: true"),
])
def test_a_bad_priority_is_refused(tags, said):
    with pytest.raises(config.ConfigError) as err:
        validated(tags)
    assert f"governor.yml: {said}" in str(err.value)


@pytest.mark.parametrize("value,read", [(5, 5), (0, 0), ("5", 1), (True, 1), (-3, 1), (10**30, 1), (None, 1)])
def test_a_priority_from_etcd_is_read_defensively(value, read):
    assert failover_priority({"failover_priority": value}) == read


def test_list_shows_the_priority_and_flags_and_nothing_a_tag_could_smuggle():
    members = (Member.from_json("node2", '{"role": "replica", "state": "running", "tags": {"failover_priority": 0,'
                                         ' "nosync": true, "noloadbalance": false, "x": "a\\u001b[2J,b"}}'),)
    table = format_table("s", Cluster(initialize="1", leader=Leader("node1"), members=members))
    row = [line for line in table.splitlines() if line.startswith("| node2")][0]
    assert "failover_priority=0,nosync,x=a?[2J?b" in row and "noloadbalance" not in row and "\x1b" not in table


@pytest.mark.integration
def test_the_higher_priority_leads_among_equals_and_priority_0_is_never_a_switchover_target(make_cluster):
    from tests import harness
    auth = {"restapi": {"username": "admin", "password": "api-Secret-9"}}
    cluster = make_cluster("prio")
    cluster.add("node1", extra=auth)
    first = cluster.wait_for_primary(60)
    cluster.add("node2", extra=dict(auth, tags={"failover_priority": 1}))
    cluster.add("node3", extra=dict(auth, tags={"failover_priority": 5}))
    cluster.add("node4", extra=dict(auth, tags={"failover_priority": 0}))
    cluster.wait_for_streaming(["node2", "node3", "node4"], 90)
    refused = harness.governorctl(first, "switchover", "--leader", "node1", "--candidate", "node4", "--force")
    assert refused.returncode != 0 and "never leads" in refused.stdout + refused.stderr
    first.sql("CHECKPOINT")     # nothing in flight: the replicas end equally advanced
    harness.wait_until(lambda: len({n.sql("SELECT pg_last_wal_receive_lsn()")[0][0]
                                    for n in cluster.nodes.values() if n is not first}) == 1, 10, "equal positions")
    first.crash()
    new = cluster.wait_for_primary(40)
    assert new.name == "node3", f"{new.name} leads"
    assert "failover_priority (5 > 1)" in cluster.nodes["node2"].log_text()
    harness.wait_until(lambda: cluster.nodes["node4"].is_streaming() and cluster.nodes["node2"].is_streaming(), 30,
                       "the others to follow node3")


def test_list_shows_each_members_governor_and_postgresql_versions_read_defensively():
    members = (Member.from_json("node2", '{"role": "replica", "state": "running", "version": "0.2.0",'
                                         ' "pg_version": 170002}'),
               Member.from_json("node3", '{"role": "replica", "state": "running", "version": "x\\u001b[2J",'
                                         ' "pg_version": "17"}'))
    table = format_table("s", Cluster(initialize="1", leader=Leader("node1"), members=members))
    assert "Versions" in table.splitlines()[2]
    assert "0.2.0 / PG 17.2" in [line for line in table.splitlines() if line.startswith("| node2")][0]
    assert "x[2J / PG ?" in [line for line in table.splitlines() if line.startswith("| node3")][0]
