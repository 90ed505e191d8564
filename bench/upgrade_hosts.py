#!/usr/bin/env python3
"""Major upgrade on three hosts, as an operator meets it: three booted Debian 12 hosts deployed as
README's "Three hosts" says (tests/hosts.py), a pgbench database of --scale (70 is about 1 GB)
and a client writing through haproxy on a fourth host every --interval seconds; each host moved
to Debian 13 by apt in turn (README's "A new Debian release"), then `governorctl upgrade --to 17`:

  debian_upgrade_seconds      per host: README's block, until the cluster and etcd are healthy
  debian_write_gap_seconds    the longest gap between two acknowledged writes meanwhile
  seconds                     from `governorctl upgrade --to 17` to `done`
  write_gap_seconds           the longest gap between two acknowledged writes meanwhile
  replicas_streaming_seconds  per replica: until it streams from the leader on 17
  replicas_received_mib       per replica: what its host received over the network until then
  replicas_fetched            per replica: what its governor says it linked and received

Usage (as root): bench/upgrade_hosts.py [--scale 70] [--interval 0.05] [--output FILE]
Writes JSON (default bench/results/upgrade-hosts-<time>.json) and prints a summary.
"""
from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from bench import report  # noqa: E402
from tests import debs, harness, hosts  # noqa: E402


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--scale", type=int, default=70, help="pgbench scale of the database (default 70, ~1 GB)")
    p.add_argument("--interval", type=float, default=0.05, help="seconds between two writes (default 0.05)")
    p.add_argument("--output", help="JSON result file")
    args = p.parse_args()

    base = harness.new_base_dir()
    harness.become_subreaper()
    try:
        deb = debs.build()
        with hosts.three_hosts(os.path.join(base, "hosts"), 250, [(os.path.dirname(deb), "/mnt/debs")],
                               archive=True) as (lan, machines, proxy, password, _started):
            leader = harness.wait_until(lambda: hosts.primary(machines), 180, "a primary")
            replicas = [m for m in machines if m is not leader]
            leader.run("runuser", "-u", "postgres", "--", "pgbench", "-i", "-s", str(args.scale), "-q", "postgres",
                       timeout=3600)
            size = int(leader.run("runuser", "-u", "postgres", "--", "psql", "-XAtc",
                                  "SELECT pg_database_size('postgres')").stdout)
            end = leader.run("runuser", "-u", "postgres", "--", "psql", "-XAtc",
                             "SELECT pg_current_wal_lsn()").stdout.strip()
            harness.wait_until(lambda: all(hosts.replayed(m, end) for m in replicas), 3600, "the replicas")

            client = hosts.writer(proxy, "debian_writes")
            client.interval = args.interval
            debian = hosts.debian_upgrade(machines, leader)
            client.stop()
            debian_gap = hosts.longest_gap(client, 0)

            harness.wait_until(lambda: leader.run("governorctl", "upgrade", "--to", "17", "--check", check=False,
                                                  timeout=600).returncode == 0, 60, "the checks to pass")
            client = hosts.writer(proxy, "upgrade_writes")
            client.interval = args.interval
            watch = harness.WritableCount([(m.address, 5432) for m in machines], password)
            watch.start()
            time.sleep(3)
            again = hosts.StreamingAgain(lan, replicas, password)
            again.start()
            done = leader.run("governorctl", "upgrade", "--to", "17", check=False, timeout=7200)
            seconds = time.monotonic() - again.since
            again.join(600)
            time.sleep(2)
            client.stop()
            watch.stopped.set()
            watch.join(10)
            lost = hosts.lost_writes(proxy, client, leader)
            fetched = {}
            for m in replicas:
                said = re.search(r"made in ([\d.]+) s: (\d+) files \(([\d.]+) MiB\) linked .*?, (\d+) \(([\d.]+) "
                                 r"MiB\) received", m.journal())
                fetched[m.name] = {"seconds": float(said.group(1)), "files_linked": int(said.group(2)),
                                   "mib_linked": float(said.group(3)), "files_received": int(said.group(4)),
                                   "mib_received": float(said.group(5))} if said else "cloned (no link)"
            results = {
                "ok": done.returncode == 0 and not lost and watch.most <= 1,
                "debian_upgrade_seconds": {n: round(s, 1) for n, s in debian.items()},
                "debian_write_gap_seconds": round(debian_gap, 2),
                "seconds": round(seconds, 1), "write_gap_seconds": round(hosts.longest_gap(client, again.since), 2),
                "writes_acknowledged": len(client.acked), "acknowledged_writes_lost": len(lost),
                "most_writable_at_once": watch.most,
                "replicas_streaming_seconds": {n: round(s, 1) for n, s in again.after.items()},
                "replicas_received_mib": {n: round(b / 2**20, 1) for n, b in again.got.items()},
                "replicas_fetched": fetched, "steps": done.stdout.strip().splitlines()[1:]}
            print(json.dumps(results, indent=2))
            settings = {"database_bytes": size, "pgbench_scale": args.scale, "write_interval": args.interval,
                        "hosts": "three booted Debian 12 containers on a bridge, each its own network namespace, "
                                 "deployed as README says; haproxy on a fourth; moved to Debian 13 by apt"}
            report.write("upgrade-hosts", settings, results, args.output)
            return 0 if results["ok"] else 1
    finally:
        harness.stop_all_processes()
        shutil.rmtree(base, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
