"""A cluster on Debian 13's etcd 3.5 through the v3 adapter: the lease of a killed leader frees
the lock within ttl, and a replica takes over."""
from __future__ import annotations

import time

import pytest

from tests import harness
from tests.harness import wait_until

pytestmark = pytest.mark.integration


def test_a_killed_leaders_lease_expires_within_ttl_and_a_replica_takes_over(etcd35, base_dir, src_dir):
    cluster = harness.TestCluster(etcd35, base_dir, src_dir, f"v35-{time.monotonic_ns()}")
    try:
        for name in ("node1", "node2"):
            cluster.add(name, extra={"etcd": {"api": 3}})
        old = cluster.wait_for_primary(90)
        replica = next(n for n in cluster.nodes.values() if n is not old)
        cluster.wait_for_streaming([replica.name], 90)
        old.sql("CREATE TABLE before_crash AS SELECT 1 AS v")
        wait_until(lambda: replica.sql("SELECT count(*) FROM pg_tables WHERE tablename = 'before_crash'")
                   == [(1,)], 10, "the table on the replica")
        ttl = old.config["etcd"]["ttl"]
        killed = time.monotonic()
        old.crash()
        wait_until(lambda: cluster.leader_name() != old.name, ttl + 2, "the lease to expire")
        freed = time.monotonic() - killed
        assert freed <= ttl + 1, f"the lock outlived the lease: {freed:.1f}s"
        new = cluster.wait_for_primary(15)
        assert new is replica
        assert new.sql("SELECT v FROM before_crash") == [(1,)]
        print(f"etcd 3.5: lock freed {freed:.1f}s after the kill (ttl {ttl})")
    finally:
        cluster.teardown()
