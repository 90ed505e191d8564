"""Moving a running cluster from the etcd v2 API to v3 without restarting PostgreSQL."""
from __future__ import annotations

import signal
import time

import pytest

from governor.config import EtcdConfig
from governor.dcs import make
from tests.harness import governorctl, wait_until

pytestmark = pytest.mark.integration


def test_pause_migrate_reload_resume_moves_the_cluster_to_v3(make_cluster, etcd):
    c = make_cluster("migrate")
    for name in ("node1", "node2"):
        c.add(name, extra={"etcd": {"api": 2}})
    v2 = make(EtcdConfig(scope=c.scope, ttl=10, hosts=(("127.0.0.1", etcd.port),), api=2), 3)
    v3 = make(EtcdConfig(scope=c.scope, ttl=10, hosts=(("127.0.0.1", etcd.port),), api=3), 3)
    wait_until(lambda: v2.get_cluster().leader, 90, "a leader in v2")
    leader = c.nodes[v2.get_cluster().leader.name]
    replica = next(n for n in c.nodes.values() if n is not leader)
    wait_until(lambda: leader.role() == "primary" and replica.is_streaming(), 90, "a streaming replica")
    postmasters = {n.name: n.postmaster_pid() for n in c.nodes.values()}

    refused = governorctl(leader, "migrate", "--to-api", "3")
    assert refused.returncode == 1 and "governorctl pause first" in refused.stderr
    assert governorctl(leader, "pause").returncode == 0
    done = governorctl(leader, "migrate", "--to-api", "3")
    assert done.returncode == 0, done.stderr
    there = v3.get_cluster()
    assert there.paused and there.initialize == v2.get_cluster().initialize

    for node in (replica, leader):
        node.config["etcd"]["api"] = 3
        node.write_config()
        node.signal(signal.SIGHUP)
    wait_until(lambda: v3.get_cluster().leader and v3.get_cluster().leader.name == leader.name, 20,
               "the running primary to take the lock in v3")
    wait_until(lambda: {m.name for m in v3.get_cluster().members} == set(c.nodes), 20, "both members in v3")
    assert leader.api("/primary")[0] == 200
    assert governorctl(leader, "resume").returncode == 0     # the new configuration: v3
    assert not v3.get_cluster().paused
    time.sleep(3)
    assert {n.name: n.postmaster_pid() for n in c.nodes.values()} == postmasters, "PostgreSQL never restarted"
    assert leader.role() == "primary" and replica.is_streaming()

    # Automatic failover works on v3: a clean stop of the leader hands over to the replica.
    assert leader.stop() == 0
    wait_until(lambda: v3.get_cluster().leader and v3.get_cluster().leader.name == replica.name, 15,
               "the replica to take over through v3")
    wait_until(lambda: replica.role() == "primary", 15, "the promotion")
