#!/usr/bin/env python3
"""Replica creation benchmark: pg_basebackup from the primary versus a pgBackRest restore.

Brings up etcd and a primary with WAL archiving to a local pgBackRest repository, fills a
database of --scale (pgbench; scale 70 is about 1 GB), takes a full backup, writes for
then for each create_replica_methods choice writes for --write-seconds (WAL the new replica
must also get) and adds a replica, measuring until it streams from the primary:

  seconds        from starting its governor to streaming
  primary_bytes  bytes the primary sent on its PostgreSQL port (the kernel's bytes_sent of each
                 TCP connection, sampled every 0.1 s: a connection's last 0.1 s before it
                 closes is missed): the base backup and the WAL it served this replica

Usage (as root): bench/clone.py [--scale 70] [--write-seconds 10] [--output FILE]
Writes JSON (default bench/results/clone-<time>.json) and prints a summary.
"""
from __future__ import annotations

import argparse
import json
import os
import pwd
import re
import shutil
import subprocess
import sys
import threading
import time
from typing import Dict

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from bench import report  # noqa: E402
from tests import harness  # noqa: E402
from tests.test_pgbackrest import repository  # noqa: E402

PGBENCH = os.path.join(harness.PG_BIN, "pgbench")


class SenderBytes(threading.Thread):
    """Bytes the primary sent on its PostgreSQL port's TCP connections (the kernel's bytes_sent
    of each, from `ss`, sampled every 0.1 s; connections open at the start count from then)."""

    def __init__(self, primary: harness.Node):
        super().__init__(daemon=True)
        self.port = primary.port
        self.finished = threading.Event()
        self.before = self.sample()
        self.seen: Dict[str, int] = dict(self.before)

    def sample(self) -> Dict[str, int]:
        out = subprocess.run(["ss", "-tinH", "state", "established", f"( sport = :{self.port} )"],
                             capture_output=True, text=True, timeout=10).stdout
        found, peer = {}, None
        for line in out.splitlines():
            if not line[:1].isspace():
                peer = line.split()[-1]
            elif peer is not None:
                match = re.search(r"bytes_sent:(\d+)", line)
                if match:
                    found[peer] = int(match.group(1))
        return found

    def run(self) -> None:
        while not self.finished.is_set():
            for peer, sent in self.sample().items():
                self.seen[peer] = max(self.seen.get(peer, 0), sent)
            time.sleep(0.1)

    def total(self) -> int:
        self.finished.set()
        self.join(5)
        for peer, sent in self.sample().items():
            self.seen[peer] = max(self.seen.get(peer, 0), sent)
        return sum(sent - self.before.get(peer, 0) for peer, sent in self.seen.items())


def backup(conf: str, node: harness.Node) -> float:
    user = pwd.getpwnam(harness.RUN_AS)
    started = time.monotonic()
    subprocess.run(["pgbackrest", "--stanza=main", f"--config={conf}", f"--pg1-path={node.data_dir}",
                    f"--pg1-port={node.port}", f"--pg1-socket-path={node.dir}", "--type=full", "backup"],
                   check=True, capture_output=True, user=user.pw_uid, group=user.pw_gid, cwd=node.dir,
                   env={"PATH": "/usr/bin:/bin", "HOME": node.dir}, timeout=3600)
    return time.monotonic() - started


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--scale", type=int, default=70, help="pgbench scale of the database (default 70, ~1 GB)")
    p.add_argument("--write-seconds", type=int, default=10, help="pgbench writes after the backup (default 10)")
    p.add_argument("--output", help="JSON result file")
    args = p.parse_args()

    base = harness.new_base_dir()
    harness.become_subreaper()
    etcd = harness.Etcd(base).start()
    cluster = harness.TestCluster(etcd, base, harness.make_source_copy(base), "clonebench")
    conf, _repo = repository(base, "bench", "start-fast=y\ncompress-type=lz4\nprocess-max=2\n")
    archive = {"pgbackrest": {"stanza": "main", "config": conf}}
    results: Dict[str, Dict[str, float]] = {}
    env = {**os.environ, "PGPASSWORD": harness.SUPERUSER_PASSWORD}
    try:
        primary = cluster.add("node1", extra={"postgresql": {"archive": archive}})
        cluster.wait_for_primary(120)
        harness.wait_until(lambda: "stanza main created and checked" in primary.log_text(), 120, "the stanza")
        pgbench = [PGBENCH, "-h", "127.0.0.1", "-p", str(primary.port), "-U", "postgres"]
        subprocess.run([*pgbench, "-i", "-s", str(args.scale), "-q", "postgres"], check=True, env=env,
                       capture_output=True)
        size = primary.sql("SELECT pg_database_size('postgres')")[0][0]
        backup_seconds = backup(conf, primary)
        print(f"database {size / 2**20:.0f} MiB, full backup {backup_seconds:.1f}s", flush=True)
        for name, method in (("node2", "pgbackrest"), ("node3", "basebackup")):
            # WAL since the backup (and since the last clone, whose base backup ends with a WAL
            # switch): some archived, the rest only in the primary's current segment.
            before = primary.sql("SELECT pg_current_wal_lsn() - '0/0'")[0][0]
            subprocess.run([*pgbench, "-T", str(args.write_seconds), "-c", "2", "-n", "postgres"], check=True,
                           env=env, capture_output=True)
            written = int(primary.sql("SELECT pg_current_wal_lsn() - '0/0'")[0][0] - before)
            sender = SenderBytes(primary)
            sender.start()
            started = time.monotonic()
            cluster.add(name, extra={"postgresql": {"archive": archive, "create_replica_methods": [method]}})
            cluster.wait_for_streaming([name], 3600)
            seconds = time.monotonic() - started
            sent = sender.total()
            results[method] = {"seconds": round(seconds, 1), "primary_bytes": sent,
                               "primary_mib": round(sent / 2**20, 1),
                               "wal_written_before_mib": round(written / 2**20, 1)}
            print(f"{method}: {json.dumps(results[method])}", flush=True)
    finally:
        cluster.teardown()
        etcd.stop()
        harness.stop_all_processes()
        shutil.rmtree(base, ignore_errors=True)

    settings = {"database_bytes": size, "pgbench_scale": args.scale,
                "writes_before_each_clone": f"pgbench TPC-B-like, 2 clients, {args.write_seconds}s",
                "pgbackrest": "2.x, local posix repository, compress-type lz4, process-max 2",
                "network": "loopback", "full_backup_seconds": round(backup_seconds, 1)}
    report.write("clone", settings, results, args.output)
    return 0


if __name__ == "__main__":
    sys.exit(main())
