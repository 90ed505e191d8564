"""governor's own processes killed or frozen, without systemd (issue 31): whatever happens to them,
never two servers that accept writes, and in synchronous mode no acknowledged commit lost.

Each test runs a leader and a replica (real etcd and PostgreSQL), a client writing through the
primary on a new connection every 50 ms, and a watch that asks every server directly every 100 ms
whether it accepts writes (pg_is_in_recovery() = false). Then one fault on the leader's host:

- main_pid:  SIGKILL of governor's main PID (the supervising parent; `kill -9 $(cat pidfile)`)
- loop:      SIGKILL of the HA loop's process only
- all:       SIGKILL of every governor process at once (`pkill -9 -f governor`, the OOM killer
             or a crashing runtime taking both); PostgreSQL itself is left alone by the test
- stop_both: SIGSTOP of every governor process for longer than the lock's ttl, then SIGCONT

at ttl 5 (asynchronous replication) and at ttl 10 (synchronous_mode on).
"""
from __future__ import annotations

import signal
import time

import pytest

from tests import harness
from tests.harness import wait_until

pytestmark = pytest.mark.integration

PROFILES = {
    5: {"loop_wait": 1, "retry_timeout": 2, "etcd": {"ttl": 5}},
    10: {"loop_wait": 1, "retry_timeout": 3, "etcd": {"ttl": 10}, "synchronous_mode": "on"},
}


def running_cluster(make_cluster, ttl: int):
    cluster = make_cluster(f"f{ttl}")
    for name in ("node1", "node2"):
        cluster.add(name, extra=PROFILES[ttl])
    leader = cluster.wait_for_primary(90)
    replica = next(n for n in cluster.nodes.values() if n is not leader)
    cluster.wait_for_streaming([replica.name], 90)
    if ttl == 10:   # the leader's synchronous promise names the replica before the fault
        wait_until(lambda: leader.sql("SELECT count(*) FROM pg_stat_replication WHERE sync_state = 'sync'")[0][0],
                   30, "the replica to be synchronous")
    leader.sql("CREATE TABLE acks (id int PRIMARY KEY)")
    watch = harness.PrimaryWatch(cluster)
    writer = harness.WriteClient(harness.multihost_dsn(cluster), "acks", interval=0.05)
    watch.start()
    writer.start()
    wait_until(lambda: len(writer.acked_ids()) > 20, 20, "writes to flow")
    return cluster, leader, replica, watch, writer


def finish(cluster, watch, writer, ttl: int, what: str) -> None:
    """Stop sampling and writing; assert the outcome every fault must have."""
    primary = cluster.wait_for_primary(60)
    time.sleep(1)
    writer.stop()
    watch.stop()
    assert not watch.two_primaries(), f"{what}: two writable servers at {watch.two_primaries()[:5]}"
    present = {r[0] for r in primary.sql("SELECT id FROM acks")}
    lost = sorted(set(writer.acked_ids()) - present)
    print(f"\n{what}, ttl {ttl}: {len(watch.samples)} samples, never two writable; {len(writer.acked_ids())} "
          f"acknowledged commits, {len(lost)} lost ({'synchronous' if ttl == 10 else 'asynchronous'})")
    if ttl == 10:
        assert lost == [], f"{what}: acknowledged commits lost in synchronous mode: {lost[:20]}"


@pytest.mark.parametrize("ttl", [5, 10])
def test_sigkill_of_the_main_pid_stops_postgresql_and_hands_the_lock_over(make_cluster, ttl):
    cluster, leader, replica, watch, writer = running_cluster(make_cluster, ttl)
    loop = leader.loop_pid()
    killed = time.monotonic()
    leader.signal(signal.SIGKILL)
    wait_until(lambda: leader.postmaster_pid() is None, ttl, "the loop process to stop PostgreSQL", interval=0.05)
    stopped = time.monotonic() - killed
    wait_until(lambda: harness.process_gone(loop), 60, "the loop process to exit")
    finish(cluster, watch, writer, ttl, "SIGKILL of the main PID")
    assert cluster.leader_name() == replica.name
    assert "its supervising parent process died" in leader.log_text()
    print(f"PostgreSQL stopped {stopped:.2f}s after the kill")


@pytest.mark.parametrize("ttl", [5, 10])
def test_sigkill_of_the_loop_process_is_fenced_at_once(make_cluster, ttl):
    cluster, leader, replica, watch, writer = running_cluster(make_cluster, ttl)
    killed = time.monotonic()
    leader.signal_loop(signal.SIGKILL)
    wait_until(lambda: leader.postmaster_pid() is None, 5, "PostgreSQL to stop", interval=0.05)
    stopped = time.monotonic() - killed
    finish(cluster, watch, writer, ttl, "SIGKILL of the loop process")
    assert cluster.leader_name() == replica.name
    print(f"PostgreSQL stopped {stopped:.2f}s after the kill")


@pytest.mark.parametrize("ttl", [5, 10])
def test_sigkill_of_every_governor_process_leaves_no_writable_postgresql(make_cluster, ttl):
    cluster, leader, replica, watch, writer = running_cluster(make_cluster, ttl)
    killed = time.monotonic()
    leader.kill_all()
    wait_until(lambda: leader.postmaster_pid() is None, ttl, "PostgreSQL to stop without governor", interval=0.05)
    stopped = time.monotonic() - killed
    finish(cluster, watch, writer, ttl, "SIGKILL of every governor process")
    assert cluster.leader_name() == replica.name
    print(f"PostgreSQL stopped {stopped:.2f}s after the kill")


@pytest.mark.parametrize("ttl", [5, 10])
def test_sigstop_of_every_governor_process_promotes_no_second_primary(make_cluster, ttl):
    """Nothing of governor runs on the leader's host while its PostgreSQL still answers: the lock
    expires, and the replica must not be promoted beside a server that still takes writes. Thawed,
    the old leader's fence stops its PostgreSQL and the cluster has one primary again."""
    cluster, leader, replica, watch, writer = running_cluster(make_cluster, ttl)
    leader.signal_all(signal.SIGSTOP)
    try:
        wait_until(lambda: cluster.leader_name() != leader.name, ttl + 5, "the lock to expire", interval=0.1)
        wait_until(lambda: "race_other_primary_writable" in replica.log_text(), 10,
                   "the replica to refuse the race")
        time.sleep(3)
        assert replica.role() == "replica", "promoted beside a writable primary"
    finally:
        leader.signal_all(signal.SIGCONT)
    finish(cluster, watch, writer, ttl, "SIGSTOP of every governor process")
    standby = next(n for n in cluster.nodes.values() if n.name != cluster.leader_name())
    cluster.wait_for_streaming([standby.name], 90)
