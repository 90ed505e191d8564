"""A standby cluster (a second site): its own scope, its members' files naming the primary
cluster's haproxy (standby_cluster), its own etcd, bootstrapped by copying the primary cluster through it; its
leader streams from there, its other member from its leader. It follows a failover of the primary
cluster (haproxy re-targets), never promotes on its own, and the primary site moves with
demote-cluster (site A) then promote-cluster (site B); after losing site B, site A is promoted
alone and B, demoted while down, rejoins behind it. Checked in PostgreSQL (pg_is_in_recovery,
pg_stat_wal_receiver, rows) with a watch on every server of both sites: never two writable at
once."""
from __future__ import annotations

import os
import time
import urllib.request

import psycopg2
import pytest

from tests import harness
from tests.harness import wait_until

pytestmark = pytest.mark.integration


def sender_port(node: harness.Node):
    try:
        rows = node.sql("SELECT sender_port FROM pg_stat_wal_receiver WHERE status = 'streaming'")
    except psycopg2.Error:
        return None
    return rows[0][0] if rows else None


def rows_in(node: harness.Node, table: str) -> int:
    try:
        return node.sql(f"SELECT count(*) FROM {table}")[0][0]
    except psycopg2.Error:
        return -1


def timeline(node: harness.Node) -> int:
    """The timeline a primary writes, or the one a standby receives."""
    if node.role() == "primary":
        return int(node.sql("SELECT pg_walfile_name(pg_current_wal_lsn())")[0][0][:8], 16)
    rows = node.sql("SELECT received_tli FROM pg_stat_wal_receiver")
    return rows[0][0] if rows else 0


class BothSites:
    """What PrimaryWatch needs: every server of both sites, and a leader key to record."""

    def __init__(self, a: harness.TestCluster, b: harness.TestCluster):
        self.a, self.b = a, b

    @property
    def nodes(self):
        return {**self.a.nodes, **self.b.nodes}

    def leader_name(self):
        return f"{self.a.leader_name()}|{self.b.leader_name()}"


def standby_leader(site: harness.TestCluster) -> harness.Node:
    def one():
        node = site.nodes.get(site.leader_name() or "")
        return node if node is not None and node.role() == "replica" else None
    return wait_until(one, 60, f"a standby leader in {site.scope}")


@pytest.fixture
def site_b(base_dir, src_dir):
    """Site B: a scope in its own etcd (nothing ties the two sites but PostgreSQL's replication)."""
    server = harness.Etcd(os.path.join(base_dir, "site-b")).start()
    cluster = harness.TestCluster(server, base_dir, src_dir, f"siteb-{os.getpid()}")
    yield cluster
    cluster.teardown()
    server.stop()


def test_a_standby_cluster_follows_survives_a_failover_and_takes_over_the_primary_site(
        make_cluster, base_dir, site_b):
    a = make_cluster("sitea")
    a1 = a.add("a1")
    a.wait_for_primary(60)
    a2 = a.add("a2")
    a.wait_for_streaming(["a2"], 60)
    proxy = harness.Haproxy(a, base_dir)
    a1.sql("CREATE TABLE site (n int)")
    a1.sql("INSERT INTO site VALUES (1)")

    b = site_b
    # A new standby cluster: every member's files name the primary cluster (the first member
    # writes it to etcd as the dynamic setting).
    seed = {"standby_cluster": {"host": "127.0.0.1", "port": proxy.rw_port}}
    b1, b2 = b.add("b1", start=False, extra=seed), b.add("b2", start=False, extra=seed)
    bad = harness.governorctl(b1, "demote-cluster", "--host", "127.0.0.1; true", "--force")
    assert bad.returncode == 1 and "standby_cluster.host" in bad.stderr, bad.stderr
    assert harness.governorctl(b1, "show-config").stdout.startswith("# no dynamic settings")
    watch = harness.PrimaryWatch(BothSites(a, b))
    watch.start()
    b1.start()
    b2.start()
    lead = standby_leader(b)
    other = b2 if lead is b1 else b1
    wait_until(lambda: sender_port(lead) == proxy.rw_port, 60, "the standby leader to stream through haproxy")
    wait_until(lambda: sender_port(other) == lead.port, 90, "the other member to stream from the standby leader")
    assert rows_in(other, "site") == 1
    assert lead.api("/primary")[0] == 503, "haproxy must not send writes to a standby leader"
    status = lead.api("/status")[1]
    assert status["role"] == "replica" and status["standby_cluster"] == {
        "valid": True, "host": "127.0.0.1", "port": proxy.rw_port, "primary_slot_name": None}
    listed = harness.governorctl(lead, "list")
    assert f"Standby cluster: follows the primary cluster at 127.0.0.1:{proxy.rw_port}" in listed.stdout
    assert "standby leader" in listed.stdout, listed.stdout
    assert f"port: {proxy.rw_port}" in harness.governorctl(lead, "show-config").stdout
    with urllib.request.urlopen(f"http://127.0.0.1:{lead.metrics_port}/metrics", timeout=5) as resp:
        assert "governor_standby_cluster 1.0" in resp.read().decode()

    # A failover in the primary cluster: haproxy sends the standby leader to the new primary.
    a1.crash()
    new_a = a.wait_for_primary(40)
    assert new_a is a2
    a2.sql("INSERT INTO site VALUES (2)")
    wait_until(lambda: rows_in(other, "site") == 2, 60, "a row from site A's new primary to reach site B")
    wait_until(lambda: timeline(other) == timeline(lead) == timeline(a2) == 2, 20, "site B on timeline 2")
    assert lead.role() == "replica" and other.role() == "replica"
    assert "standby_leader_follow_remote" in lead.api("/status")[1]["decision"]
    a1.start()
    a.wait_for_streaming(["a1"], 90)

    # Move the primary site: demote A (clean stop: B's leader receives all of its WAL), promote B.
    demoted = harness.governorctl(a2, "demote-cluster", "--host", "127.0.0.1", "--port", str(lead.port),
                                  "--force", "--wait", "90")
    assert demoted.returncode == 0, demoted.stdout + demoted.stderr
    wait_until(lambda: sender_port(a2) == lead.port, 60, "site A's leader to stream from site B's leader")
    started = time.monotonic()
    promoted = harness.governorctl(lead, "promote-cluster", "--force", "--wait", "90")
    assert promoted.returncode == 0, promoted.stdout + promoted.stderr
    wait_until(lambda: lead.role() == "primary", 30, "site B's leader to accept writes")
    promotion = time.monotonic() - started
    lead.sql("INSERT INTO site VALUES (3)")
    wait_until(lambda: rows_in(a1, "site") == 3 and rows_in(other, "site") == 3, 90,
               "a row from site B's primary to reach both sites")
    assert a2.role() == a1.role() == other.role() == "replica"
    wait_until(lambda: timeline(a1) == timeline(a2) == timeline(other) == timeline(lead) == 3, 20,
               "both sites on site B's timeline 3")
    assert sender_port(a1) == a2.port, "site A's other member streams from its standby leader"

    # Disaster: site B (now primary) is lost; site A is promoted alone; B is demoted before its
    # members start again, and its crashed primary is checked with pg_rewind against A.
    lead.sql("INSERT INTO site VALUES (4)")
    wait_until(lambda: rows_in(a1, "site") == 4, 30, "row 4 to reach site A")
    lead.crash()
    other.crash()
    promoted = harness.governorctl(a2, "promote-cluster", "--force", "--wait", "90")
    assert promoted.returncode == 0, promoted.stdout + promoted.stderr
    a2.sql("INSERT INTO site VALUES (5)")
    demoted = harness.governorctl(lead, "demote-cluster", "--host", "127.0.0.1", "--port", str(a2.port), "--force")
    assert demoted.returncode == 0, demoted.stdout + demoted.stderr
    lead.start()
    other.start()
    wait_until(lambda: rows_in(lead, "site") == rows_in(other, "site") == 5, 120,
               "both members of site B to follow site A again")
    back = standby_leader(b)
    wait_until(lambda: sender_port(back) == a2.port, 30, "site B's leader to stream from site A")
    wait_until(lambda: timeline(lead) == timeline(other) == 4, 20, "site B on site A's timeline 4")
    assert lead.role() == other.role() == "replica"
    assert "rewound" in lead.log_text() or "no rewind required" in lead.log_text(), \
        "site B's crashed primary was not checked with pg_rewind"
    watch.stop()
    proxy.stop()
    assert watch.two_primaries() == []
    print(f"standby cluster: bootstrapped through haproxy, followed site A's failover, took over the primary "
          f"site; promote-cluster to writable in {promotion:.1f}s; after losing site B, site A took over and B "
          "followed it again")
