"""Planned switchover through governorctl and the leader's authenticated control endpoint."""
from __future__ import annotations

import base64
import json
import os
import signal
import time
import urllib.error
import urllib.request

import pytest
import yaml

from tests import harness
from tests.harness import governorctl, wait_until

pytestmark = pytest.mark.integration
AUTH = {"restapi": {"username": "admin", "password": "api-Secret-9"}}


@pytest.fixture
def cluster(make_cluster):
    c = make_cluster("sw")
    for name in ("node1", "node2", "node3"):
        c.add(name, extra=AUTH)
    primary = c.wait_for_primary(90)
    c.wait_for_streaming([n for n in c.nodes if n != primary.name], 90)
    wait_until(lambda: all(n.api("/readiness")[0] == 200 for n in c.nodes.values()), 10, "readiness")
    primary.sql("CREATE TABLE acks (id int PRIMARY KEY)")
    return c


def test_switchover_moves_the_leader_with_a_short_write_gap_and_no_lost_write(cluster):
    old = cluster.nodes[cluster.leader_name()]
    candidate = next(n for n in cluster.nodes.values() if n is not old)
    writer = harness.WriteClient(harness.multihost_dsn(cluster), "acks", interval=0.05)
    writer.start()
    time.sleep(1)
    result = governorctl(old, "switchover", "--leader", old.name, "--candidate", candidate.name)
    time.sleep(1)
    writer.stop()
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"{candidate.name} is the leader" in result.stdout
    assert cluster.leader_name() == candidate.name
    assert candidate.role() == "primary"
    cluster.wait_for_streaming([old.name], 60)
    present = {r[0] for r in candidate.sql("SELECT id FROM acks")}
    lost = [i for i in writer.acked_ids() if i not in present]
    assert not lost, f"acknowledged writes lost: {lost}"
    gap = writer.longest_gap()
    assert gap < 5, f"writes stopped for {gap:.1f}s"
    assert cluster.etcd.get(f"/service/{cluster.scope}/failover") is None, "the request is cleared"
    history = json.loads(cluster.etcd.get(f"/service/{cluster.scope}/history")["value"])
    assert history[-1]["leader"] == candidate.name and "switchover_take_over" in history[-1]["reason"]
    shown = governorctl(old, "history")
    assert shown.returncode == 0 and candidate.name in shown.stdout.splitlines()[-1]
    assert shown.stdout.splitlines()[0].split()[:3] == ["TL", "LSN", "Time"]
    print(f"switchover write gap: {gap:.2f}s")


def test_switchover_is_refused_when_the_candidate_lags_or_does_not_exist(cluster):
    leader = cluster.nodes[cluster.leader_name()]
    lagging, other = [n for n in cluster.nodes.values() if n is not leader]
    frozen = lagging.signal_postgres("walreceiver", signal.SIGSTOP)
    try:
        leader.sql("CREATE TABLE filler AS SELECT repeat('x', 100) FROM generate_series(1, 40000)")
        wait_until(lambda: (lagging.api("/status")[1].get("lag_bytes") or 0) > 1048576, 15, "the lag to show")
        result = governorctl(leader, "switchover", "--candidate", lagging.name)
        assert result.returncode == 1
        assert "refused" in result.stderr and "lags" in result.stderr and "nothing changed" in result.stderr
    finally:
        for pid in frozen:
            os.kill(pid, signal.SIGCONT)
    result = governorctl(leader, "switchover", "--candidate", "nosuchnode")
    assert result.returncode == 1 and "not a replica of this cluster" in result.stderr
    result = governorctl(leader, "switchover", "--leader", other.name, "--candidate", lagging.name)
    assert result.returncode == 1 and f"{other.name} is not the leader" in result.stderr
    time.sleep(2)
    assert cluster.leader_name() == leader.name and leader.role() == "primary"
    assert cluster.etcd.get(f"/service/{cluster.scope}/failover") is None


def test_control_endpoint_needs_credentials_and_a_valid_body(cluster):
    leader = cluster.nodes[cluster.leader_name()]
    replica = next(n for n in cluster.nodes.values() if n is not leader)
    url = f"http://127.0.0.1:{leader.api_port}/switchover"

    def post(body: bytes, user: str = "", password: str = "") -> int:
        req = urllib.request.Request(url, data=body, method="POST", headers={"Content-Type": "application/json"})
        if user:
            req.add_header("Authorization", "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode())
        try:
            with urllib.request.urlopen(req, timeout=5) as resp:
                return resp.status
        except urllib.error.HTTPError as exc:
            return exc.code

    body = json.dumps({"candidate": replica.name}).encode()
    assert post(body) == 401
    assert post(body, "admin", "wrong") == 401
    assert post(b"not json", "admin", "api-Secret-9") == 400
    assert post(json.dumps({"candidate": 5}).encode(), "admin", "api-Secret-9") == 400
    assert post(json.dumps({"candidate": "ghost"}).encode(), "admin", "api-Secret-9") == 412
    time.sleep(2)
    assert cluster.leader_name() == leader.name, "a refused request changes nothing"


def test_manual_failover_promotes_the_chosen_candidate_when_no_leader_can_be_elected(make_cluster):
    extra = {**AUTH, "postgresql": {"maximum_lag_on_failover": "64kB"}}
    c = make_cluster("fo-manual")
    for name in ("node1", "node2"):
        c.add(name, extra=extra)
    old = c.wait_for_primary(90)
    replica = next(n for n in c.nodes.values() if n is not old)
    c.wait_for_streaming([replica.name], 90)
    assert governorctl(old, "failover", "--candidate", replica.name).returncode == 1, "a leader exists"
    frozen = replica.signal_postgres("walreceiver", signal.SIGSTOP)
    try:
        # Far more WAL than socket buffers hold, so the replica stays behind even after SIGCONT.
        old.sql("CREATE TABLE big AS SELECT repeat('x', 100) AS v FROM generate_series(1, 300000)")
        wait_until(lambda: int(c.etcd.get(f"/service/{c.scope}/optime/leader")["value"])
                   - replica.member()["lsn"] > 65536, 15, "the replica to fall behind")
        old.crash()
    finally:
        for pid in frozen:
            os.kill(pid, signal.SIGCONT)
    wait_until(lambda: "race_not_eligible_lag" in replica.log_text() and c.leader_name() is None, 30,
               "the cluster to stay leaderless")
    refused = governorctl(replica, "failover", "--candidate", replica.name)
    assert refused.returncode == 1 and "--force" in refused.stderr
    assert c.leader_name() is None
    done = governorctl(replica, "failover", "--candidate", replica.name, "--force")
    assert done.returncode == 0, done.stdout + done.stderr
    assert c.leader_name() == replica.name
    wait_until(lambda: replica.role() == "primary", 10, "the promotion")
    replica.sql("CREATE TABLE after_manual_failover (v int)")  # writable; `big` never reached it
    wait_until(lambda: c.etcd.get(f"/service/{c.scope}/failover") is None, 5, "the request to be cleared")


def test_pause_stops_automatic_actions_until_resume(make_cluster):
    c = make_cluster("pause")
    for name in ("node1", "node2"):
        c.add(name, extra=AUTH)
    leader = c.wait_for_primary(90)
    c.wait_for_streaming([n for n in c.nodes if n != leader.name], 90)
    result = governorctl(leader, "pause")
    assert result.returncode == 0, result.stderr
    wait_until(lambda: leader.api("/status")[1]["paused"], 10, "/status to show maintenance mode")
    listing = json.loads(governorctl(leader, "list", "--format", "json").stdout)
    assert listing["paused"] is True
    as_yaml = yaml.safe_load(governorctl(leader, "list", "--format", "yaml").stdout)
    assert as_yaml["paused"] is True and {m["member"] for m in as_yaml["members"]} == set(c.nodes)
    assert "Maintenance mode: on" in governorctl(leader, "list").stdout
    with urllib.request.urlopen(f"http://127.0.0.1:{leader.metrics_port}/metrics", timeout=3) as resp:
        assert "governor_paused 1.0" in resp.read().decode()
    # The operator works on PostgreSQL by hand: a stopped primary is not restarted, no failover.
    leader.crash_postgres()
    time.sleep(leader.config["etcd"]["ttl"] + 3)
    assert leader.postmaster_pid() is None, "paused: governor does not restart PostgreSQL"
    assert c.leader_name() == leader.name, "paused: the leader keeps its lock"
    assert "paused_leader" in leader.log_text()
    assert governorctl(leader, "resume").returncode == 0
    wait_until(lambda: leader.role() == "primary", 30, "PostgreSQL restarted in place after resume")
    assert c.leader_name() == leader.name
