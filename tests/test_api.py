"""The REST API, haproxy routing with the shipped configuration, the check script, and metrics."""
from __future__ import annotations

import base64
import os
import re
import signal
import subprocess
import time
import urllib.request

import psycopg2
import pytest

from tests import harness
from tests.harness import REPO, wait_until

pytestmark = pytest.mark.integration
CHECK = os.path.join(REPO, "haproxy", "governor-check")
EXAMPLE = harness.HAPROXY_EXAMPLE


def test_shipped_haproxy_example_and_the_demos_are_valid():
    for path in (EXAMPLE, os.path.join(REPO, "demo", "haproxy.cfg")):
        result = subprocess.run(["haproxy", "-c", "-f", path], capture_output=True, text=True)
        assert result.returncode == 0, path + ": " + result.stderr + result.stdout
    with open(EXAMPLE) as fh:
        text = fh.read()
    # what Debian's haproxy package expects of /etc/haproxy/haproxy.cfg
    for line in ("chroot /var/lib/haproxy", "user haproxy", "log /dev/log", "stats socket /run/haproxy/admin.sock",
                 "server db1 10.0.0.11:5432", "bind 127.0.0.1:7000"):
        assert line in text, line


@pytest.fixture
def cluster(make_cluster):
    c = make_cluster("api")
    for name in ("node1", "node2", "node3"):
        c.add(name, extra={"restapi": {"username": "admin", "password": "api-Secret-9"}})
    primary = c.wait_for_primary(90)
    c.wait_for_streaming([n for n in c.nodes if n != primary.name], 90)
    # governor's own view (API, metrics) settles within a loop of PostgreSQL's.
    wait_until(lambda: all(n.api("/readiness")[0] == 200 for n in c.nodes.values()), 10, "readiness")
    return c


@pytest.fixture
def haproxy(cluster, base_dir):
    proxy = harness.Haproxy(cluster, base_dir)
    yield proxy
    proxy.stop()


def test_health_endpoints_answer_by_role(cluster):
    primary = cluster.nodes[cluster.leader_name()]
    replica = next(n for n in cluster.nodes.values() if n is not primary)
    expected = {
        "/primary": (200, 503), "/leader": (200, 503), "/read-write": (200, 503),
        "/": (200, 503),   # the 2015 template's haproxy_status (its haproxy.cfg: option httpchk GET)
        "/replica": (503, 200), "/read-only": (200, 200), "/health": (200, 200),
        "/liveness": (200, 200), "/readiness": (200, 200),
    }
    for path, (on_primary, on_replica) in expected.items():
        for node, code in ((primary, on_primary), (replica, on_replica)):
            got, body = node.api(path)
            assert got == code, (path, node.name, body)
            for method in ("HEAD", "OPTIONS"):
                assert node.api(path, method=method) == (code, None), (path, method, node.name)
    code, body = primary.api("/primary")
    assert body["role"] == "primary" and body["leader"] == primary.name
    code, body = replica.api("/primary")
    assert body["reason"] == "this member is a replica"
    assert replica.api("/replica?lag=1GB")[0] == 200
    assert replica.api("/replica?lag=16MB")[0] == 200

    status = replica.api("/status")[1]
    assert status["role"] == "replica" and status["streaming"] and status["leader"] == primary.name
    assert status["lag_bytes"] is not None
    status = primary.api("/status")[1]
    assert status["holds_lock"] and 0 < status["lock_expires_in"] <= 10
    def members():
        return {m["name"]: m for m in primary.api("/cluster")[1]["members"]}

    # /cluster shows etcd as the leader read it at the start of its last loop.
    wait_until(lambda: {m["role"] for name, m in members().items() if name != primary.name} == {"replica"}, 5,
               "the replicas' member keys in /cluster")
    assert members()[primary.name]["role"] == "leader"


def test_bad_requests_get_4xx_and_change_nothing(cluster):
    node = cluster.nodes[cluster.leader_name()]
    leader_before = cluster.leader_name()
    assert node.api("/nonexistent")[0] == 404
    code, body = node.api("/replica?lag=lots")
    assert code == 400 and "lag" in body["error"]
    assert node.api("/primary", method="POST")[0] == 405
    assert node.api("/config")[0] == 401
    wrong = base64.b64encode(b"admin:wrong").decode()
    assert node.api("/config", headers={"Authorization": f"Basic {wrong}"})[0] == 401
    right = base64.b64encode(b"admin:api-Secret-9").decode()
    code, body = node.api("/config", headers={"Authorization": f"Basic {right}"})
    assert code == 200 and body["postgresql"]["name"] == node.name
    text = str(body)
    for secret in ("api-Secret-9", harness.SUPERUSER_PASSWORD, harness.REPLICATION_PASSWORD):
        assert secret not in text
    assert cluster.leader_name() == leader_before and node.role() == "primary"


def test_check_script_exit_codes(cluster):
    primary = cluster.nodes[cluster.leader_name()]
    replica = next(n for n in cluster.nodes.values() if n is not primary)

    def check(*args, env=None):
        return subprocess.run([CHECK, *args], env={**os.environ, **(env or {})}, capture_output=True).returncode

    assert check("--api-port", str(primary.api_port), "127.0.0.1") == 0
    assert check("--api-port", str(replica.api_port), "127.0.0.1") == 1
    assert check("--role", "replica", "--api-port", str(replica.api_port), "127.0.0.1") == 0
    assert check("--role", "replica", "--lag", "1GB", "--api-port", str(replica.api_port), "127.0.0.1") == 0
    assert check("--api-port", str(harness.free_port()), "127.0.0.1") == 2
    # haproxy external-check calling convention: proxy addr/port, server addr/port.
    assert check("0.0.0.0", "5000", "127.0.0.1", str(primary.port),
                 env={"GOVERNOR_API_PORT": str(primary.api_port)}) == 0
    assert check("0.0.0.0", "5000", "127.0.0.1", str(replica.port),
                 env={"GOVERNOR_API_PORT": str(replica.api_port)}) == 1


def test_haproxy_routes_to_primary_and_replicas_and_follows_a_failover(cluster, haproxy):
    primary = cluster.nodes[cluster.leader_name()]
    replica_ports = {n.port for n in cluster.nodes.values() if n is not primary}
    # haproxy starts with every server up; its first checks take them out within `fall 2`.
    wait_until(lambda: {haproxy.server_port(haproxy.rw_port) for _ in range(4)} == {primary.port}, 10,
               "haproxy to route writes to the primary only")
    wait_until(lambda: {haproxy.server_port(haproxy.ro_port) for _ in range(6)} == replica_ports, 10,
               "haproxy to balance reads over both replicas only")

    session = haproxy.connect(haproxy.rw_port)
    with session.cursor() as cur:
        cur.execute("SELECT 1")
    # Freeze the leader's governor: its API stops answering, haproxy marks the primary down and cuts
    # the open session although PostgreSQL itself still runs; then a replica takes the lock.
    frozen = primary.freeze()
    try:
        frozen_at = time.monotonic()

        def session_closed() -> bool:
            try:
                with session.cursor() as cur:
                    cur.execute("SELECT 1")
                return False
            except psycopg2.Error:
                return True

        wait_until(session_closed, 10, "haproxy to close the session to the unhealthy primary")
        assert time.monotonic() - frozen_at < 6
        new_name = wait_until(lambda: (lambda n: n if n and n != primary.name else None)(cluster.leader_name()),
                              20, "a new leader")
        new = cluster.nodes[new_name]
        wait_until(lambda: new.role() == "primary", 10, "the promotion")
        promoted_at = time.monotonic()
        wait_until(lambda: haproxy.server_port(haproxy.rw_port) == new.port, 10, "haproxy to route to the new primary",
                   interval=0.1)
        assert time.monotonic() - promoted_at < 4
        conn = haproxy.connect(haproxy.rw_port)
        with conn.cursor() as cur:
            cur.execute("CREATE TABLE through_haproxy (v int)")
        conn.close()
    finally:
        primary.thaw(frozen)
    wait_until(lambda: primary.role() == "replica", 20, "the old leader to demote")
    assert haproxy.server_port(haproxy.rw_port) == new.port


def scrape(node) -> str:
    with urllib.request.urlopen(f"http://127.0.0.1:{node.metrics_port}/metrics", timeout=3) as resp:
        return resp.read().decode()


def value(text: str, name: str, labels: str = "") -> float:
    pattern = re.escape(name + (("{" + labels + "}") if labels else "")) + r" (\S+)"
    match = re.search(r"(?m)^" + pattern + "$", text)
    assert match, f"{name}{{{labels}}} not in the scrape"
    return float(match.group(1))


def test_metrics_pass_promtool_and_match_the_cluster(cluster):
    primary = cluster.nodes[cluster.leader_name()]
    replica, other = [n for n in cluster.nodes.values() if n is not primary]
    for node in cluster.nodes.values():
        text = scrape(node)
        lint = subprocess.run(["promtool", "check", "metrics"], input=text, capture_output=True, text=True)
        assert lint.returncode == 0, lint.stdout + lint.stderr
        assert value(text, "governor_build_info",
                     f'member="{node.name}",scope="{cluster.scope}",version="0.1.0"') == 1
        role = "primary" if node is primary else "replica"
        assert value(text, "governor_role", f'role="{role}"') == 1
        assert value(text, "governor_lock_held") == (1 if node is primary else 0)
        assert value(text, "governor_postgres_up") == 1
        assert value(text, "governor_timeline") == 1
        assert value(text, "governor_members") == 3
        assert value(text, "governor_loop_duration_seconds_count") > 0
        assert value(text, "governor_dcs_request_duration_seconds_count", 'operation="read of the cluster"') > 0
    text = scrape(primary)
    assert 0 < value(text, "governor_lock_expiry_seconds") <= 10
    for node in (replica, other):   # the leader's view, as of its last loop
        wait_until(lambda n=node: value(scrape(primary), "governor_replica_streaming", f'replica="{n.name}"') == 1,
                   5, f"the leader to report {node.name} streaming")

    # Freeze one replica's WAL receiver and write: the leader reports its lag in bytes.
    frozen = replica.signal_postgres("walreceiver", signal.SIGSTOP)
    try:
        primary.sql("CREATE TABLE lagging AS SELECT generate_series(1, 50000) AS v")
        wait_until(lambda: value(scrape(primary), "governor_replication_lag_bytes",
                                 f'replica="{replica.name}"') > 1_000_000, 10, "the lag to show")
        wait_until(lambda: value(scrape(primary), "governor_replication_lag_bytes",
                                 f'replica="{other.name}"') == 0, 10, "the healthy replica at lag 0")
    finally:
        for pid in frozen:
            os.kill(pid, signal.SIGCONT)
    wait_until(lambda: value(scrape(primary), "governor_replication_lag_bytes",
                             f'replica="{replica.name}"') == 0, 20, "the lag to drain")
