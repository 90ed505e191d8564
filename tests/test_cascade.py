"""replicatefrom: a replica that streams from another replica (cascading), with its slot there,
falls back to the leader when that replica goes, comes back when it returns, and stays in the
cluster through a failover. Checked in PostgreSQL: pg_stat_wal_receiver, pg_replication_slots."""
from __future__ import annotations

import pytest

from tests import harness
from tests.harness import wait_until

pytestmark = pytest.mark.integration


def upstream_port(node: harness.Node):
    rows = node.sql("SELECT sender_port FROM pg_stat_wal_receiver WHERE status = 'streaming'")
    return rows[0][0] if rows else None


def slot_active(node: harness.Node, slot: str) -> bool:
    rows = node.sql("SELECT active FROM pg_replication_slots WHERE slot_name = %s", (slot,))
    return bool(rows and rows[0][0])


def test_a_cascading_replica_streams_from_its_replica_and_falls_back_to_the_leader(make_cluster):
    cluster = make_cluster("cascade")
    cluster.add("node1")
    leader = cluster.wait_for_primary(60)
    middle = cluster.add("node2")
    cluster.wait_for_streaming(["node2"], 60)
    tail = cluster.add("node3", extra={"tags": {"replicatefrom": "node2"}})
    wait_until(lambda: upstream_port(tail) == middle.port, 60, "node3 to stream from node2")
    wait_until(lambda: slot_active(middle, "node3"), 20, "node3's slot on node2 to be in use")
    assert not slot_active(leader, "node3"), "node3 uses a slot on the leader"
    leader.sql("CREATE TABLE cascaded (n int)")
    leader.sql("INSERT INTO cascaded VALUES (1)")
    wait_until(lambda: tail.sql("SELECT count(*) FROM cascaded")[0][0] == 1, 10, "the row to reach node3")
    listed = harness.governorctl(leader, "list")
    assert "replicatefrom=node2" in listed.stdout, listed.stdout
    drawn = harness.governorctl(leader, "topology").stdout      # node3 drawn under node2, under the leader
    assert [line.split("|")[1].rstrip() for line in drawn.splitlines() if line.startswith("| ") and
            "Member" not in line] == [" node1", " + node2", "   + node3"], drawn

    middle.stop()                           # node3's upstream goes: it follows the leader
    wait_until(lambda: upstream_port(tail) == leader.port, 30, "node3 to fall back to the leader")
    leader.sql("INSERT INTO cascaded VALUES (2)")
    wait_until(lambda: tail.sql("SELECT count(*) FROM cascaded")[0][0] == 2, 10, "the row through the leader")
    middle.start()
    wait_until(lambda: upstream_port(tail) == middle.port, 60, "node3 to return to node2")

    watch = harness.PrimaryWatch(cluster)
    watch.start()
    # a switchover to node3's upstream: node3 then streams from it as the leader
    done = harness.governorctl(leader, "switchover", "--leader", leader.name, "--candidate", middle.name, "--force")
    assert done.returncode == 0, done.stdout + done.stderr
    cluster.wait_for_streaming([leader.name, tail.name], 90)
    assert upstream_port(tail) == middle.port
    middle.sql("INSERT INTO cascaded VALUES (3)")
    wait_until(lambda: tail.sql("SELECT count(*) FROM cascaded")[0][0] == 3, 10, "a row after the switchover")
    done = harness.governorctl(middle, "switchover", "--leader", middle.name, "--candidate", leader.name, "--force")
    assert done.returncode == 0, done.stdout + done.stderr
    wait_until(lambda: upstream_port(tail) == middle.port and cluster.leader_name() == leader.name, 60,
               "node3 back on node2, a replica again")
    leader.crash()
    new = cluster.wait_for_primary(40)
    others = [n.name for n in cluster.nodes.values() if n is not new and n is not leader]
    cluster.wait_for_streaming(others, 60)
    new.sql("INSERT INTO cascaded VALUES (4)")
    wait_until(lambda: tail.sql("SELECT count(*) FROM cascaded")[0][0] == 4, 20, "a row from the new leader")
    watch.stop()
    assert watch.two_primaries() == []
    where = "leads" if new is tail else f"streams from port {upstream_port(tail)}"
    print(f"cascading: node3 via node2, back to the leader and again, through two switchovers; after the failover "
          f"{new.name} leads and node3 {where}")
