"""The shipped rules and dashboard against a real Prometheus (Debian's) scraping a real 3-member
cluster: every member scraped under a job name of the operator's choosing, a switchover and a
paused cluster show as alerts in Prometheus's own API with the cluster's scope and the member,
and every dashboard query answers, the role panel for every member and the switchover as an
annotation."""
from __future__ import annotations

import json
import os
import subprocess
import time
import urllib.parse
import urllib.request
from typing import List, Optional

import pytest
import yaml

from tests.harness import _processes, free_port, governorctl, wait_until
from tests.test_alerts import RULES, dashboard_queries

pytestmark = pytest.mark.integration
AUTH = {"restapi": {"username": "admin", "password": "api-Secret-9"}, "loop_wait": 2}


class Prometheus:
    def __init__(self, base_dir: str, targets: List[str]):
        self.dir = os.path.join(base_dir, f"prometheus-{free_port()}")
        os.makedirs(self.dir)
        self.port = free_port()
        config = {"global": {"scrape_interval": "1s", "evaluation_interval": "1s"}, "rule_files": [RULES],
                  "scrape_configs": [{"job_name": "postgres-ha", "static_configs": [{"targets": targets}]}]}
        with open(os.path.join(self.dir, "prometheus.yml"), "w") as fh:
            yaml.safe_dump(config, fh)
        self.log = open(os.path.join(self.dir, "prometheus.log"), "ab")
        self.proc = subprocess.Popen(
            ["prometheus", f"--config.file={self.dir}/prometheus.yml", f"--storage.tsdb.path={self.dir}/data",
             f"--web.listen-address=127.0.0.1:{self.port}"], stdout=self.log, stderr=subprocess.STDOUT,
            start_new_session=True)
        _processes.append(self.proc)

    def api(self, path: str, **params: str) -> dict:
        url = f"http://127.0.0.1:{self.port}/api/v1/{path}"
        if params:
            url += "?" + urllib.parse.urlencode(params)
        with urllib.request.urlopen(url, timeout=5) as resp:
            return json.load(resp)

    def query(self, expr: str) -> list:
        answer = self.api("query", query=expr)
        assert answer["status"] == "success", (expr, answer)
        return answer["data"]["result"]

    def alert(self, name: str, state: str) -> Optional[dict]:
        try:
            alerts = self.api("alerts")["data"]["alerts"]
        except OSError:
            return None
        return next((a for a in alerts if a["labels"]["alertname"] == name and a["state"] == state), None)

    def stop(self) -> None:
        self.proc.terminate()
        self.proc.wait(10)


@pytest.fixture
def watched(make_cluster, base_dir):
    cluster = make_cluster("prom")
    for name in ("node1", "node2", "node3"):
        cluster.add(name, extra=AUTH)
    primary = cluster.wait_for_primary(90)
    cluster.wait_for_streaming([n for n in cluster.nodes if n != primary.name], 90)
    prom = Prometheus(base_dir, [f"127.0.0.1:{n.metrics_port}" for n in cluster.nodes.values()])
    try:
        wait_until(lambda: _all_up(prom, 3), 60, "Prometheus to scrape the three members")
        yield cluster, prom
    finally:
        prom.stop()


def _all_up(prom: Prometheus, count: int) -> bool:
    try:
        return len(prom.query('up == 1 and on (instance, job) governor_build_info')) == count
    except OSError:
        return False


def test_a_switchover_and_a_pause_are_alerts_in_prometheus_with_scope_and_member(watched):
    cluster, prom = watched
    scope = cluster.scope
    any_node = next(iter(cluster.nodes.values()))
    old = cluster.leader_name()
    assert prom.alert("GovernorLeaderChanged", "firing") is None
    candidate = next(n for n in cluster.nodes if n != old)
    done = governorctl(any_node, "switchover", "--candidate", candidate, "--force", "--wait", "60")
    assert done.returncode == 0, done.stderr
    changed = wait_until(lambda: prom.alert("GovernorLeaderChanged", "firing"), 60, "the switchover alert")
    assert changed["labels"]["scope"] == scope and changed["labels"]["member"] == candidate, changed
    assert changed["labels"]["job"] == "postgres-ha" and changed["labels"]["severity"] == "info"
    assert changed["annotations"]["runbook_url"].endswith("/GovernorLeaderChanged.md")
    assert prom.alert("GovernorFailover", "firing") is None, "a switchover is not a failover"
    assert prom.alert("GovernorTwoPrimaries", "firing") is None

    assert governorctl(any_node, "pause", "--wait", "30").returncode == 0
    paused = wait_until(lambda: prom.alert("GovernorPaused", "pending"), 30, "the pause alert, pending its hour")
    assert paused["labels"]["scope"] == scope, paused
    assert governorctl(any_node, "resume", "--wait", "30").returncode == 0
    wait_until(lambda: prom.alert("GovernorPaused", "pending") is None, 30, "the pause alert to clear")

    # The dashboard: every query answers for this scope; every member has a role; the switchover
    # is an annotation naming the new leader.
    for expr in dashboard_queries():
        prom.query(expr.replace("$scope", scope).replace("$__rate_interval", "1m"))
    board = json.load(open(os.path.join(os.path.dirname(RULES), "..", "grafana", "governor-dashboard.json")))
    role = next(p for p in board["panels"] if p["title"] == "Role of each member over time")["targets"][0]["expr"]
    roles = {r["metric"]["member"]: r["value"][1] for r in prom.query(role.replace("$scope", scope))}
    assert roles == {**{n: "1" for n in cluster.nodes}, candidate: "2"}, roles
    note = next(a for a in board["annotations"]["list"] if a["name"] == "Switchovers")["expr"]
    marked = prom.query(note.replace("$scope", scope))
    assert [r["metric"]["member"] for r in marked] == [candidate], marked


def test_metrics_are_served_on_the_api_port_too(watched):
    cluster, _prom = watched
    node = next(iter(cluster.nodes.values()))
    with urllib.request.urlopen(f"http://127.0.0.1:{node.api_port}/metrics", timeout=5) as resp:
        assert resp.headers["Content-Type"].startswith("text/plain")
        on_api = {line.split()[2] for line in resp.read().decode().splitlines() if line.startswith("# TYPE")}
    with urllib.request.urlopen(f"http://127.0.0.1:{node.metrics_port}/metrics", timeout=5) as resp:
        on_exporter = {line.split()[2] for line in resp.read().decode().splitlines() if line.startswith("# TYPE")}
    assert on_api == on_exporter and "governor_role" in on_api


def test_a_failover_is_an_alert_and_an_annotation_with_the_roles_changing(watched):
    cluster, prom = watched
    scope = cluster.scope
    old = cluster.leader_name()
    cluster.nodes[old].crash()          # the leader's host dies: governor and PostgreSQL at once
    new = wait_until(lambda: (cluster.leader_name() or old) != old and cluster.leader_name(), 60, "a failover")
    failover = wait_until(lambda: prom.alert("GovernorFailover", "firing"), 60, "the failover alert")
    assert (failover["labels"]["scope"], failover["labels"]["member"]) == (scope, new), failover
    assert prom.alert("GovernorLeaderChanged", "firing") is None, "a failover is not a switchover"
    down = wait_until(lambda: prom.alert("GovernorExporterDown", "pending"), 30, "the dead member's exporter")
    assert down["labels"]["member"] == old and down["labels"]["scope"] == scope, down

    board = json.load(open(os.path.join(os.path.dirname(RULES), "..", "grafana", "governor-dashboard.json")))
    note = next(a for a in board["annotations"]["list"] if a["name"] == "Failovers")["expr"]
    assert [r["metric"]["member"] for r in prom.query(note.replace("$scope", scope))] == [new]
    role = next(p for p in board["panels"] if p["title"] == "Role of each member over time")["targets"][0]["expr"]
    now = {r["metric"]["member"]: r["value"][1] for r in prom.query(role.replace("$scope", scope))}
    assert now.get(new) == "2" and old not in now, now
    was = prom.api("query_range", query=role.replace("$scope", scope), start=str(time.time() - 120),
                   end=str(time.time()), step="1")["data"]["result"]
    history = {r["metric"]["member"]: {v for _t, v in r["values"]} for r in was}
    assert "2" in history[old] and {"1", "2"} <= history[new], "the panel shows the roles changing"
