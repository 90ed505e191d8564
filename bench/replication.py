#!/usr/bin/env python3
"""Replication-mode benchmark: what each durability choice costs in throughput and latency.

Brings up etcd + 3 governor/PostgreSQL nodes on loopback, then for each synchronous_mode
(set cluster-wide with edit-config, as an operator would) runs pgbench's TPC-B-like script
against the primary and reports transactions per second and commit latency p50/p99 from
pgbench's per-transaction log.

  off      asynchronous
  on       each commit waits for 1 synchronous standby (FIRST 1)
  quorum   each commit waits for any 1 of the 2 standbys (ANY 1)

Usage (as root): bench/replication.py [--seconds 20] [--clients 4] [--modes off,on,quorum] [--output FILE]
Writes JSON (default bench/results/replication-<time>.json) and prints a summary.
"""
from __future__ import annotations

import argparse
import glob
import json
import os
import shutil
import statistics
import subprocess
import sys
from typing import Dict, List

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from bench import report  # noqa: E402
from tests import harness  # noqa: E402

PGBENCH = os.path.join(harness.PG_BIN, "pgbench")


def set_mode(cluster: harness.TestCluster, primary: harness.Node, mode: str) -> None:
    result = harness.governorctl(primary, "edit-config", "--set", f"synchronous_mode={mode}")
    if result.returncode != 0:
        raise RuntimeError(result.stderr)
    expected = {"off": "", "on": "FIRST 1", "quorum": "ANY 1"}[mode]
    harness.wait_until(lambda: primary.sql("SHOW synchronous_standby_names")[0][0].startswith(expected)
                       and (mode == "off" or len(primary.sql(
                           "SELECT 1 FROM pg_stat_replication WHERE sync_state IN ('sync', 'quorum')")) >= 1),
                       60, f"synchronous_mode {mode} in effect")


def run_pgbench(primary: harness.Node, workdir: str, seconds: int, clients: int) -> Dict[str, float]:
    for old in glob.glob(os.path.join(workdir, "pgbench_log.*")):
        os.unlink(old)
    env = {**os.environ, "PGPASSWORD": harness.SUPERUSER_PASSWORD}
    out = subprocess.run([PGBENCH, "-h", "127.0.0.1", "-p", str(primary.port), "-U", "postgres", "-c", str(clients),
                          "-j", str(clients), "-T", str(seconds), "-l", "-n", "postgres"],
                         capture_output=True, text=True, env=env, cwd=workdir, check=True).stdout
    tps = next(float(line.split("=")[1].split()[0]) for line in out.splitlines() if line.startswith("tps ="))
    latencies: List[float] = []
    for path in glob.glob(os.path.join(workdir, "pgbench_log.*")):
        with open(path) as fh:
            latencies += [int(line.split()[2]) / 1000.0 for line in fh if line.strip()]
    latencies.sort()
    return {"tps": round(tps, 1), "transactions": len(latencies),
            "latency_ms_p50": round(statistics.median(latencies), 3),
            "latency_ms_p99": round(latencies[int(len(latencies) * 0.99) - 1], 3)}


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--seconds", type=int, default=20, help="pgbench duration per mode (default 20)")
    p.add_argument("--clients", type=int, default=4, help="pgbench clients (default 4)")
    p.add_argument("--modes", default="off,on,quorum", help="comma separated (default off,on,quorum)")
    p.add_argument("--output", help="JSON result file")
    args = p.parse_args()
    modes = [m.strip() for m in args.modes.split(",") if m.strip()]
    if not modes or set(modes) - {"off", "on", "quorum"}:
        p.error("--modes: expected a comma separated list of off, on, quorum")

    base = harness.new_base_dir()
    harness.become_subreaper()
    etcd = harness.Etcd(base).start()
    cluster = harness.TestCluster(etcd, base, harness.make_source_copy(base), "replbench")
    results: Dict[str, Dict[str, float]] = {}
    try:
        for name in ("node1", "node2", "node3"):
            cluster.add(name)
        primary = cluster.wait_for_primary(120)
        cluster.wait_for_streaming([n for n in cluster.nodes if n != primary.name], 120)
        workdir = os.path.join(base, "pgbench")
        os.makedirs(workdir, exist_ok=True)
        env = {**os.environ, "PGPASSWORD": harness.SUPERUSER_PASSWORD}
        subprocess.run([PGBENCH, "-h", "127.0.0.1", "-p", str(primary.port), "-U", "postgres", "-i", "-s", "10",
                        "-q", "postgres"], check=True, env=env, capture_output=True)
        for mode in modes:
            set_mode(cluster, primary, mode)
            results[mode] = run_pgbench(primary, workdir, args.seconds, args.clients)
            print(f"{mode}: {json.dumps(results[mode])}", flush=True)
    finally:
        cluster.teardown()
        etcd.stop()
        harness.stop_all_processes()
        shutil.rmtree(base, ignore_errors=True)   # data directories and logs of the run

    settings = {"nodes": 3, "pgbench": f"TPC-B-like, scale 10, {args.clients} clients, "
                f"{args.seconds}s per mode", "network": "loopback",
                "fsync": "on (PostgreSQL default)"}
    report.write("replication", settings, results, args.output)
    return 0


if __name__ == "__main__":
    sys.exit(main())
