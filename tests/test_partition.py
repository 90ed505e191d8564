"""Network partitions: each member in its own network namespace, linked to the host (where etcd
runs) by a veth pair; the host routes between them. Cutting the leader's link is a real
partition from etcd and from its peers at once."""
from __future__ import annotations

import itertools
import json
import os
import pwd
import subprocess
import threading
import time
from typing import List, Optional

import pytest

from tests import harness
from tests.harness import wait_until

pytestmark = pytest.mark.integration
NET = "10.231"
RUNS = itertools.count()


def sh(*args: str) -> None:
    subprocess.run(args, check=True, capture_output=True)


class NamespacedNode(harness.Node):
    """A member whose governor (and so PostgreSQL) runs inside network namespace `ns`."""

    ns = ""
    host_if = ""

    def start(self, env: Optional[dict] = None, args: tuple = ()) -> harness.Node:
        pw = pwd.getpwnam(harness.RUN_AS)
        env = {"PATH": "/usr/bin:/bin", "PYTHONPATH": self.cluster.src_dir, "HOME": self.dir, "LANG": "C.UTF-8"}
        log = open(self.log_path, "ab")
        self.proc = subprocess.Popen(
            ["ip", "netns", "exec", self.ns, "setpriv", f"--reuid={pw.pw_uid}", f"--regid={pw.pw_gid}",
             "--clear-groups", harness.PYTHON, "-m", "governor", self.config_path],
            stdout=log, stderr=subprocess.STDOUT, env=env, cwd=self.dir, start_new_session=True)
        harness._processes.append(self.proc)
        return self


def set_ip_forward(value: str) -> str:
    """The host routes between the namespaces; returns the previous setting to restore."""
    with open("/proc/sys/net/ipv4/ip_forward", "r+") as fh:
        previous = fh.read().strip()
        fh.seek(0)
        fh.write(value)
    return previous


@pytest.fixture
def partitioned(base_dir, src_dir):
    """Three members in namespaces gov-p1..3 and an etcd on the host reachable from all."""
    forward = set_ip_forward("1")
    tag = f"{os.getpid() % 1000}{next(RUNS)}"    # each run its own names: a deleted veth goes asynchronously
    names: List[str] = []
    etcd = harness.Etcd(os.path.join(base_dir, f"etcd-partition-{tag}"))
    etcd.listen_all = True
    cluster = None
    try:
        etcd.start()
        cluster = harness.TestCluster(etcd, base_dir, src_dir, f"part-{tag}-{time.monotonic_ns() % 10**6}")
        for i in (1, 2, 3):
            ns, host_if, ns_if = f"gov-p{tag}-{i}", f"vh{tag}p{i}", f"vn{tag}p{i}"
            sh("ip", "netns", "add", ns)
            names.append(ns)
            sh("ip", "link", "add", host_if, "type", "veth", "peer", "name", ns_if)
            sh("ip", "link", "set", ns_if, "netns", ns)
            sh("ip", "addr", "add", f"{NET}.{i}.1/24", "dev", host_if)
            sh("ip", "link", "set", host_if, "up")
            for cmd in (["ip", "addr", "add", f"{NET}.{i}.2/24", "dev", ns_if], ["ip", "link", "set", ns_if, "up"],
                        ["ip", "link", "set", "lo", "up"], ["ip", "route", "add", "default", "via", f"{NET}.{i}.1"]):
                sh("ip", "netns", "exec", ns, *cmd)
            address = f"{NET}.{i}.2"
            node = NamespacedNode(cluster, f"node{i}", extra={
                "etcd": {"host": f"{NET}.{i}.1:{etcd.port}"},
                "restapi": {"listen": f"{address}:{8008}", **harness.API_CREDENTIALS},
                "metrics": {"listen": f"{address}:{9547}"},
                "postgresql": {"listen": f"{address}:5432",
                               "replication": {"network": f"{NET}.0.0/16"}}})
            node.ns, node.host_if = ns, host_if
            node.api_host, node.api_port, node.pg_host, node.port = address, 8008, address, 5432
            cluster.nodes[node.name] = node
        yield cluster
    finally:
        if cluster is not None:
            cluster.teardown()
        etcd.stop()
        for i, ns in enumerate(names, 1):
            # the link first, and synchronously: one left behind by its namespace's deletion would
            # still route the next run's addresses for a moment
            subprocess.run(["ip", "link", "del", f"vh{tag}p{i}"], capture_output=True)
            subprocess.run(["ip", "netns", "del", ns], capture_output=True)
        set_ip_forward(forward)


def writable(node) -> bool:
    """Asked over the Unix socket, which no network cut reaches (as the postgres OS user: peer
    authentication)."""
    done = subprocess.run(["runuser", "-u", harness.RUN_AS, "--", os.path.join(harness.PG_BIN, "psql"), "-h",
                           node.dir, "-p", str(node.port), "-d", "postgres", "-XAtc", "SELECT pg_is_in_recovery()"],
                          capture_output=True, text=True, timeout=10)
    return done.returncode == 0 and done.stdout.strip() == "f"


@pytest.mark.parametrize("failsafe", [False, True], ids=["plain", "failsafe"])
def test_a_cut_off_leader_turns_read_only_before_anyone_else_is_promoted(partitioned, failsafe):
    """The leader's link goes down: no etcd, no peers. With failsafe_mode on it cannot reach the
    members it would ask to vouch for it either, so it must still turn read-only in time."""
    c = partitioned
    for node in c.nodes.values():
        if failsafe:
            node.config.update(failsafe_mode=True, retry_timeout=4)
            node.write_config()
        node.start()
    leader = c.wait_for_primary(120)
    others = [n for n in c.nodes.values() if n is not leader]
    c.wait_for_streaming([n.name for n in others], 120)
    ttl = leader.config["etcd"]["ttl"]
    if failsafe:    # the leader's list names the others at their own addresses, as a real round would ask
        wait_until(lambda: set(json.loads((c.etcd.get(f"/service/{c.scope}/failsafe", api=3) or {"value": "{}"})[
            "value"]).get("members", {})) == {n.name for n in others}, 30, "the failsafe list")

    both_writable: List[str] = []
    stop = threading.Event()

    def watch() -> None:
        while not stop.is_set():
            primaries = [n.name for n in c.nodes.values() if writable(n)]
            if len(primaries) > 1:
                both_writable.append(",".join(primaries))
            time.sleep(0.05)

    watcher = threading.Thread(target=watch, daemon=True)
    watcher.start()
    try:
        cut = time.monotonic()
        sh("ip", "link", "set", leader.host_if, "down")
        wait_until(lambda: not writable(leader), ttl, "the cut-off leader to stop accepting writes")
        read_only_after = time.monotonic() - cut
        new = wait_until(lambda: next((n for n in others if writable(n)), None), ttl + 15, "a new primary")
        promoted_after = time.monotonic() - cut
        assert read_only_after < promoted_after
        sh("ip", "link", "set", leader.host_if, "up")
        wait_until(leader.is_streaming, 60, "the old leader to rejoin as a replica")
        assert c.leader_name() == new.name
        if failsafe:
            assert "not every member" in leader.log_text()
    finally:
        stop.set()
        watcher.join(5)
        subprocess.run(["ip", "link", "set", leader.host_if, "up"], capture_output=True)
    assert not both_writable, f"two writable primaries at once: {both_writable[:3]}"
    mode = "failsafe: " if failsafe else ""
    print(f"{mode}cut-off leader read-only after {read_only_after:.1f}s, new primary after {promoted_after:.1f}s "
          f"(ttl {ttl})")
