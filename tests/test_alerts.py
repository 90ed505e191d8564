"""The shipped alerting rules and Grafana dashboard: rules valid for Prometheus (`promtool check
rules`) and firing when they should on synthetic series (`promtool test rules`, tests/prometheus/);
every dashboard query valid PromQL (checked by promtool as recording rules); both naming only
metrics a running governor really exports."""
from __future__ import annotations

import json
import os
import re
import subprocess
import urllib.request

import pytest
import yaml

from tests.harness import REPO, wait_until

RULES = os.path.join(REPO, "packaging", "prometheus", "governor-alerts.yml")
RULE_TESTS = os.path.join(REPO, "tests", "prometheus", "governor-alerts.test.yml")
DASHBOARD = os.path.join(REPO, "packaging", "grafana", "governor-dashboard.json")
RUNBOOKS = os.path.join(REPO, "docs", "runbooks")


def dashboard_queries() -> list:
    """Every panel's and every annotation's query."""
    with open(DASHBOARD) as fh:
        board = json.load(fh)
    return [t["expr"] for p in board["panels"] for t in p["targets"]] + \
        [a["expr"] for a in board.get("annotations", {}).get("list", [])]


def promtool(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(["promtool", *args], capture_output=True, text=True, timeout=60,
                          cwd=os.path.dirname(RULE_TESTS))


def test_the_rules_are_valid_for_prometheus():
    done = promtool("check", "rules", RULES)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "SUCCESS: 21 rules found" in done.stdout


def rules() -> list:
    with open(RULES) as fh:
        return yaml.safe_load(fh)["groups"][0]["rules"]


def test_every_alert_links_its_runbook_which_says_what_to_check_and_do():
    shipped = {name[:-3] for name in os.listdir(RUNBOOKS)}
    alerts = {rule["alert"] for rule in rules()}
    assert shipped == alerts, f"runbooks without an alert: {shipped - alerts}; alerts without one: {alerts - shipped}"
    for rule in rules():
        name = rule["alert"]
        assert rule["annotations"]["runbook_url"] == f"file:///usr/share/governor/runbooks/{name}.md"
        with open(os.path.join(RUNBOOKS, f"{name}.md")) as fh:
            text = fh.read()
        assert text.startswith(f"# {name}: "), name
        for section in ("## What it means", "## Confirm", "## What to do", "## What not to do"):
            assert section in text, f"{name}: no {section!r}"
        assert "governorctl" in text or "journalctl" in text, f"{name}: no command to confirm it with"


def test_every_alert_carries_its_scope_and_assumes_no_job_name():
    """Checked where it counts: the label sets promtool computes for each alert firing."""
    with open(RULES) as fh:
        assert 'job="' not in fh.read(), "a job name is hard-coded"
    with open(RULE_TESTS) as fh:
        cases = [c for t in yaml.safe_load(fh)["tests"] for c in t["alert_rule_test"]]
    for rule in rules():
        mine = [c for c in cases if c["alertname"] == rule["alert"]]
        firing = [a for c in mine for a in c["exp_alerts"]]
        assert firing and any(not c["exp_alerts"] for c in mine), f"{rule['alert']}: one firing, one not"
        assert all("scope" in a["exp_labels"] for a in firing), rule["alert"]
        if "$labels.member" in rule["annotations"]["summary"]:
            assert all("member" in a["exp_labels"] for a in firing), rule["alert"]


def test_the_rules_fire_when_they_should_on_synthetic_series():
    done = promtool("test", "rules", RULE_TESTS)
    assert done.returncode == 0, done.stdout + done.stderr


def test_every_dashboard_query_is_valid_promql(tmp_path):
    queries = dashboard_queries()
    assert len(queries) >= 12
    concrete = [q.replace("$scope", "main").replace("$__rate_interval", "1m") for q in queries]
    rules = "groups:\n  - name: dashboard\n    rules:\n" + "".join(
        f"      - record: dashboard:query{i}\n        expr: {json.dumps(q)}\n" for i, q in enumerate(concrete))
    path = tmp_path / "dashboard-rules.yml"
    path.write_text(rules)
    done = promtool("check", "rules", str(path))
    assert done.returncode == 0, done.stdout + done.stderr


@pytest.mark.integration
def test_every_metric_the_rules_name_is_exported_by_a_running_member(make_cluster):
    cluster = make_cluster("alerts")
    # synchronous mode and archiving on, so the synchronous and archiver metrics are there too;
    # an archive_command that fails, so the archiver's failure shows in /status and the scrape
    node = cluster.add("node1", extra={"synchronous_mode": "on", "postgresql": {"parameters": {
        "archive_mode": "on", "archive_command": "false"}}})
    cluster.wait_for_primary(60)
    node.sql("SELECT pg_switch_wal() FROM (SELECT txid_current()) AS x")
    with open(RULES) as fh:
        by_rules = set(re.findall(r"\bgovernor_\w+", fh.read()))
    by_dashboard = set(re.findall(r"\bgovernor_\w+", " ".join(dashboard_queries())))
    assert by_rules and by_dashboard

    def exported() -> set:
        with urllib.request.urlopen(f"http://127.0.0.1:{node.metrics_port}/metrics", timeout=5) as resp:
            names = set(re.findall(r"(?m)^# TYPE (\w+) ", resp.read().decode()))
        return names | {f"{name}{suffix}" for name in names for suffix in ("_total", "_info", "_bucket")}

    # a gauge without a value yet (before the loop's first report as leader) is left out: wait for it
    try:
        wait_until(lambda: not (by_rules | by_dashboard) - exported(), 20, "every named metric in a scrape")
    except AssertionError:
        pass
    scraped = exported()
    assert not by_rules - scraped, f"named by the rules, not exported: {sorted(by_rules - scraped)}"
    assert not by_dashboard - scraped, f"named by the dashboard, not exported: {sorted(by_dashboard - scraped)}"

    wait_until(lambda: (node.api("/status")[1]["archiver"] or {}).get("failing"), 15, "the archiver's failure")
    with urllib.request.urlopen(f"http://127.0.0.1:{node.metrics_port}/metrics", timeout=5) as resp:
        text = resp.read().decode()
    assert re.search(r"(?m)^governor_archiver_failing 1\.0$", text), "the failing archive_command in the scrape"
    archiver = node.api("/status")[1]["archiver"]
    assert archiver["failing"] is True and archiver["failed_count"] >= 1 and archiver["pending_segments"] >= 1
    assert archiver["last_archived_wal"] is None
