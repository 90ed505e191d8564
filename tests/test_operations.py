"""Day-two operations on a real cluster: dynamic configuration, rolling restart, reinit,
scheduled switchover, removing a dead cluster."""
from __future__ import annotations

import base64
import json
import os
import threading
import time
import urllib.error
import urllib.request

import pytest

from governor import config as config_mod
from governor.dcs.etcd2 import Etcd2
from tests.harness import governorctl, wait_until

pytestmark = pytest.mark.integration
AUTH = {"restapi": {"username": "admin", "password": "api-Secret-9"}}


@pytest.fixture
def cluster(make_cluster):
    c = make_cluster("ops")
    for name in ("node1", "node2", "node3"):
        c.add(name, extra=AUTH)
    primary = c.wait_for_primary(90)
    c.wait_for_streaming([n for n in c.nodes if n != primary.name], 90)
    return c


def setting(node, name: str) -> str:
    return node.sql(f"SHOW {name}")[0][0]


def start_time(node) -> float:
    return node.api("/status")[1]["postmaster_start_time"]


def test_edit_config_reaches_every_member_and_restart_pending_applies_what_needs_a_restart(cluster):
    any_node = next(iter(cluster.nodes.values()))
    assert "no dynamic settings" in governorctl(any_node, "show-config").stdout
    done = governorctl(any_node, "edit-config", "--set", "postgresql.parameters.work_mem=12MB",
                       "--set", "maximum_lag_on_failover=2MB")
    assert done.returncode == 0, done.stderr
    assert "postgresql.parameters.work_mem: (unset) -> 12MB" in done.stdout
    wait_until(lambda: all(setting(n, "work_mem") == "12MB" for n in cluster.nodes.values()), 15,
               "work_mem on every member (reload, no restart)")
    shown = governorctl(any_node, "show-config").stdout
    assert "work_mem: 12MB" in shown and "maximum_lag_on_failover: 2MB" in shown

    leader = cluster.nodes[cluster.leader_name()]
    before = {n.name: start_time(n) for n in cluster.nodes.values()}
    assert governorctl(any_node, "edit-config", "--set", "postgresql.parameters.max_connections=40").returncode == 0
    wait_until(lambda: all(m["pending_restart"] for m in json.loads(
        governorctl(any_node, "list", "--format", "json").stdout)["members"]), 20, "a pending restart everywhere")
    assert "Pending restart" in governorctl(any_node, "list").stdout
    assert all(setting(n, "max_connections") == "30" for n in cluster.nodes.values()), "not applied before restart"
    restarted = governorctl(any_node, "restart", "--pending", "--force")
    assert restarted.returncode == 0, restarted.stdout + restarted.stderr
    order = [line.split()[1] for line in restarted.stdout.splitlines() if line.startswith("restarting ")]
    assert sorted(order) == sorted(cluster.nodes) and order[-1] == leader.name, "replicas first, leader last"
    for node in cluster.nodes.values():
        assert setting(node, "max_connections") == "40"
        assert start_time(node) > before[node.name], f"{node.name} was restarted"
    assert cluster.leader_name() == leader.name and leader.role() == "primary", "the leader kept its lock"
    wait_until(lambda: not any(m["pending_restart"] for m in json.loads(
        governorctl(any_node, "list", "--format", "json").stdout)["members"]), 10, "nothing pending")
    assert "no member has a restart pending" in governorctl(any_node, "restart", "--pending").stdout

    # Removing a dynamic setting falls back to the member's file value.
    assert governorctl(any_node, "edit-config", "--set", "postgresql.parameters.work_mem=null").returncode == 0
    wait_until(lambda: all(setting(n, "work_mem") == "4MB" for n in cluster.nodes.values()), 15,
               "work_mem back to the default")


def test_invalid_dynamic_settings_are_refused_and_change_nothing(cluster):
    node = next(iter(cluster.nodes.values()))
    key = f"/service/{cluster.scope}/config"
    for bad, expected in ((["--set", "ttl=2"], "config: ttl: expected an integer from 5 to 3600"),
                          (["--set", "loop_wait=20"], "loop_wait + 2 * retry_timeout <= ttl"),
                          (["--set", "postgresql.parameters.port=5999"], "postgresql.parameters.port"),
                          (["--set", "colour=blue"], "config: colour: not a dynamic setting")):
        result = governorctl(node, "edit-config", *bad)
        assert result.returncode == 1, result.stdout
        assert expected in result.stderr and "nothing written" in result.stderr
    assert governorctl(node, "edit-config", "--set", "oops").returncode == 2
    assert cluster.etcd.get(key) is None

    code, answer = _patch(node, {"loop_wait": -1})
    assert code == 400 and "loop_wait" in answer["error"]
    code, _ = _patch(node, {"loop_wait": 2}, password="wrong")
    assert code == 401
    assert cluster.etcd.get(key) is None, "refused requests wrote nothing"
    code, answer = _patch(node, {"loop_wait": 2})
    assert code == 200 and answer == {"loop_wait": 2}

    # A value written behind governor's back (etcdctl) is rejected by the members, loudly.
    cluster.etcd.put(key, json.dumps({"ttl": 1}))
    wait_until(lambda: "dynamic configuration in etcd is invalid" in node.log_text(), 10, "the rejection")
    assert cluster.leader_name() is not None


def test_two_concurrent_edits_cannot_both_win(cluster):
    node = next(iter(cluster.nodes.values()))
    cfg = config_mod.load(node.config_path)
    editors = [Etcd2(cfg.etcd, retry_timeout=3) for _ in range(4)]
    snapshot = editors[0].get_cluster()
    results = [None] * len(editors)
    barrier = threading.Barrier(len(editors))

    def edit(i: int) -> None:
        barrier.wait()
        results[i] = editors[i].set_config({"loop_wait": i + 1}, snapshot.config_index)

    threads = [threading.Thread(target=edit, args=(i,)) for i in range(len(editors))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(10)
    assert results.count(True) == 1, results
    winner = results.index(True)
    assert editors[0].get_cluster().config == {"loop_wait": winner + 1}
    stale = editors[1].set_config({"loop_wait": 9}, snapshot.config_index)
    assert stale is False, "a write based on an old read is refused"


def test_reinit_reclones_a_replica_after_typed_confirmation(cluster):
    leader = cluster.nodes[cluster.leader_name()]
    replica = next(n for n in cluster.nodes.values() if n is not leader)
    marker = os.path.join(replica.data_dir, "reinit-marker")
    open(marker, "w").close()
    refused = governorctl(replica, "reinit", replica.name, stdin="no\n")
    assert refused.returncode == 1 and "not confirmed" in refused.stderr
    assert os.path.exists(marker)
    assert governorctl(replica, "reinit", leader.name, "--force").returncode == 1, "never the leader"
    assert leader.role() == "primary"
    leader.sql("CREATE TABLE before_reinit AS SELECT 1 AS v")
    done = governorctl(replica, "reinit", replica.name, stdin=f"{replica.name}\n")
    assert done.returncode == 0, done.stdout + done.stderr
    assert not os.path.exists(marker), "the data directory was cloned afresh"
    assert replica.sql("SELECT v FROM before_reinit") == [(1,)]
    assert cluster.leader_name() == leader.name


def test_scheduled_switchover_happens_at_its_time_and_can_be_cancelled(cluster):
    leader = cluster.nodes[cluster.leader_name()]
    candidate = next(n for n in cluster.nodes.values() if n is not leader)
    when = time.strftime("%Y-%m-%dT%H:%M:%S%z", time.localtime(time.time() + 5))
    planned = governorctl(leader, "switchover", "--candidate", candidate.name, "--scheduled", when)
    assert planned.returncode == 0 and "scheduled for" in planned.stdout, planned.stderr
    assert governorctl(leader, "switchover", "--cancel").returncode == 0
    time.sleep(8)
    assert cluster.leader_name() == leader.name, "a cancelled switchover does not happen"
    assert cluster.etcd.get(f"/service/{cluster.scope}/failover") is None

    due = int(time.time()) + 6   # the ISO time below has whole seconds
    when = time.strftime("%Y-%m-%dT%H:%M:%S%z", time.localtime(due))
    assert governorctl(leader, "switchover", "--candidate", candidate.name, "--scheduled", when).returncode == 0
    time.sleep(3)
    assert cluster.leader_name() == leader.name, "not before its time"
    wait_until(lambda: cluster.leader_name() == candidate.name, 30, "the scheduled switchover")
    assert time.time() >= due
    cluster.wait_for_streaming([leader.name], 60)
    past = governorctl(leader, "switchover", "--candidate", leader.name, "--scheduled", "2001-01-01T00:00:00Z")
    assert past.returncode == 1 and "already passed" in past.stderr


def test_remove_deletes_a_stopped_cluster_after_typed_confirmation(make_cluster):
    c = make_cluster("rm")
    node = c.add("node1", extra=AUTH)
    c.wait_for_primary(90)
    alive = governorctl(node, "remove", c.scope, stdin=f"{c.scope}\n")
    assert alive.returncode == 1 and "alive" in alive.stderr
    assert governorctl(node, "remove", "another-scope").returncode == 1
    assert node.stop() == 0
    wrong = governorctl(node, "remove", c.scope, stdin="yes\n")
    assert wrong.returncode == 1 and c.etcd.get(f"/service/{c.scope}/initialize") is not None
    done = governorctl(node, "remove", c.scope, stdin=f"{c.scope}\n")
    assert done.returncode == 0, done.stderr
    assert c.etcd.get(f"/service/{c.scope}/initialize") is None
    assert os.path.isdir(node.data_dir), "the data directory stays"


def _patch(node, body: dict, password: str = "api-Secret-9"):
    req = urllib.request.Request(f"http://127.0.0.1:{node.api_port}/config", data=json.dumps(body).encode(),
                                 method="PATCH", headers={"Content-Type": "application/json"})
    req.add_header("Authorization", "Basic " + base64.b64encode(f"admin:{password}".encode()).decode())
    try:
        with urllib.request.urlopen(req, timeout=5) as resp:
            return resp.status, json.loads(resp.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read() or b"{}")
