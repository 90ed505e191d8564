#!/usr/bin/env python3
"""Fleet benchmark (issue 38): N governor clusters of 3 members each, real governor daemons and
real PostgreSQL, on one etcd. Reports what each cluster costs etcd and the host while idle, the
leaders' lock renewal latency, one cluster's crash failover while the others idle, and an etcd
restart: every member reconnects, no false failover, how long until every cluster has a writable
leader again, the peak request rate meanwhile.

  etcd requests/s   etcd's own grpc_server_handled_total (the JSON gateway is gRPC inside), idle
  puts/s            etcd_mvcc_put_total
  CPU/cluster       user + system time of every governor process (PostgreSQL not counted) / N
  renewal p50/p99   the leaders' governor_dcs_request_duration_seconds{operation="lease keepalive"}
  failover          one leader SIGKILLed with its PostgreSQL: until another member of that cluster
                    takes writes
  etcd restart      etcd stopped for --outage seconds and started again: false failovers (leader
                    changes in any cluster), time until every cluster is healthy, peak requests/s

Usage (as root): bench/fleet.py [--clusters 10] [--idle 60] [--outage 5] [--output FILE]
Profile: the defaults (ttl 30, loop_wait 10, retry_timeout 10). Writes bench/results/fleet-<time>.json.
"""
from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import sys
import time
import urllib.request
from typing import Dict, List, Optional

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from tests import harness  # noqa: E402

PROFILE = {"loop_wait": 10, "retry_timeout": 10, "etcd": {"ttl": 30},
           "postgresql": {"parameters": {"shared_buffers": "8MB", "max_connections": 20}}}
NAMES = ("node1", "node2", "node3")


def etcd_metrics(etcd: harness.Etcd) -> Dict[str, float]:
    with urllib.request.urlopen(f"http://127.0.0.1:{etcd.port}/metrics", timeout=5) as resp:
        text = resp.read().decode()
    out = {"requests": 0.0, "puts": 0.0}
    for line in text.splitlines():
        if line.startswith("grpc_server_handled_total{"):
            out["requests"] += float(line.rsplit(" ", 1)[1])
        elif line.startswith("etcd_mvcc_put_total "):
            out["puts"] = float(line.rsplit(" ", 1)[1])
    return out


def governor_cpu(clusters: List[harness.TestCluster]) -> float:
    """Seconds of CPU used so far by every governor process (parents and loops)."""
    ticks = os.sysconf("SC_CLK_TCK")
    total = 0.0
    for c in clusters:
        for n in c.nodes.values():
            if not n.proc or n.proc.poll() is not None:
                continue
            for pid in [n.proc.pid] + harness.child_pids(n.proc.pid):
                try:
                    with open(f"/proc/{pid}/stat") as fh:
                        fields = fh.read().rsplit(")", 1)[1].split()
                    if "governor" in harness.cmdline(pid):
                        total += (int(fields[11]) + int(fields[12])) / ticks
                except OSError:
                    continue
    return total


def keepalive_buckets(node: harness.Node) -> Dict[float, float]:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{node.metrics_port}/metrics", timeout=3) as resp:
            text = resp.read().decode()
    except OSError:
        return {}
    found = {}
    for m in re.finditer(r'governor_dcs_request_duration_seconds_bucket\{le="([^"]+)",operation="lease keepalive"\} '
                         r'(\S+)', text):
        found[float(m.group(1))] = float(m.group(2))
    return found


def quantile(buckets: Dict[float, float], q: float) -> Optional[float]:
    """The upper bound of the bucket holding quantile q (Prometheus buckets are cumulative)."""
    if not buckets or not buckets.get(float("inf")):
        return None
    total = buckets[float("inf")]
    for bound in sorted(buckets):
        if buckets[bound] >= q * total:
            return bound
    return None


def healthy(c: harness.TestCluster) -> bool:
    try:
        name = c.leader_name()
    except OSError:
        return False
    node = c.nodes.get(name or "")
    return node is not None and harness.PrimaryWatch.writable(node)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--clusters", type=int, default=10)
    p.add_argument("--idle", type=float, default=60)
    p.add_argument("--outage", type=float, default=5)
    p.add_argument("--output")
    args = p.parse_args()
    harness.become_subreaper()
    base = harness.new_base_dir()
    result: dict = {"clusters": args.clusters, "members": 3 * args.clusters, "profile": PROFILE}
    clusters: List[harness.TestCluster] = []
    try:
        etcd = harness.Etcd(base).start()
        src = harness.make_source_copy(base)
        began = time.monotonic()
        for i in range(args.clusters):
            c = harness.TestCluster(etcd, base, src, f"fleet{i}-{os.getpid()}")
            clusters.append(c)
            c.add(NAMES[0], extra=PROFILE)
        for c in clusters:
            c.wait_for_primary(300)
            for name in NAMES[1:]:
                c.add(name, extra=PROFILE)
        for c in clusters:
            c.wait_for_streaming(list(NAMES[1:]), 600)
        result["bootstrap_s"] = round(time.monotonic() - began, 1)
        print(f"{args.clusters} clusters streaming after {result['bootstrap_s']}s", flush=True)
        time.sleep(15)
        m0, cpu0, t0 = etcd_metrics(etcd), governor_cpu(clusters), time.monotonic()
        time.sleep(args.idle)
        m1, cpu1, t1 = etcd_metrics(etcd), governor_cpu(clusters), time.monotonic()
        span = t1 - t0
        result["idle"] = {
            "etcd_requests_per_s": round((m1["requests"] - m0["requests"]) / span, 1),
            "etcd_requests_per_s_per_cluster": round((m1["requests"] - m0["requests"]) / span / args.clusters, 2),
            "etcd_puts_per_s": round((m1["puts"] - m0["puts"]) / span, 2),
            "governor_cpu_percent_per_cluster": round(100 * (cpu1 - cpu0) / span / args.clusters, 3)}
        merged: Dict[float, float] = {}
        for c in clusters:
            for bound, count in keepalive_buckets(c.nodes[c.leader_name()]).items():
                merged[bound] = merged.get(bound, 0.0) + count
        result["renewal_p50_s"], result["renewal_p99_s"] = quantile(merged, 0.5), quantile(merged, 0.99)
        print(json.dumps(result["idle"]),
              f"renewal p50 <= {result['renewal_p50_s']}s p99 <= {result['renewal_p99_s']}s", flush=True)

        # One cluster's leader host crashes while the others idle.
        victim = clusters[0]
        old = victim.nodes[victim.leader_name()]
        crashed = time.monotonic()
        old.crash()
        harness.wait_until(lambda: victim.leader_name() not in (None, old.name) and healthy(victim), 120,
                           "the crashed cluster's failover")
        result["failover_s"] = round(time.monotonic() - crashed, 2)
        print(f"failover of one cluster under fleet load: {result['failover_s']}s", flush=True)
        old.start()
        victim.wait_for_streaming([old.name], 120)

        # etcd restarts: nobody may fail over; every cluster healthy again.
        leaders = {c.scope: c.leader_name() for c in clusters}
        stopped = time.monotonic()
        etcd.stop()
        time.sleep(args.outage)
        etcd.restart()
        restarted = time.monotonic()
        peak, last = 0.0, etcd_metrics(etcd)["requests"]
        pending = set(range(len(clusters)))
        while pending and time.monotonic() - restarted < 300:
            time.sleep(1)
            now = etcd_metrics(etcd)["requests"]
            peak, last = max(peak, now - last), now
            pending = {i for i in pending if not healthy(clusters[i])}
        changed = [c.scope for c in clusters if c.leader_name() != leaders[c.scope]]
        result["etcd_restart"] = {"outage_s": round(restarted - stopped, 1),
                                  "all_healthy_after_s":
                                      round(time.monotonic() - restarted, 1) if not pending else None,
                                  "false_failovers": len(changed), "peak_requests_per_s": peak}
        print(json.dumps(result["etcd_restart"]), flush=True)
    finally:
        for c in clusters:
            c.teardown()
        harness.stop_all_processes()
        shutil.rmtree(base, ignore_errors=True)
    out = args.output or os.path.join(harness.REPO, "bench", "results",
                                      f"fleet-{time.strftime('%Y%m%d-%H%M%S')}.json")
    with open(out, "w") as fh:
        json.dump({"date": time.strftime("%Y-%m-%d"), **result}, fh, indent=1)
    print(f"written to {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
