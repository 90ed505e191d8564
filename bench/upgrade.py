#!/usr/bin/env python3
"""Major-upgrade benchmark: `governorctl upgrade --to 17` of a three-member cluster running
PostgreSQL 15 on a Debian 12 host upgraded to 13 (postgresql-15 kept, postgresql-17 installed),
governor from the .deb, the members in one booted container (tests/system.py), a database of
--scale (pgbench; scale 70 is about 1 GB) and a writer through haproxy (the shipped example, on
this host) inserting every --interval seconds:

  seconds             from the command to `done`
  write_gap_seconds   the longest time between two writes acknowledged through haproxy
  replicas            per replica: seconds from the command until it answers as a replica on 17
  leader_bytes_sent   bytes the leader sent on its PostgreSQL port meanwhile (WAL streaming; and
                      clones, for a replica that could not link)
  replicas_fetched    per replica: what its governor says it linked from its own old data directory
                      and received from the leader's seed (the new catalogs) over the API
  pg_upgrade_seconds  pg_upgrade --link on the leader

Usage (as root): bench/upgrade.py [--scale 70] [--interval 0.05] [--output FILE]
Writes JSON (default bench/results/upgrade-<time>.json) and prints a summary.
"""
from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import sys
import threading
import time
from types import SimpleNamespace
from typing import Dict

import psycopg2

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from bench import report  # noqa: E402
from bench.clone import SenderBytes  # noqa: E402
from tests import debs, harness, system  # noqa: E402
from tests.test_logical_failover import role, sql  # noqa: E402

NAMES = ("u1", "u2", "u3")


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--scale", type=int, default=70, help="pgbench scale of the database (default 70, ~1 GB)")
    p.add_argument("--interval", type=float, default=0.05, help="seconds between two writes (default 0.05)")
    p.add_argument("--output", help="JSON result file")
    args = p.parse_args()

    base = harness.new_base_dir()
    harness.become_subreaper()
    etcd = harness.Etcd(base).start()
    deb = debs.build()
    m = system.Machine(system.upgraded_rootfs(), binds=[], ro_binds=[(os.path.dirname(deb), "/mnt/debs")],
                       log_path=os.path.join(base, "nspawn.log"))
    proxy = None
    try:
        m.run("env", "DEBIAN_FRONTEND=noninteractive", "apt-get", "install", "-y", "-q",
              f"/mnt/debs/{os.path.basename(deb)}", timeout=300)
        ports: Dict[str, dict] = {}
        for name in NAMES:
            cfg, ports[name] = system.node_config(etcd.endpoint, "upgradebench", name,
                                                  f"/var/lib/postgresql/bench-{name}", loop_wait=1)
            # The host ran Debian 12 when the cluster was made: its first member bootstraps 15.
            cfg["postgresql"]["bin_dir"] = "/usr/lib/postgresql/15/bin"
            m.install_config(f"/etc/governor/{name}.d/local.yml", cfg)
        m.run("systemctl", "start", "governor@u1")
        harness.wait_until(lambda: role(m, ports["u1"]["pg"]) == "primary", 120, "u1 to bootstrap")
        pgbench = ["env", f"PGPASSWORD={harness.SUPERUSER_PASSWORD}", "/usr/lib/postgresql/15/bin/pgbench",
                   "-h", "127.0.0.1", "-p", str(ports["u1"]["pg"]), "-U", "postgres"]
        m.run(*pgbench, "-i", "-s", str(args.scale), "-q", "postgres", timeout=3600)
        size = int(sql(m, ports["u1"]["pg"], "SELECT pg_database_size('postgres')")[0])
        m.run("systemctl", "start", "governor@u2", "governor@u3")
        harness.wait_until(lambda: all(role(m, ports[n]["pg"]) == "replica" for n in NAMES[1:]), 3600, "replicas")
        for name in NAMES:      # README: the binaries follow PG_VERSION; governor restarted, PostgreSQL kept
            m.run("sed", "-i", "/bin_dir:/d", f"/etc/governor/{name}.d/local.yml")
            m.run("sh", "-c", f"touch /run/governor-{name}/restart-keep-postgres && systemctl restart governor@{name}")
        harness.wait_until(lambda: m.run("governorctl", "-c", "/etc/governor/u1.d", "upgrade", "--to", "17", "--check",
                                         check=False, timeout=600).returncode == 0, 60, "the checks to pass")
        cluster = SimpleNamespace(scope="upgradebench", nodes={
            n: SimpleNamespace(name=n, port=ports[n]["pg"], api_port=ports[n]["api"]) for n in NAMES})
        proxy = harness.Haproxy(cluster, base)

        def through_haproxy():
            try:
                return proxy.connect(proxy.rw_port)
            except psycopg2.Error:
                return None
        conn = harness.wait_until(through_haproxy, 30, "haproxy to route to the leader")
        with conn.cursor() as cur:
            cur.execute("CREATE TABLE writes (id int PRIMARY KEY, at timestamptz DEFAULT now())")
        conn.close()
        writer = harness.WriteClient(f"host=127.0.0.1 port={proxy.rw_port} user=postgres dbname=postgres "
                                     f"password={harness.SUPERUSER_PASSWORD} connect_timeout=1", "writes",
                                     interval=args.interval)
        writer.start()
        time.sleep(3)
        sender = SenderBytes(SimpleNamespace(port=ports["u1"]["pg"]))
        sender.start()
        on_17: Dict[str, float] = {}
        began = time.monotonic()
        watching = threading.Event()

        def watch() -> None:
            while not watching.is_set() and len(on_17) < 2:
                for n in NAMES[1:]:
                    if n not in on_17 and sql(m, ports[n]["pg"], "SELECT current_setting('server_version_num')::int "
                                              ">= 170000 AND pg_is_in_recovery()") == ["t"]:
                        on_17[n] = round(time.monotonic() - began, 1)
                time.sleep(0.2)
        watcher = threading.Thread(target=watch, daemon=True)
        watcher.start()
        done = m.run("governorctl", "-c", "/etc/governor/u1.d", "upgrade", "--to", "17", check=False, timeout=7200)
        seconds = time.monotonic() - began
        harness.wait_until(lambda: len(on_17) == 2, 3600, "both replicas on 17")
        watching.set()
        time.sleep(2)
        writer.halt.set()
        writer.join(30)
        sent = sender.total()
        acked = sorted(at for _id, _start, at in writer.acked)
        gap = max((b - a for a, b in zip(acked, acked[1:])), default=0.0)
        have = {int(v) for v in sql(m, ports["u1"]["pg"], "SELECT id FROM writes")}
        lost = sorted({i for i, _s, _a in writer.acked} - have)
        record = json.loads(m.run("governorctl", "-c", "/etc/governor/u1.d", "list", "--format", "json").stdout)
        fetched = {}
        for n in NAMES[1:]:
            said = re.search(r"made in ([\d.]+) s: (\d+) files \(([\d.]+) MiB\) linked .*?, (\d+) \(([\d.]+) MiB\) "
                             r"received", m.journal(f"governor@{n}"))
            fetched[n] = {"seconds": float(said.group(1)), "files_linked": int(said.group(2)),
                          "mib_linked": float(said.group(3)), "files_received": int(said.group(4)),
                          "mib_received": float(said.group(5))} if said else "cloned (no link)"
        results = {"ok": done.returncode == 0, "seconds": round(seconds, 1), "write_gap_seconds": round(gap, 2),
                   "writes_acknowledged": len(acked), "acknowledged_writes_lost": len(lost),
                   "replicas_on_17_seconds": on_17, "leader_bytes_sent": sent,
                   "leader_mib_sent": round(sent / 2**20, 1), "replicas_fetched": fetched,
                   "steps": done.stdout.strip().splitlines()[1:],
                   "members": [(r["member"], r["role"], r["pg_version"]) for r in record["members"]]}
        print(json.dumps(results, indent=2))
        settings = {"database_bytes": size, "pgbench_scale": args.scale, "write_interval": args.interval,
                    "members": 3, "host": "one booted Debian 13 container (upgraded from 12), loopback",
                    "replicas": "hard-linked from their own old data directory, new catalogs from the leader's "
                                "seed over the API (pg_basebackup clone as the fallback)"}
        report.write("upgrade", settings, results, args.output)
        return 0 if results["ok"] and not lost else 1
    finally:
        if proxy is not None:
            proxy.stop()
        m.run("systemctl", "stop", *(f"governor@{n}" for n in NAMES), check=False)
        m.poweroff()
        etcd.stop()
        harness.stop_all_processes()
        shutil.rmtree(base, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
