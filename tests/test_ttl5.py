"""ttl 5 (issue 38): what a small ttl costs when etcd hangs. systemd's watchdog at the timeout
governor sets for ttl 5 (2.5 s) is fed by a thread of its own (watchdogfeed.py), so a pass that
waits for a hung etcd is not a frozen process: no governor would be killed, and the replica keeps
serving reads. (Before: pings only after a completed pass; a pass waits up to 2 * retry_timeout
= 4 s for etcd; systemd killed governor again and again and the fence stopped every server.)"""
from __future__ import annotations

import os
import pwd
import signal
import subprocess
import time
from typing import List

import pytest

from tests import harness
from tests.harness import wait_until
from tests.test_notify import FakeSystemd

pytestmark = [pytest.mark.integration, pytest.mark.timeout(300)]
TTL5 = {"loop_wait": 1, "retry_timeout": 2, "etcd": {"ttl": 5}}
UNIT_WATCHDOG = 25.0       # the shipped unit's WatchdogSec; governor lowers it for ttl 5


def ping_times(systemd: FakeSystemd, since: float, until: float) -> List[float]:
    return [t for t, m in list(systemd.messages) if since <= t <= until and "WATCHDOG=1" in m.split("\n")]


def longest_silence(times: List[float], since: float, until: float) -> float:
    edges = [since, *times, until]
    return max(b - a for a, b in zip(edges, edges[1:]))


def test_a_hung_etcd_for_20_s_at_ttl_5_would_get_no_governor_killed_and_the_replica_serves_reads(make_cluster,
                                                                                                  base_dir):
    cluster = make_cluster("ttl5")
    cluster.etcd = own = harness.Etcd(os.path.join(base_dir, f"ttl5-etcd-{os.getpid()}")).start()   # hung below
    systemds = {}
    nodes = []
    for name in ("node1", "node2"):
        node = cluster.add(name, start=False, extra=TTL5)
        systemds[name] = FakeSystemd(os.path.join(node.dir, "notify.sock"))
        systemds[name].start()
        node.start(env={"NOTIFY_SOCKET": systemds[name].path, "WATCHDOG_USEC": str(int(UNIT_WATCHDOG * 1e6))})
        if name == "node1":
            cluster.wait_for_primary(90)
        nodes.append(node)
    try:
        leader, replica = cluster.wait_for_primary(60), cluster.nodes["node2"]
        cluster.wait_for_streaming([replica.name], 90)
        timeout = 2.5
        for name, systemd in systemds.items():
            wait_until(lambda s=systemd: "WATCHDOG_USEC=2500000" in s.lines(), 20,
                       f"{name}: systemd's timeout for ttl 5")
        replica_pm = replica.postmaster_pid()
        # etcd hangs (SIGSTOP): connections open, no answer; every request waits for its timeout.
        os.kill(cluster.etcd.proc.pid, signal.SIGSTOP)
        hung = time.monotonic()
        answered = 0
        try:
            while time.monotonic() - hung < 20:
                assert replica.sql("SELECT 1") == [(1,)], "the replica stopped serving reads"
                answered += 1
                time.sleep(0.5)
        finally:
            os.kill(cluster.etcd.proc.pid, signal.SIGCONT)
        resumed = time.monotonic()
        for name, systemd in systemds.items():
            silence = longest_silence(ping_times(systemd, hung, resumed), hung, resumed)
            assert silence < timeout, (f"{name}: no watchdog ping for {silence:.1f}s during the etcd hang: systemd "
                                       f"(timeout {timeout}s) would have killed governor")
            print(f"\n{name}: longest watchdog silence {silence:.2f}s of {timeout}s during a 20 s etcd hang")
        assert replica.postmaster_pid() == replica_pm, "the replica's PostgreSQL was stopped"
        assert all(n.proc.poll() is None for n in nodes), "a governor died"
        # The leader could not renew: it stopped taking writes before its lock could expire (no
        # failsafe), and once etcd answers again there is a leader.
        assert "lock_fence" in leader.log_text() or "demot" in leader.log_text()
        cluster.wait_for_primary(60)
        print(f"replica answered {answered} reads during the hang; postmaster unchanged")
    finally:
        for systemd in systemds.values():
            systemd.stop()
        cluster.teardown()
        own.stop()


def run_fence(node, runtime: str) -> str:
    """What systemd runs after governor was killed: ExecStopPost=governor --fence, as the unit's user."""
    pw = pwd.getpwnam(harness.RUN_AS)
    env = {"PATH": "/usr/bin:/bin", "PYTHONPATH": node.cluster.src_dir, "LANG": "C.UTF-8", "SERVICE_RESULT": "signal",
           "EXIT_CODE": "killed", "EXIT_STATUS": "KILL", "RUNTIME_DIRECTORY": runtime}
    done = subprocess.run([harness.PYTHON, "-m", "governor", "--fence", node.config_path], env=env,
                          capture_output=True, text=True, timeout=60, user=pw.pw_uid, group=pw.pw_gid, cwd=node.dir)
    assert done.returncode == 0, done.stderr
    return done.stdout + done.stderr


def test_the_fence_after_a_crash_leaves_a_lockless_standby_running_and_stops_the_leader(make_cluster):
    """Under systemd a killed governor is fenced by ExecStopPost: the leader's PostgreSQL stops at
    once; a replica's, in standby mode under no lock (no leader marker in the RuntimeDirectory),
    keeps serving reads, and governor adopts it when it starts again."""
    cluster = make_cluster("fsb")
    runtimes, systemds = {}, []
    pw = pwd.getpwnam(harness.RUN_AS)
    for name in ("node1", "node2"):
        node = cluster.add(name, start=False, extra=TTL5)
        runtimes[name] = os.path.join(node.dir, "run")
        os.makedirs(runtimes[name])
        os.chown(runtimes[name], pw.pw_uid, pw.pw_gid)
        systemd = FakeSystemd(os.path.join(node.dir, "notify.sock"))
        systemd.start()
        systemds.append(systemd)
        env = {"NOTIFY_SOCKET": systemd.path, "RUNTIME_DIRECTORY": runtimes[name]}
        node.start(env=env)
        if name == "node1":
            cluster.wait_for_primary(90)
    try:
        leader, replica = cluster.wait_for_primary(60), cluster.nodes["node2"]
        cluster.wait_for_streaming([replica.name], 90)
        assert os.path.exists(os.path.join(runtimes[leader.name], "leader")), "the leader wrote no marker"
        assert not os.path.exists(os.path.join(runtimes[replica.name], "leader"))
        standby_pm = replica.postmaster_pid()
        replica.kill_all()
        said = run_fence(replica, runtimes[replica.name])
        assert "left running" in said, said
        assert replica.postmaster_pid() == standby_pm and replica.sql("SELECT pg_is_in_recovery()") == [(True,)]
        replica.start(env={"NOTIFY_SOCKET": systemds[1].path, "RUNTIME_DIRECTORY": runtimes[replica.name]})
        cluster.wait_for_streaming([replica.name], 60)
        assert replica.postmaster_pid() == standby_pm, "governor restarted the standby it could adopt"

        leader.kill_all()
        said = run_fence(leader, runtimes[leader.name])
        assert "stopping PostgreSQL" in said and leader.postmaster_pid() is None, said
        wait_until(lambda: cluster.leader_name() == replica.name and replica.role() == "primary", 30,
                   "the replica to take over")
    finally:
        for systemd in systemds:
            systemd.stop()
