"""clonefrom: a new replica copies a running replica tagged clonefrom instead of the leader,
then streams from the leader. Checked in PostgreSQL's own logs (log_replication_commands):
the BASE_BACKUP reaches the tagged replica, not the leader."""
from __future__ import annotations

import pytest

from tests import harness

pytestmark = pytest.mark.integration
LOGGED = {"postgresql": {"parameters": {"log_replication_commands": "on"}}}


def base_backups(node: harness.Node) -> int:
    with open(node.pg_log, errors="replace") as fh:
        return fh.read().count("received replication command: BASE_BACKUP")


def test_a_new_replica_copies_the_tagged_replica_and_streams_from_the_leader(make_cluster):
    cluster = make_cluster("clonefrom")
    cluster.add("node1", extra=LOGGED)
    leader = cluster.wait_for_primary(60)
    cluster.add("node2", extra=dict(LOGGED, tags={"clonefrom": True}))
    cluster.wait_for_streaming(["node2"], 60)
    harness.wait_until(lambda: (cluster.nodes["node2"].member() or {}).get("state") == "running", 20,
                       "node2 to publish itself running")
    from_leader, from_tagged = base_backups(leader), base_backups(cluster.nodes["node2"])
    leader.sql("CREATE TABLE cloned AS SELECT generate_series(1, 1000) AS n")
    new = cluster.add("node3")
    cluster.wait_for_streaming(["node3"], 90)
    assert base_backups(cluster.nodes["node2"]) == from_tagged + 1, "the tagged replica served no base backup"
    assert base_backups(leader) == from_leader, "the leader served the base backup"
    upstream = new.sql("SELECT sender_port FROM pg_stat_wal_receiver")[0][0]
    assert upstream == leader.port, f"node3 streams from port {upstream}, not the leader's"
    assert "cloning" in new.log_text() and "from node2" in new.log_text()
    assert new.sql("SELECT count(*) FROM cloned")[0][0] == 1000
