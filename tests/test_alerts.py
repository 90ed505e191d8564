"""The shipped alerting rules: valid for Prometheus (`promtool check rules`), firing when they
should on synthetic series (`promtool test rules`, tests/prometheus/), and naming only metrics a
running governor really exports."""
from __future__ import annotations

import os
import re
import subprocess
import urllib.request

import pytest

from tests.harness import REPO

RULES = os.path.join(REPO, "packaging", "prometheus", "governor-alerts.yml")
RULE_TESTS = os.path.join(REPO, "tests", "prometheus", "governor-alerts.test.yml")


def promtool(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(["promtool", *args], capture_output=True, text=True, timeout=60,
                          cwd=os.path.dirname(RULE_TESTS))


def test_the_rules_are_valid_for_prometheus():
    done = promtool("check", "rules", RULES)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "SUCCESS: 11 rules found" in done.stdout


def test_the_rules_fire_when_they_should_on_synthetic_series():
    done = promtool("test", "rules", RULE_TESTS)
    assert done.returncode == 0, done.stdout + done.stderr


@pytest.mark.integration
def test_every_metric_the_rules_name_is_exported_by_a_running_member(make_cluster):
    cluster = make_cluster("alerts")
    node = cluster.add("node1", extra={"synchronous_mode": "on"})    # so the synchronous gauges are there too
    cluster.wait_for_primary(60)
    with urllib.request.urlopen(f"http://127.0.0.1:{node.metrics_port}/metrics", timeout=5) as resp:
        scraped = resp.read().decode()
    exported = set(re.findall(r"(?m)^# TYPE (\w+) ", scraped))
    exported |= {f"{name}_total" for name in exported} | {f"{name}_info" for name in exported}
    with open(RULES) as fh:
        named = set(re.findall(r"\bgovernor_\w+", fh.read()))
    assert named and not named - exported, f"named by the rules, not exported: {sorted(named - exported)}"
