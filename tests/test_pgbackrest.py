"""WAL archiving and replicas with a real pgBackRest (Debian's) and a local posix repository:
the stanza created at bootstrap, a replica restored from the repository instead of copied from
the leader, a failover that leaves every WAL segment of both timelines in the archive, and a
backup taken after it that restores."""
from __future__ import annotations

import json
import os
import pwd
import re
import subprocess
import time

import pytest

from tests import harness

pytestmark = pytest.mark.integration


def repository(base_dir: str, name: str, settings: str = "repo1-retention-full=4\nstart-fast=y\n") -> tuple:
    """A pgBackRest configuration with a repository and its logs of its own (`name`) under the
    tests' directory, plus `settings` for [global]: (its path, the repository's path)."""
    root = os.path.join(base_dir, f"pgbackrest-{name}")
    for sub in ("", "repo", "log", "lock"):
        os.makedirs(os.path.join(root, sub), exist_ok=True)
        harness.chown_to_runner(os.path.join(root, sub))
    conf = os.path.join(root, "pgbackrest.conf")
    with open(conf, "w") as fh:
        fh.write(f"[global]\nrepo1-path={root}/repo\nlog-path={root}/log\nlock-path={root}/lock\n{settings}")
    os.chmod(conf, 0o644)
    return conf, os.path.join(root, "repo")


def backrest(conf: str, node, command: str, *extra: str) -> subprocess.CompletedProcess:
    """pgbackrest as postgres against `node`'s server, as an operator would run it."""
    server = [f"--pg1-path={node.data_dir}", f"--pg1-port={node.port}", f"--pg1-socket-path={node.dir}"]
    argv = ["pgbackrest", "--stanza=main", f"--config={conf}", *(server if command != "info" else []), *extra,
            command]
    user = pwd.getpwnam(harness.RUN_AS)
    return subprocess.run(argv, capture_output=True, text=True, timeout=300, user=user.pw_uid, group=user.pw_gid,
                          env={"PATH": "/usr/bin:/bin", "HOME": node.dir}, cwd=node.dir)


def segments(repo: str) -> dict:
    """timeline -> sorted segment numbers (log * 256 + seg) of the WAL files in the archive."""
    found: dict = {}
    for _root, _dirs, files in os.walk(os.path.join(repo, "archive")):
        for name in files:
            match = re.match(r"^([0-9A-F]{8})([0-9A-F]{8})([0-9A-F]{8})-", name)
            if match:
                tli, log, seg = (int(x, 16) for x in match.groups())
                found.setdefault(tli, []).append(log * 256 + seg)
    return {tli: sorted(numbers) for tli, numbers in found.items()}


def test_pgbackrest_archives_creates_replicas_and_keeps_every_segment_across_a_failover(make_cluster, base_dir):
    conf, repo = repository(base_dir, "failover")
    archive = {"pgbackrest": {"stanza": "main", "config": conf}}
    cluster = make_cluster("backrest")
    extra = {"postgresql": {"archive": archive, "create_replica_methods": ["pgbackrest", "basebackup"],
                            "parameters": {"log_replication_commands": "on"}}}
    node1 = cluster.add("node1", extra=extra)
    cluster.wait_for_primary(60)
    harness.wait_until(lambda: "stanza main created and checked" in node1.log_text(), 60, "the stanza")
    node1.sql("CREATE TABLE t AS SELECT g AS id, repeat('x', 200) AS pad FROM generate_series(1, 100000) g")
    done = backrest(conf, node1, "backup", "--type=full")
    assert done.returncode == 0, done.stdout + done.stderr
    node1.sql("INSERT INTO t SELECT g, 'after the backup' FROM generate_series(100001, 100100) g")

    node2 = cluster.add("node2", extra=extra)
    cluster.wait_for_streaming(["node2"], 120)
    assert "creating replica" in node2.log_text() and "clone finished (pgbackrest)" in node2.log_text()
    assert "BASE_BACKUP" not in open(node1.pg_log).read(), "nothing was copied from the leader"
    harness.wait_until(lambda: node2.sql("SELECT count(*) FROM t") == [(100100,)], 30, "every row on node2")

    # Failover: the leader's host dies. The new primary archives its timeline; nothing is missing.
    node1.sql("INSERT INTO t SELECT g, 'before the crash' FROM generate_series(100101, 100200) g")
    switched = node1.sql("SELECT pg_walfile_name(pg_switch_wal())")[0][0]
    # Asked of PostgreSQL itself: governor's /status is as old as its last pass.
    harness.wait_until(lambda: node1.sql("SELECT last_archived_wal FROM pg_stat_archiver")[0][0] == switched, 30,
                       "node1 to archive what it has")
    node1.crash()
    harness.wait_until(lambda: node2.role() == "primary", 60, "node2 promoted")
    node2.sql("INSERT INTO t SELECT g, 'timeline 2' FROM generate_series(100201, 100300) g")
    node2.sql("SELECT pg_switch_wal()")
    harness.wait_until(lambda: (node2.api("/status")[1]["archiver"] or {}).get("last_archived_wal"), 30,
                       "node2 archiving")
    check = backrest(conf, node2, "check")
    assert check.returncode == 0, check.stdout + check.stderr
    found = segments(repo)
    assert set(found) == {1, 2}, found
    for tli, numbers in found.items():
        assert numbers == list(range(numbers[0], numbers[-1] + 1)), f"a gap on timeline {tli}: {numbers}"
    assert found[2][0] <= found[1][-1] + 1, "timeline 2 continues where timeline 1 ended"

    # A backup taken after the failover restores: a new member made from it has every row.
    done = backrest(conf, node2, "backup", "--type=full")
    assert done.returncode == 0, done.stdout + done.stderr
    info = json.loads(backrest(conf, node2, "info", "--output=json").stdout)
    assert len(info[0]["backup"]) == 2
    node3 = cluster.add("node3", extra=extra)
    cluster.wait_for_streaming(["node3"], 120)
    assert "clone finished (pgbackrest)" in node3.log_text()
    assert node3.sql("SELECT count(*) FROM t") == [(100300,)]


def test_a_former_primary_whose_wal_was_recycled_rewinds_from_the_archive(make_cluster, base_dir):
    conf, _repo = repository(base_dir, "rewind")
    cluster = make_cluster("rewindarchive")
    # Little WAL kept: the slot of a stopped replica is given up after 16MB, checkpoints recycle.
    extra = {"postgresql": {"archive": {"pgbackrest": {"stanza": "main", "config": conf}},
                            "maximum_lag_on_failover": "1GB",
                            "parameters": {"max_wal_size": "32MB", "min_wal_size": "32MB",
                                           "max_slot_wal_keep_size": "16MB", "wal_keep_size": 0}}}
    node1 = cluster.add("node1", extra=extra)
    cluster.wait_for_primary(60)
    harness.wait_until(lambda: "stanza main created and checked" in node1.log_text(), 60, "the stanza")
    node2 = cluster.add("node2", extra=extra)
    cluster.wait_for_streaming(["node2"], 60)
    node1.sql("CREATE TABLE t (id int, pad text)")
    harness.wait_until(lambda: node2.sql("SELECT to_regclass('t') IS NOT NULL") == [(True,)], 20, "t on node2")
    node2.stop()
    assert node2.postmaster_pid() is None
    diverged = node1.sql("SELECT pg_walfile_name(pg_current_wal_lsn())")[0][0]

    # node1 goes on alone: ~100 MB of WAL and checkpoints recycle every segment since node2 left.
    for _ in range(5):
        node1.sql("INSERT INTO t SELECT g, repeat('y', 1000) FROM generate_series(1, 20000) g")
        node1.sql("CHECKPOINT")
    node1.sql("SELECT pg_switch_wal()")
    harness.wait_until(lambda: node1.api("/status")[1]["archiver"]["pending_segments"] == 0, 60,
                       "node1 to archive its WAL")
    node1.sql("CHECKPOINT")
    assert not os.path.exists(os.path.join(node1.data_dir, "pg_wal", diverged)), \
        "the segment where the timelines part is gone from node1's pg_wal"
    node1.crash()

    node2.start()
    harness.wait_until(lambda: node2.role() == "primary", 90, "node2 to lead")
    node2.sql("INSERT INTO t VALUES (-2, 'timeline 2')")
    node1.start()
    cluster.wait_for_streaming(["node1"], 120)
    text = node1.log_text()
    assert "rewound onto the leader's timeline" in text, text[-3000:]
    assert "cloning" not in text.split("rewound onto")[0][-2000:], "rejoined by pg_rewind, not a new copy"
    assert node1.sql("SELECT count(*) FROM t WHERE id = -2") == [(1,)]


def test_a_new_cluster_bootstrapped_from_a_backup_holds_exactly_what_was_committed_before_its_target(
        make_cluster, base_dir):
    conf, _repo = repository(base_dir, "pitr")
    origin = make_cluster("pitrsource")
    a1 = origin.add("a1", extra={"postgresql": {"archive": {"pgbackrest": {"stanza": "main", "config": conf}}}})
    origin.wait_for_primary(60)
    harness.wait_until(lambda: "stanza main created and checked" in a1.log_text(), 60, "the stanza")
    a1.sql("CREATE TABLE t (id int, batch text)")
    done = backrest(conf, a1, "backup", "--type=full")
    assert done.returncode == 0, done.stdout + done.stderr
    # pgBackRest restores the newest backup that stopped before the target, comparing whole
    # seconds: a target in the backup's last second finds none ("unable to find backup set").
    time.sleep(2)
    a1.sql("INSERT INTO t SELECT g, 'before' FROM generate_series(1, 100) g")
    target = a1.sql("SELECT now()")[0][0]          # after the commit, on the server's clock
    time.sleep(1.5)
    a1.sql("INSERT INTO t SELECT g, 'after' FROM generate_series(101, 200) g")
    a1.sql("SELECT pg_switch_wal()")
    harness.wait_until(lambda: a1.api("/status")[1]["archiver"]["pending_segments"] == 0, 30, "a1 archiving")

    copy = make_cluster("pitrcopy")
    extra = {"postgresql": {"bootstrap": {"method": "pgbackrest", "stanza": "main", "config": conf,
                                          "recovery_target_time": target.isoformat()},
                            "archive": {"pgbackrest": {"stanza": "copy", "config": conf}},
                            "create_replica_methods": ["pgbackrest", "basebackup"]}}
    b1 = copy.add("b1", extra=extra)
    copy.wait_for_primary(120)
    assert b1.sql("SELECT batch, count(*) FROM t GROUP BY batch") == [("before", 100)]
    b1.sql("INSERT INTO t VALUES (-1, 'the copy is writable')")
    harness.wait_until(lambda: "stanza copy created and checked" in b1.log_text(), 60, "the copy's own stanza")
    assert "pgBackRest's recovery settings removed" in b1.log_text()
    assert "restore_command" not in open(os.path.join(b1.data_dir, "postgresql.auto.conf")).read()

    # Its second member: the copy's stanza has no backup yet, so the restore fails and pg_basebackup copies b1.
    b2 = copy.add("b2", extra=extra)
    copy.wait_for_streaming(["b2"], 120)
    assert "creating the replica with pgbackrest failed" in b2.log_text()
    harness.wait_until(lambda: b2.sql("SELECT count(*) FROM t") == [(101,)], 20, "b2 to have the copy's rows")

    # A third cluster misconfigured to archive into the origin's stanza: pgBackRest refuses its
    # stanza, and its replica, offered the origin's backup, sees another system identifier,
    # removes it and copies its own leader instead.
    wrong = make_cluster("wrongstanza")
    misconfigured = {"postgresql": {"archive": {"pgbackrest": {"stanza": "main", "config": conf}},
                                    "create_replica_methods": ["pgbackrest", "basebackup"]}}
    c1 = wrong.add("c1", extra=misconfigured)
    wrong.wait_for_primary(60)
    harness.wait_until(lambda: "ERROR: pgBackRest: pgbackrest stanza-create failed" in c1.log_text(), 60,
                       "the refused stanza")
    c1.sql("CREATE TABLE mine AS SELECT 1 AS v")
    c2 = wrong.add("c2", extra=misconfigured)
    wrong.wait_for_streaming(["c2"], 120)
    assert "the repository's backup is of another cluster" in c2.log_text()
    assert c2.sql("SELECT v FROM mine") == [(1,)]

    # The origin is untouched: its stanza still checks, its rows all there.
    assert a1.sql("SELECT count(*) FROM t") == [(200,)]
    check = backrest(conf, a1, "check")
    assert check.returncode == 0, check.stdout + check.stderr
