#!/usr/bin/env python3
"""Failover benchmark: real etcd + 3 governor/PostgreSQL nodes on loopback.

A client INSERTs every 100 ms, each time on a new connection, to whichever node is the
read-write primary (libpq multi-host with target_session_attrs=read-write, or through haproxy
with --haproxy-port). For each run it injects a fault into the leader and measures:

  crash     SIGKILL of the leader's governor and postmaster (a host crash); failover time is
            from the fault to the first INSERT that succeeds afterwards
  clean     SIGTERM of the leader's governor (a clean stop); same measure
  switchover `governorctl switchover` to a replica; the write gap is the longest time between two
            acknowledged INSERTs around it (the old leader rejoins by itself)
  rejoin    after each fault the old leader's governor is started again; time until it streams
            (rejoin_seconds, PostgreSQL's pg_stat_wal_receiver) and until its own /status says so
            (rejoin_reported_seconds)
  bootstrap from starting three governors on empty data directories to a primary with two
            streaming walsenders (bootstrap_seconds), and to all three reporting it on /status
  all streaming  switchover: from the command to the new primary with two streaming walsenders
  idle      before the faults, with the cluster healthy and idle: etcd requests and raft writes
            per second per node, counted by etcd itself (/metrics), for the adapter in use
  lost      acknowledged INSERTs missing on the new primary

Usage (as root; governor and PostgreSQL run as the postgres user):
  bench/failover.py [--runs 3] [--ttl 10] [--loop-wait 1] [--retry-timeout 3] [--haproxy-port 5000]
                    [--kinds crash,clean,switchover] [--synchronous-mode off|on|quorum]
                    [--etcd-api 2|3] [--idle-seconds 30] [--client-interval 0.1] [--keep]
                    [--output FILE]
Writes a JSON file (default bench/results/failover-<time>.json) and prints a summary.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import statistics
import sys
import time
import urllib.request
from typing import Dict, List, Optional

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from tests import harness  # noqa: E402


def etcd_counters(etcd: harness.Etcd) -> Dict[str, float]:
    """Requests etcd received over either API, and raft proposals committed (writes)."""
    with urllib.request.urlopen(f"http://127.0.0.1:{etcd.port}/metrics", timeout=5) as resp:
        text = resp.read().decode()
    counts = {"requests": 0.0, "writes": 0.0, "lease_keepalives": 0.0}
    for line in text.splitlines():
        if line.startswith("etcd_http_received_total") or line.startswith("grpc_server_started_total"):
            counts["requests"] += float(line.rsplit(" ", 1)[1])
            if 'grpc_method="LeaseKeepAlive"' in line:
                counts["lease_keepalives"] += float(line.rsplit(" ", 1)[1])
        elif line.startswith("etcd_server_proposals_committed_total"):
            counts["writes"] += float(line.rsplit(" ", 1)[1])
    return counts


def idle_cost(etcd: harness.Etcd, nodes: int, seconds: float) -> Dict[str, float]:
    before = etcd_counters(etcd)
    time.sleep(seconds)
    after = etcd_counters(etcd)
    return {f"{k}_per_second_per_node": round((after[k] - before[k]) / seconds / nodes, 2) for k in before}


def bootstrap_run(cluster: harness.TestCluster, timing: dict) -> Dict[str, float]:
    """Three governors started at once on empty data directories."""
    started = time.monotonic()
    for name in ("node1", "node2", "node3"):
        cluster.add(name, extra=timing)
    primary = cluster.wait_for_primary(120)
    harness.wait_until(lambda: primary.streaming_walsenders() == 2, 120, "two streaming walsenders", interval=0.05)
    at_postgres = time.monotonic() - started
    replicas = [n for n in cluster.nodes.values() if n is not primary]
    harness.wait_until(lambda: all(n.reports_streaming() for n in replicas), 120, "replicas to report streaming",
                       interval=0.05)
    return {"bootstrap_seconds": round(at_postgres, 3), "bootstrap_reported_seconds":
            round(time.monotonic() - started, 3)}


def wait_healthy(cluster: harness.TestCluster, timeout: float = 120) -> harness.Node:
    primary = cluster.wait_for_primary(timeout)
    cluster.wait_for_streaming([n for n in cluster.nodes if n != primary.name], timeout)
    return primary


def switchover_run(cluster: harness.TestCluster, client: harness.WriteClient) -> Dict[str, object]:
    old = wait_healthy(cluster)
    candidate = next(n for n in cluster.nodes.values() if n is not old)
    # governorctl refuses a candidate whose /status does not say streaming: wait for it to say so
    harness.wait_until(lambda: candidate.reports_streaming(), 60, f"{candidate.name} to report streaming")
    time.sleep(2)
    started = time.monotonic()
    result = harness.governorctl(old, "switchover", "--candidate", candidate.name)
    if result.returncode != 0:
        raise RuntimeError(f"switchover failed: {result.stderr}")
    new = cluster.wait_for_primary(60)
    harness.wait_until(lambda: new.streaming_walsenders() == 2, 120, "all members streaming", interval=0.05)
    all_streaming = time.monotonic() - started
    time.sleep(max(0.0, 2 - all_streaming))   # writes have resumed on the new primary for a while
    gap = client.longest_gap(since=started - 1)
    harness.wait_until(old.is_streaming, 120, f"{old.name} to rejoin", interval=0.1)
    acked = set(client.acked_ids())      # before the read: the client keeps writing meanwhile
    present = {r[0] for r in new.sql("SELECT id FROM bench_writes")}
    lost = sorted(acked - present)
    return {"kind": "switchover", "old_leader": old.name, "new_leader": new.name, **lost_detail(client, lost, started),
            "failover_seconds": round(gap, 3),
            "rejoin_seconds": round(time.monotonic() - started, 3),   # from the command, as replica
            "all_streaming_seconds": round(all_streaming, 3),
            "acknowledged_writes_lost": len(lost)}


def lost_detail(client: harness.WriteClient, lost: List[int], since: float) -> Dict[str, object]:
    """For acknowledged writes that are missing: when each was begun and acknowledged (seconds
    from the fault or command) and which server (port) acknowledged it."""
    if not lost:
        return {}
    with client.lock:
        times = {i: (began, acked) for i, began, acked in client.acked if i in set(lost)}
        ports = {i: client.server_of.get(i) for i in lost}
    return {"lost": [{"id": i, "began": round(times[i][0] - since, 3), "acked": round(times[i][1] - since, 3),
                      "server_port": ports[i]} for i in lost[:10]]}


def one_run(cluster: harness.TestCluster, client: harness.WriteClient, kind: str, ttl: float) -> Dict[str, object]:
    if kind == "switchover":
        return switchover_run(cluster, client)
    old = wait_healthy(cluster)
    time.sleep(2)  # steady state: every node has published its position
    fault = time.monotonic()
    if kind == "crash":
        old.crash()
    else:
        old.signal(signal.SIGTERM)
    first = client.first_ack_after(fault, ttl * 4)
    failover = (first - fault) if first else None
    if kind == "clean":
        old.proc.wait(60)
    new = cluster.wait_for_primary(60)
    restarted = time.monotonic()
    old.start()
    harness.wait_until(old.is_streaming, 120, f"{old.name} to rejoin", interval=0.05)
    rejoin = time.monotonic() - restarted
    harness.wait_until(lambda: old.reports_streaming(), 120, f"{old.name} to report streaming", interval=0.05)
    rejoin_reported = time.monotonic() - restarted
    with client.lock:
        acked = {i for i, _began, _acked in client.acked}
    present = {r[0] for r in new.sql("SELECT id FROM bench_writes")}
    lost = sorted(acked - present)
    return {"kind": kind, "old_leader": old.name, "new_leader": new.name, **lost_detail(client, lost, fault),
            "failover_seconds": round(failover, 3) if failover is not None else None,
            "rejoin_seconds": round(rejoin, 3), "rejoin_reported_seconds": round(rejoin_reported, 3),
            "acknowledged_writes_lost": len(lost)}


def summary(values: List[float]) -> Dict[str, Optional[float]]:
    values = [v for v in values if v is not None]
    if not values:
        return {"median": None, "min": None, "max": None}
    return {"median": round(statistics.median(values), 3), "min": round(min(values), 3),
            "max": round(max(values), 3)}


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--runs", type=int, default=3, help="runs per fault kind (default 3)")
    p.add_argument("--ttl", type=int, default=10)
    p.add_argument("--loop-wait", type=float, default=1)
    p.add_argument("--retry-timeout", type=float, default=3)
    p.add_argument("--haproxy-port", type=int,
                   help="start haproxy from haproxy/haproxy.cfg with its read-write port here, and write "
                        "through it instead of libpq multi-host")
    p.add_argument("--synchronous-mode", choices=("off", "on", "quorum"), default="off",
                   help="governor's synchronous_mode for the cluster (default off)")
    p.add_argument("--etcd-api", type=int, choices=(2, 3), default=3, help="the DCS adapter (default 3)")
    p.add_argument("--idle-seconds", type=float, default=30,
                   help="measure idle etcd traffic for this long before the faults (0: skip)")
    p.add_argument("--kinds", default="crash,clean,switchover",
                   help="comma separated: crash, clean, switchover (default: all three)")
    p.add_argument("--client-interval", type=float, default=0.1,
                   help="seconds between the client's INSERTs, each on a new connection (default 0.1); "
                        "the resolution of every gap measured")
    p.add_argument("--output", help="JSON result file")
    p.add_argument("--keep", action="store_true",
                   help="keep the run's directory (data directories, governor logs)")
    args = p.parse_args()
    kinds = [k.strip() for k in args.kinds.split(",") if k.strip()]
    if not kinds or set(kinds) - {"crash", "clean", "switchover"}:
        p.error("--kinds: expected a comma separated list of crash, clean, switchover")

    harness.ETCD_API = args.etcd_api
    base = harness.new_base_dir()
    harness.become_subreaper()
    etcd = harness.Etcd(base).start()
    cluster = harness.TestCluster(etcd, base, harness.make_source_copy(base), "bench")
    timing = {"loop_wait": args.loop_wait, "retry_timeout": args.retry_timeout,
              "synchronous_mode": args.synchronous_mode, "etcd": {"ttl": args.ttl, "api": args.etcd_api}}
    runs: List[Dict[str, object]] = []
    boot: Dict[str, float] = {}
    failed = True
    try:
        boot = bootstrap_run(cluster, timing)
        print(f"bootstrap: {json.dumps(boot)}", flush=True)
        primary = wait_healthy(cluster)
        primary.sql("CREATE TABLE bench_writes (id int PRIMARY KEY, at timestamptz DEFAULT now())")
        if args.haproxy_port:
            proxy = harness.Haproxy(cluster, base, rw_port=args.haproxy_port)
            harness.wait_until(lambda: proxy.server_port(args.haproxy_port) == primary.port, 15, "haproxy")
            dsn = f"host=127.0.0.1 port={args.haproxy_port}"
        else:
            nodes = list(cluster.nodes.values())
            dsn = (f"host={','.join('127.0.0.1' for _ in nodes)} port={','.join(str(n.port) for n in nodes)} "
                   "target_session_attrs=read-write")
        dsn += f" dbname=postgres user=postgres password={harness.SUPERUSER_PASSWORD} connect_timeout=1"
        idle = {}
        if args.idle_seconds > 0:
            time.sleep(3)
            idle = idle_cost(etcd, len(cluster.nodes), args.idle_seconds)
            print(f"idle: {json.dumps(idle)}", flush=True)
        client = harness.WriteClient(dsn, "bench_writes", interval=args.client_interval)
        client.start()
        for kind in kinds:
            for i in range(args.runs):
                result = one_run(cluster, client, kind, args.ttl)
                runs.append(result)
                print(f"{kind} run {i + 1}: {json.dumps(result)}", flush=True)
        client.halt.set()
        client.join(5)
        failed = False
    finally:
        cluster.teardown()
        etcd.stop()
        harness.stop_all_processes()
        if args.keep:
            print(f"kept the run's directory{' (a run failed)' if failed else ''}: {base}", file=sys.stderr)
        else:
            shutil.rmtree(base, ignore_errors=True)   # data directories and logs of the run

    route = "haproxy (haproxy/haproxy.cfg)" if args.haproxy_port else "libpq target_session_attrs=read-write"
    report = {
        "benchmark": "failover",
        "time": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "settings": {"ttl": args.ttl, "loop_wait": args.loop_wait, "retry_timeout": args.retry_timeout,
                     "nodes": 3, "client_interval_seconds": args.client_interval,
                     "synchronous_mode": args.synchronous_mode, "etcd_api": args.etcd_api,
                     "route": route},
        "notes": {"failover_seconds": "crash/clean: fault to the first acknowledged INSERT begun after it; "
                                  "switchover: the longest gap between two acknowledged INSERTs around it"},
        "summary": {
            kind: {
                "failover_seconds": summary([r["failover_seconds"] for r in runs if r["kind"] == kind]),
                **{figure: summary([r.get(figure) for r in runs if r["kind"] == kind])
                   for figure in ("rejoin_seconds", "rejoin_reported_seconds", "all_streaming_seconds")
                   if any(figure in r for r in runs if r["kind"] == kind)},
                "acknowledged_writes_lost": sum(r["acknowledged_writes_lost"] for r in runs if r["kind"] == kind),
            } for kind in kinds},
        "bootstrap": boot,
        "idle": idle,
        "runs": runs,
    }
    out = args.output or os.path.join(os.path.dirname(os.path.abspath(__file__)), "results",
                                      f"failover-{time.strftime('%Y%m%d-%H%M%S')}.json")
    os.makedirs(os.path.dirname(out), exist_ok=True)
    with open(out, "w") as fh:
        json.dump(report, fh, indent=2)
    print(json.dumps(report["summary"], indent=2))
    print(f"results written to {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
