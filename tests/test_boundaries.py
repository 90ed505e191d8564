"""Safety at every boundary, on running clusters (real etcd, real PostgreSQL): a frozen or killed
HA loop, hostile files, API requests and etcd values. After each, governor is alive, there was
never more than one server with pg_is_in_recovery() = false at any 100 ms sample (asked of
each server directly, not through governor), no traceback was logged, and the cluster is healthy."""
from __future__ import annotations

import base64
import json
import os
import re
import signal
import time
import urllib.request
from typing import Tuple

import pytest

from tests import harness
from tests.harness import wait_until

pytestmark = pytest.mark.integration
TTL = 10


def two_nodes(make_cluster, prefix: str) -> Tuple[harness.TestCluster, harness.Node, harness.Node]:
    cluster = make_cluster(prefix)
    for name in ("node1", "node2"):
        cluster.add(name)
    leader = cluster.wait_for_primary(90)
    replica = next(n for n in cluster.nodes.values() if n is not leader)
    cluster.wait_for_streaming([replica.name], 90)
    return cluster, leader, replica


def assert_no_traceback(*nodes: harness.Node) -> None:
    for node in nodes:
        assert "Traceback" not in node.log_text(), f"{node.name} logged a traceback:\n{node.log_text()[-3000:]}"


def assert_alive(*nodes: harness.Node) -> None:
    for node in nodes:
        assert node.proc.poll() is None, f"governor {node.name} exited with {node.proc.returncode}"
        assert node.loop_pid() != node.proc.pid, f"the HA loop process of {node.name} is gone"


def test_a_frozen_leader_loop_stops_being_writable_before_its_lock_expires(make_cluster):
    """Without systemd: SIGSTOP of the HA loop's process. The supervising parent stops PostgreSQL
    before the lock can expire; the replica is promoted only after the lock expired."""
    cluster, leader, replica = two_nodes(make_cluster, "frz")
    watch = harness.PrimaryWatch(cluster)
    watch.start()
    time.sleep(1.5)
    frozen = leader.freeze()
    frozen_at = time.monotonic()
    try:
        wait_until(lambda: cluster.leader_name() == replica.name and replica.role() == "primary", TTL + 15,
                   "the replica to take over")
        time.sleep(1)
    finally:
        watch.stop()
        leader.thaw(frozen)
    last_old = watch.last_writable(leader.name)
    lock_gone = watch.leader_changed(leader.name, frozen_at)
    first_new = watch.first_writable_after(replica.name, frozen_at)
    assert not watch.two_primaries(), watch.two_primaries()
    assert last_old is not None and lock_gone is not None and first_new is not None
    writable_for = last_old - frozen_at
    print(f"\nfrozen loop: PostgreSQL writable {writable_for:.2f}s after the freeze, lock gone after "
          f"{lock_gone - frozen_at:.2f}s (ttl {TTL}), new primary after {first_new - frozen_at:.2f}s; "
          f"margin {lock_gone - last_old:.2f}s")
    assert last_old < lock_gone, "PostgreSQL stayed writable until its lock expired"
    assert writable_for < TTL
    assert "did not renew the leader lock" in leader.log_text()
    # Thawed, the old leader finds its PostgreSQL stopped and another leader: it rejoins as a replica.
    wait_until(lambda: leader.role() == "replica", 60, "the old leader to rejoin as a replica")
    cluster.wait_for_streaming([leader.name], 60)
    assert_alive(leader, replica)
    assert_no_traceback(leader, replica)


def test_a_killed_leader_loop_is_fenced_at_once(make_cluster):
    """SIGKILL of the HA loop's process (not of the parent): PostgreSQL stops at once."""
    cluster, leader, replica = two_nodes(make_cluster, "kil")
    watch = harness.PrimaryWatch(cluster)
    watch.start()
    time.sleep(1)
    loop = leader.loop_pid()
    os.kill(loop, signal.SIGKILL)
    killed_at = time.monotonic()
    try:
        wait_until(lambda: leader.postmaster_pid() is None, 5, "the parent to stop PostgreSQL")
        stopped_after = time.monotonic() - killed_at
        wait_until(lambda: cluster.leader_name() == replica.name and replica.role() == "primary", TTL + 15,
                   "the replica to take over")
    finally:
        watch.stop()
    assert stopped_after < 3
    assert not watch.two_primaries(), watch.two_primaries()
    leader.proc.wait(10)
    assert leader.proc.returncode == 128 + signal.SIGKILL
    # Whichever came first stopped it: the parent, or the kernel's SIGQUIT to a postmaster bound to
    # the loop's life (postgres/lifeline.py); the parent's log names the kill either way.
    said = leader.log_text()
    assert re.search(r"was killed by signal 9: (stopped PostgreSQL|PostgreSQL is not running)", said), said[-2000:]


def put_raw(etcd: harness.Etcd, key: bytes, value: bytes) -> None:
    b64 = lambda raw: base64.b64encode(raw).decode()  # noqa: E731
    req = urllib.request.Request(f"http://127.0.0.1:{etcd.port}/v3/kv/put",
                                 data=json.dumps({"key": b64(key), "value": b64(value)}).encode(), method="POST",
                                 headers={"Content-Type": "application/json"})
    urllib.request.urlopen(req, timeout=3).close()


def delete_raw(etcd: harness.Etcd, key: bytes) -> None:
    req = urllib.request.Request(f"http://127.0.0.1:{etcd.port}/v3/kv/deleterange",
                                 data=json.dumps({"key": base64.b64encode(key).decode()}).encode(), method="POST",
                                 headers={"Content-Type": "application/json"})
    urllib.request.urlopen(req, timeout=3).close()


def api_request(node: harness.Node, method: str, path: str, body: bytes) -> Tuple[int, dict]:
    req = urllib.request.Request(f"http://127.0.0.1:{node.api_port}{path}", data=body, method=method,
                                 headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=5) as resp:
            return resp.status, json.loads(resp.read() or b"{}")
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read() or b"{}")


def steady(cluster: harness.TestCluster, leader: harness.Node, replica: harness.Node, seconds: float) -> None:
    """For `seconds`: both governors alive, the same leader, its server the only primary."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        assert_alive(leader, replica)
        assert cluster.leader_name() == leader.name
        time.sleep(0.5)
    assert leader.role() == "primary" and replica.role() == "replica"


@pytest.mark.skipif(harness.ETCD_API != 3, reason="raw v3 keys")
def test_hostile_files_requests_and_etcd_values_change_nothing(make_cluster):
    cluster, leader, replica = two_nodes(make_cluster, "hos")
    scope = f"/service/{cluster.scope}/".encode()
    watch = harness.PrimaryWatch(cluster)
    watch.start()
    tried = 0
    try:
        # 1. A reload of a file with one Latin-1 byte, then with a recursive alias (SIGHUP, POST /reload).
        with open(leader.config_path, "rb") as fh:
            good = fh.read()
        for bad, how in ((good + "# caf\xe9\n".encode("latin-1"), "sighup"),
                         (good + b"tags: &t\n  x: *t\n", "api"),
                         (good + b"loop_wait: 1\nloop_wait: 2\n", "sighup")):
            with open(leader.config_path, "wb") as fh:
                fh.write(bad)
            seen = leader.log_text().count("the running one stays in force")
            if how == "sighup":
                leader.signal(signal.SIGHUP)
            else:
                assert api_request(leader, "POST", "/reload", b"{}")[0] == 202
            wait_until(lambda seen=seen: leader.log_text().count("the running one stays in force") > seen, 10,
                       "the reload to be refused")
            tried += 1
        with open(leader.config_path, "wb") as fh:
            fh.write(good)
        steady(cluster, leader, replica, 3)

        # 2. PATCH /config with values that once killed the leader or broke postgresql.conf: 400, nothing written.
        config_key = f"/service/{cluster.scope}/config"
        before = cluster.etcd.get(config_key)
        for patch in ({"loop_wait": 1e300, "ttl": 10**301}, {"retry_timeout": 1e308},
                      {"postgresql": {"parameters": {"max_connections": "abc"}}},
                      {"postgresql": {"parameters": {"no_such_setting": "1"}}},
                      {"postgresql": {"parameters": {"work_mem": "4MB\nfsync = off"}}},
                      {"postgresql": {"parameters": {"a\nb": 1}}}, {"ttl": -1}, {"synchronous_node_count": 10**40}):
            code, answer = api_request(leader, "PATCH", "/config", json.dumps(patch).encode())
            assert code == 400, (patch, code, answer)
            tried += 1
        code, _ = api_request(leader, "POST", "/switchover", b'{"candidate": "node2", "scheduled_at": 1e999}')
        assert code == 400
        for body in (b'{"scheduled_at": 1e999}', b'{"scheduled_at": NaN}', b'{"scheduled_at": true}',
                     b'{"scheduled_at": "03:00"}', b'{"scheduled_at": 1}', b'{"scheduled_at": 9e9}',
                     b'{"pending": "yes"}'):
            code, answer = api_request(leader, "POST", "/restart", body)
            assert code == 400 and "restart scheduled" not in leader.log_text(), (body, code, answer)
            tried += 1
        assert cluster.etcd.get(config_key) == before
        steady(cluster, leader, replica, 3)

        # 3. Keys and values in etcd that are not UTF-8, a member record that is not one, garbage everywhere.
        hostile = {scope + b"members/\xff\xfe": b"x", scope + b"members/ghost": b"\xff\xfe",
                   scope + b"members/evil": json.dumps({"conn_url": "postgres://x' host=evil:5432/"}).encode(),
                   scope + b"\xc3(": b"\xc3(", scope + b"failover": b"\xff", scope + b"sync": b"[1,2",
                   scope + b"history": b"{", scope + b"config": b"\xff\xfe"}
        for key, value in hostile.items():
            put_raw(cluster.etcd, key, value)
            tried += 1
        steady(cluster, leader, replica, 5)
        slots = {row[0] for row in leader.sql("SELECT slot_name FROM pg_replication_slots")}
        assert slots == {replica.name}, f"slots for hand-made member keys: {slots}"
        assert "values in etcd that do not parse" in leader.log_text()
        for key in hostile:
            delete_raw(cluster.etcd, key)

        # 4. The replica's member key deleted behind its back: written again within a few loops.
        cluster.etcd.delete_tree(f"/service/{cluster.scope}/members/{replica.name}")
        wait_until(replica.member, 10, "the member key to be written again")
        tried += 1
        steady(cluster, leader, replica, 2)

        # 5. A second governor started with the replica's name (another directory, other ports): it
        #    says so and does nothing; the replica's key is untouched.
        twin = harness.Node(cluster, replica.name + "-twin")
        twin.config["postgresql"]["name"] = replica.name
        twin.write_config()
        twin.start()
        try:
            wait_until(lambda: f"another governor runs as member {replica.name}" in twin.log_text(), 20,
                       "the twin to notice")
            steady(cluster, leader, replica, 3)
            assert replica.member()["api_url"] == f"http://127.0.0.1:{replica.api_port}"
            assert not os.path.exists(twin.data_dir)
        finally:
            twin.stop(30)
        assert replica.member()["api_url"] == f"http://127.0.0.1:{replica.api_port}", "the twin removed its key"
        tried += 1
    finally:
        watch.stop()
    assert not watch.two_primaries(), watch.two_primaries()
    assert_no_traceback(leader, replica)
    print(f"\nhostile inputs tried: {tried}, samples: {len(watch.samples)}, two-primary samples: 0")


def test_garbage_leader_position_means_no_automatic_failover(make_cluster):
    """optime/leader that does not parse: the replica cannot know its lag and does not promote."""
    cluster, leader, replica = two_nodes(make_cluster, "opt")
    leader.kill_all()                   # nothing rewrites the position from here on
    cluster.etcd.put(f"/service/{cluster.scope}/optime/leader", "garbage")
    leader.crash_postgres()
    wait_until(lambda: "race_lag_unknown" in replica.log_text(), TTL + 15, "the replica to refuse the race")
    time.sleep(3)
    assert replica.role() == "replica" and cluster.leader_name() is None
    assert "optime/leader: expected a WAL position, got 'garbage'" in replica.log_text()
    assert_no_traceback(replica)


def test_a_bootstrap_that_cannot_start_gives_up_and_is_never_adopted(make_cluster):
    """PostgreSQL that cannot start (shared memory it cannot get): each half-made directory is moved
    aside under its own name, the attempts back off, and after three governor waits for the operator
    instead of adopting a half-made directory as the cluster."""
    cluster = make_cluster("boot")
    node = cluster.add("node1", extra={"postgresql": {"parameters": {"shared_buffers": "200GB"}}})
    wait_until(lambda: "bootstrap_gave_up" in node.log_text(), 120, "governor to give up bootstrapping")
    time.sleep(3)
    failed = sorted(d for d in os.listdir(node.dir) if d.startswith("data.failed-"))
    assert len(failed) == 3, failed
    assert not os.path.exists(node.data_dir) or not os.listdir(node.data_dir)
    assert cluster.etcd.get(f"/service/{cluster.scope}/initialize") is None, "a half-made directory was adopted"
    assert "initialize_from_existing" not in node.log_text()
    assert node.log_text().count("running initdb") == 3
    assert_alive(node)
    assert_no_traceback(node)


def test_watchdog_required_without_a_usable_device_never_leads(make_cluster):
    """watchdog.mode required with a device that is not a watchdog (a regular file stands in, as
    this kernel has none): the member does not hold the lock, so it is never a primary."""
    cluster = make_cluster("wdog")
    node = cluster.add("node1", start=False, extra={"watchdog": {"mode": "required"}})
    device = os.path.join(node.dir, "watchdog")
    open(device, "w").close()
    harness.chown_to_runner(device)
    node.config["watchdog"]["device"] = device
    node.write_config()
    node.start()
    wait_until(lambda: "cannot be armed (Inappropriate ioctl for device) and watchdog.mode is required"
               in node.log_text(), 60, "the watchdog to be refused")
    time.sleep(2)
    assert cluster.leader_name() is None
    assert node.role() is None and not os.path.exists(node.data_dir), "bootstrapped a cluster it cannot lead"
    assert_alive(node)
    assert_no_traceback(node)
