"""governorctl dsn, versions in list, pause --wait, the editor, scheduled restarts and query, against
real members."""
from __future__ import annotations

import json
import os
import re
import sys
import time

import psycopg2
import pytest

from governor import __version__
from tests import harness

pytestmark = pytest.mark.integration


def test_dsn_connects_to_the_leader_and_list_shows_versions(make_cluster):
    cluster = make_cluster("dsn")
    node = cluster.add("node1")
    cluster.wait_for_primary(60)
    done = harness.governorctl(node, "dsn")
    assert done.returncode == 0, done.stderr
    dsn = done.stdout.strip()
    assert dsn == f"host=127.0.0.1 port={node.port} dbname=postgres user=postgres" and "password" not in dsn
    conn = psycopg2.connect(dsn, password=harness.SUPERUSER_PASSWORD)
    with conn, conn.cursor() as cur:
        cur.execute("SELECT pg_is_in_recovery()")
        assert cur.fetchone()[0] is False
    conn.close()
    assert harness.governorctl(node, "dsn", "node1", "--dbname", "my db").stdout.strip().endswith(
        "dbname='my db' user=postgres")
    missing = harness.governorctl(node, "dsn", "nosuch")
    assert missing.returncode == 1 and "nosuch is not a member" in missing.stderr
    harness.wait_until(lambda: f"{__version__} / PG 15." in harness.governorctl(node, "list").stdout, 20,
                       "list to show the member's governor and PostgreSQL versions")


def test_pause_and_resume_wait_until_every_member_reports_them(make_cluster):
    cluster = make_cluster("pausewait")
    leader = cluster.add("node1")
    cluster.wait_for_primary(60)
    cluster.add("node2")
    cluster.wait_for_streaming(["node2"], 60)
    done = harness.governorctl(leader, "pause", "--wait")
    assert done.returncode == 0 and "every member reports it" in done.stdout, done.stdout + done.stderr
    assert all(n.api("/status")[1]["paused"] is True for n in cluster.nodes.values())
    done = harness.governorctl(leader, "resume", "--wait", "20")
    assert done.returncode == 0 and "every member reports it" in done.stdout, done.stdout + done.stderr
    assert all(n.api("/status")[1]["paused"] is False for n in cluster.nodes.values())
    cluster.nodes["node2"].kill_all()       # a member that cannot answer: the wait says who
    done = harness.governorctl(leader, "pause", "--wait", "3")
    assert done.returncode == 1 and "not reported within 3s by: node2" in done.stderr, done.stderr


def _editor(tmp_path, name: str, script: str) -> dict:
    """An EDITOR that edits the file it is given with a shell script (the file governorctl writes,
    and keeps when the edit cannot be used, in the test's own directory)."""
    path = tmp_path / name
    path.write_text("#!/bin/sh\nset -e\n" + script)
    path.chmod(0o755)
    return {"EDITOR": str(path), "VISUAL": "", "TMPDIR": str(tmp_path)}


def test_edit_config_in_the_editor_shows_the_change_asks_and_never_overwrites_a_newer_one(make_cluster, tmp_path):
    cluster = make_cluster("editor")
    node = cluster.add("node1")
    cluster.wait_for_primary(60)
    key = f"/service/{cluster.scope}/config"
    add = _editor(tmp_path, "add", 'grep -q "cluster ' + cluster.scope + '" "$1"\necho "loop_wait: 3" >> "$1"\n')
    declined = harness.governorctl(node, "edit-config", stdin="n\n", env=add)
    assert declined.returncode == 1 and "not confirmed" in declined.stderr, declined.stderr
    assert "loop_wait: (unset) -> 3" in declined.stdout
    assert cluster.etcd.get(key) is None, "nothing written without a yes"
    done = harness.governorctl(node, "edit-config", stdin="y\n", env=add)
    assert done.returncode == 0, done.stderr
    assert "loop_wait: 3" in harness.governorctl(node, "show-config").stdout
    harness.wait_until(lambda: node.api("/status")[1].get("decision") is not None and
                       "loop_wait: 3" in harness.governorctl(node, "show-config").stdout, 5, "the new setting")

    # What the editor leaves is the whole configuration: a deleted line removes the setting.
    remove = _editor(tmp_path, "remove", "sed -i '/^loop_wait/d' \"$1\"\n")
    done = harness.governorctl(node, "edit-config", "--force", env=remove)
    assert done.returncode == 0 and "loop_wait: 3 -> (unset)" in done.stdout, done.stdout + done.stderr
    assert "no dynamic settings" in harness.governorctl(node, "show-config").stdout

    # Someone else writes while the editor is open: ours is refused, theirs stays.
    ctl = f"PYTHONPATH={harness.REPO} {sys.executable} -m governor.ctl -c {node.config_path}"
    racing = _editor(tmp_path, "racing", f"{ctl} edit-config --set maximum_lag_on_failover=2MB >/dev/null\n"
                                         'echo "loop_wait: 4" >> "$1"\n')
    stale = harness.governorctl(node, "edit-config", stdin="y\n", env=racing)
    assert stale.returncode == 1 and "changed by someone else meanwhile" in stale.stderr, stale.stderr
    shown = harness.governorctl(node, "show-config").stdout
    assert "maximum_lag_on_failover: 2MB" in shown and "loop_wait" not in shown

    # Unusable edits write nothing and keep the file, named, so the work is not lost.
    for script, code, expected in (('echo "loop_wait: [" >> "$1"\n', 2, "your edit is kept in"),
                                   ('echo "loop_wait: 999" >> "$1"\n', 1, "your edit is kept in"),
                                   ('echo "- a list" > "$1"\n', 2, "expected a YAML mapping"),
                                   ("exit 3\n", 1, "exited with status 3")):
        result = harness.governorctl(node, "edit-config", stdin="y\n", env=_editor(tmp_path, "bad", script))
        assert result.returncode == code and expected in result.stderr, (script, result.stderr)
        kept = re.search(r"(/\S+\.yaml)", result.stderr)
        if "kept" in expected:
            assert kept and os.path.exists(kept.group(1)), result.stderr
    assert "loop_wait" not in harness.governorctl(node, "show-config").stdout


def _started(node) -> float:
    return node.api("/status")[1]["postmaster_start_time"]


def _logged_at(node, text: str) -> list:
    """When each line of the node's log that contains `text` was written."""
    return [time.mktime(time.strptime(line[:19], "%Y-%m-%d %H:%M:%S")) + int(line[20:23]) / 1000
            for line in node.log_text().splitlines() if text in line]


def leader_and_replica(make_cluster, scope: str) -> tuple:
    """A cluster of node1, the leader, and node2 streaming from it."""
    cluster = make_cluster(scope)
    leader = cluster.add("node1")
    cluster.wait_for_primary(60)
    replica = cluster.add("node2")
    cluster.wait_for_streaming(["node2"], 60)
    return cluster, leader, replica


def _in(seconds: float) -> tuple:
    due = int(time.time() + seconds) + 1     # the ISO time has whole seconds
    return due, time.strftime("%Y-%m-%dT%H:%M:%S%z", time.localtime(due))


def test_scheduled_restarts_happen_at_their_time_replicas_first_and_can_be_cancelled(make_cluster):
    cluster, leader, replica = leader_and_replica(make_cluster, "schedrestart")
    # governor's /status says when the postmaster started once a pass has seen it answer
    harness.wait_until(lambda: all(_started(n) for n in cluster.nodes.values()), 20, "both start times in /status")
    before = {n.name: _started(n) for n in cluster.nodes.values()}

    due, when = _in(5)
    done = harness.governorctl(leader, "restart", "--role", "replica", "--scheduled", when)
    assert done.returncode == 0 and f"node2: restart scheduled at {when}" in done.stdout, done.stdout + done.stderr
    assert "node1" not in done.stdout, "--role replica leaves the leader out"
    harness.wait_until(lambda: "Scheduled restart" in harness.governorctl(leader, "list").stdout, 10,
                       "list to show the scheduled restart")
    assert replica.api("/status")[1]["scheduled_restart"] == due
    assert _started(replica) == before["node2"], "not before its time"
    harness.wait_until(lambda: _started(replica) > before["node2"], 30, "the replica's scheduled restart")
    assert _started(replica) >= due and _started(leader) == before["node1"]
    harness.wait_until(lambda: "Scheduled restart" not in harness.governorctl(leader, "list").stdout, 10,
                       "list to forget it once done")

    # Every member at the same time: the leader waits for its replica, in place, keeping the lock.
    before = {n.name: _started(n) for n in cluster.nodes.values()}
    due, when = _in(5)
    done = harness.governorctl(leader, "restart", "--scheduled", when, "--force")
    assert done.returncode == 0, done.stderr
    harness.wait_until(lambda: all(_started(n) > before[n.name] for n in cluster.nodes.values()), 40,
                       "both scheduled restarts")
    replica_back = _logged_at(replica, "restart: PostgreSQL is running again")[-1]
    leader_began = _logged_at(leader, "scheduled_restart_due: scheduled restart: restarting PostgreSQL in place")[-1]
    assert leader_began >= replica_back, "the leader began only once its replica ran again"
    assert cluster.leader_name() == "node1" and leader.role() == "primary"

    # Cancelled, and only-if-pending with nothing pending: nothing restarts.
    before = {n.name: _started(n) for n in cluster.nodes.values()}
    due, when = _in(4)
    assert harness.governorctl(leader, "restart", "--scheduled", when, "--force").returncode == 0
    again = harness.governorctl(leader, "restart", "node2", "--scheduled", when)
    assert again.returncode == 1 and "already scheduled" in again.stderr
    cancelled = harness.governorctl(leader, "restart", "--cancel")
    assert cancelled.returncode == 0 and cancelled.stdout.count("cancelled") == 2, cancelled.stdout
    due, when = _in(3)
    pending = harness.governorctl(leader, "restart", "--role", "leader", "--pending", "--scheduled", when, "--force")
    assert pending.returncode == 0 and "only if a changed setting waits" in pending.stdout, pending.stderr
    harness.wait_until(lambda: "no changed setting waits for one" in leader.log_text(), 20, "the skipped restart")
    assert {n.name: _started(n) for n in cluster.nodes.values()} == before
    assert harness.governorctl(leader, "restart", "--cancel").returncode == 1, "nothing left to cancel"
    past = harness.governorctl(leader, "restart", "--scheduled", "2001-01-01T00:00:00Z")
    assert past.returncode == 1 and "already passed" in past.stderr
    assert harness.governorctl(leader, "restart", "--scheduled", "tomorrow").returncode == 2


def test_query_reads_by_default_writes_only_when_asked(make_cluster):
    cluster = make_cluster("query")
    leader = cluster.add("node1")
    cluster.wait_for_primary(60)
    cluster.add("node2")
    cluster.wait_for_streaming(["node2"], 60)
    env = {"PGPASSWORD": "", "PGPASSFILE": "/nonexistent"}   # the password comes from the configuration
    shown = harness.governorctl(leader, "query", "-c", "SELECT 1 AS one, 'a b' AS two", env=env)
    assert shown.returncode == 0, shown.stderr
    assert shown.stdout.splitlines() == ["one | two", "----+----", "1   | a b", "(1 row)"]
    for sql, expected in (("CREATE TABLE q(x int)", "read-only transaction"),
                          ("SET TRANSACTION READ WRITE; CREATE TABLE q(x int)", "must be set before any query"),
                          ("COMMIT; CREATE TABLE q(x int)", "read-only transaction")):
        refused = harness.governorctl(leader, "query", "-c", sql, env=env)
        assert refused.returncode == 1 and expected in refused.stderr, (sql, refused.stderr)
    assert leader.sql("SELECT to_regclass('q')") == [(None,)], "no write by default"
    wrote = harness.governorctl(leader, "query", "--write", "-c", "CREATE TABLE q AS SELECT 7 AS x", env=env)
    assert wrote.returncode == 0 and "SELECT 1" in wrote.stdout, wrote.stderr
    harness.wait_until(lambda: harness.governorctl(leader, "query", "node2", "--format", "json", "-c",
                                                   "SELECT x, pg_is_in_recovery() AS standby FROM q",
                                                   env=env).stdout.strip().startswith("["), 10, "q on node2")
    on_replica = harness.governorctl(leader, "query", "node2", "--format", "json", "-c",
                                     "SELECT x, pg_is_in_recovery() AS standby FROM q", env=env)
    assert json.loads(on_replica.stdout) == [{"x": 7, "standby": True}]
    assert harness.governorctl(leader, "query", "node2", "--format", "csv", "-c", "SELECT x FROM q",
                               env=env).stdout == "x\n7\n"
    replica_write = harness.governorctl(leader, "query", "node2", "--write", "-c", "INSERT INTO q VALUES (8)",
                                        env=env)
    assert replica_write.returncode == 1 and "read-only transaction" in replica_write.stderr
    assert harness.governorctl(leader, "query", "nosuch", "-c", "SELECT 1").returncode == 1
    slow = harness.governorctl(leader, "query", "--timeout", "1", "-c", "SELECT pg_sleep(5)")
    assert slow.returncode == 1 and "statement timeout" in slow.stderr


def test_reload_topology_and_restart_of_the_members_on_an_older_version(make_cluster):
    cluster, leader, replica = leader_and_replica(make_cluster, "reloadver")
    harness.wait_until(lambda: all(m["pg_version"] for m in json.loads(
        harness.governorctl(leader, "list", "--format", "json").stdout)["members"]), 20, "both versions published")

    done = harness.governorctl(leader, "reload")
    assert done.returncode == 0 and "node1: reload requested" in done.stdout and "node2: reload requested" in \
        done.stdout, done.stdout + done.stderr
    for node in (leader, replica):
        harness.wait_until(lambda n=node: "reload: configuration reloaded" in n.log_text(), 20, f"{node.name}'s reload")

    shown = harness.governorctl(leader, "topology").stdout
    stamp = r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d"
    assert re.search(r"^Cluster: reloadver\S* \(initialized: \d+\) at " + stamp, shown, re.M), shown
    assert re.search(r"^\| node1 .*\| leader", shown, re.M) and re.search(r"^\| \+ node2 .*\| replica", shown, re.M), \
        shown

    before = (leader.postmaster_pid(), replica.postmaster_pid())
    done = harness.governorctl(leader, "restart", "--pg-version", "15.0", "--force")
    assert done.returncode == 0 and "no member runs an older PostgreSQL version" in done.stdout, \
        done.stdout + done.stderr
    done = harness.governorctl(leader, "restart", "--pg-version", "99.1", "--role", "replica")
    assert done.returncode == 0 and "node2:" in done.stdout and "node1" not in done.stdout, done.stdout + done.stderr
    assert leader.postmaster_pid() == before[0] and replica.postmaster_pid() != before[1]
    bad = harness.governorctl(leader, "restart", "--pg-version", "fifteen")
    assert bad.returncode == 2 and "expected a PostgreSQL version such as 17.2" in bad.stderr, bad.stderr
