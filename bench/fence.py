#!/usr/bin/env python3
"""Fence benchmark: how long a leader's PostgreSQL stays writable after its governor fails, against
the moment its lock expires. Real etcd + 2 governor/PostgreSQL nodes on loopback, no systemd (the
supervising parent and the lock fence thread are what is measured; systemd's watchdog + fence is
covered by tests/test_system.py).

  freeze     SIGSTOP of the leader's HA loop process (a hung governor)
  kill-loop  SIGKILL of the leader's HA loop process (a crashed governor)
  kill-main  SIGKILL of governor's main PID, the supervising parent (`kill -9 $(cat pidfile)`)
  kill-all   SIGKILL of every governor process at once (`pkill -9 -f governor`, the OOM killer)
  stop-all   SIGSTOP of every governor process for ttl + 5 s, then SIGCONT: nothing of governor
             runs on the leader's host; the replica must not be promoted meanwhile

Every 100 ms a sampler asks each server directly whether it accepts writes
(pg_is_in_recovery() = false) and who holds the leader key. Per run:
  writable_after    last sample at which the old leader accepted writes, from the fault
  lock_gone_after   first sample at which the leader key no longer named it
  margin            lock_gone_after - writable_after (must be > 0)
  promoted_after    first sample at which the replica accepted writes
  two_primaries     samples with two writable servers (must be 0)

Usage (as root): bench/fence.py [--runs 3] [--ttl 10] [--loop-wait 1] [--retry-timeout 3]
                                [--kinds freeze,kill-loop,kill-main,kill-all,stop-all] [--output FILE]
Writes a JSON file (default bench/results/fence-<time>.json) and prints a summary.
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

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from tests import harness  # noqa: E402


def one_run(etcd: harness.Etcd, base: str, src: str, kind: str, args: argparse.Namespace, n: int) -> dict:
    cluster = harness.TestCluster(etcd, base, src, f"fence-{kind}-{n}-{os.getpid()}")
    timing = {"loop_wait": args.loop_wait, "retry_timeout": args.retry_timeout, "etcd": {"ttl": args.ttl}}
    try:
        for name in ("node1", "node2"):
            cluster.add(name, extra=timing)
        leader = cluster.wait_for_primary(120)
        replica = next(x for x in cluster.nodes.values() if x is not leader)
        cluster.wait_for_streaming([replica.name], 120)
        watch = harness.PrimaryWatch(cluster)
        watch.start()
        time.sleep(2)
        loop = leader.loop_pid()
        fault = time.monotonic()
        promoted_while_stopped = None
        if kind in ("freeze", "kill-loop"):
            os.kill(loop, signal.SIGSTOP if kind == "freeze" else signal.SIGKILL)
        elif kind == "kill-main":
            leader.signal(signal.SIGKILL)
        else:
            leader.signal_all(signal.SIGKILL if kind == "kill-all" else signal.SIGSTOP)
        try:
            if kind == "stop-all":
                time.sleep(args.ttl + 5)
                promoted_while_stopped = replica.role() == "primary"
                leader.signal_all(signal.SIGCONT)
                harness.wait_until(lambda: cluster.leader_name() and cluster.nodes[cluster.leader_name()].role()
                                   == "primary", 60, "a primary again")
            else:
                harness.wait_until(lambda: cluster.leader_name() == replica.name and replica.role() == "primary",
                                   args.ttl + 30, "the replica to take over")
            time.sleep(1)
        finally:
            watch.stop()
            if kind == "freeze":
                os.kill(loop, signal.SIGCONT)
        last_old = watch.last_writable(leader.name)
        gone = watch.leader_changed(leader.name, fault)
        new = watch.first_writable_after(replica.name, fault)
        result = {
            "kind": kind, "ttl": args.ttl,
            "writable_after": round(last_old - fault, 2) if last_old else None,
            "lock_gone_after": round(gone - fault, 2) if gone else None,
            "promoted_after": round(new - fault, 2) if new else None,
            "two_primaries": len(watch.two_primaries()),
        }
        if promoted_while_stopped is not None:
            result["promoted_while_stopped"] = promoted_while_stopped
        if last_old and gone:
            result["margin"] = round(gone - last_old, 2)
        return result
    finally:
        cluster.teardown()


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--runs", type=int, default=3)
    p.add_argument("--ttl", type=int, default=10)
    p.add_argument("--loop-wait", type=float, default=1)
    p.add_argument("--retry-timeout", type=float, default=3)
    p.add_argument("--kinds", default="freeze,kill-loop")
    p.add_argument("--output")
    args = p.parse_args()
    harness.become_subreaper()
    base = harness.new_base_dir()
    results = []
    try:
        etcd = harness.Etcd(base).start()
        src = harness.make_source_copy(base)
        for kind in args.kinds.split(","):
            for n in range(args.runs):
                result = one_run(etcd, base, src, kind, args, n)
                print(json.dumps(result), flush=True)
                results.append(result)
    finally:
        harness.stop_all_processes()
        shutil.rmtree(base, ignore_errors=True)
    summary = {}
    for kind in args.kinds.split(","):
        runs = [r for r in results if r["kind"] == kind]
        summary[kind] = {key: statistics.median(r[key] for r in runs if r.get(key) is not None)
                         for key in ("writable_after", "lock_gone_after", "margin", "promoted_after")
                         if any(r.get(key) is not None for r in runs)}
        summary[kind]["two_primaries"] = sum(r["two_primaries"] for r in runs)
        if kind == "stop-all":
            summary[kind]["promoted_while_stopped"] = sum(bool(r.get("promoted_while_stopped")) for r in runs)
        summary[kind]["min_margin"] = min((r["margin"] for r in runs if "margin" in r), default=None)
    out = args.output or os.path.join(os.path.dirname(os.path.abspath(__file__)), "results",
                                      f"fence-{time.strftime('%Y%m%d-%H%M%S')}.json")
    os.makedirs(os.path.dirname(out), exist_ok=True)
    with open(out, "w") as fh:
        json.dump({"args": vars(args), "runs": results, "summary": summary}, fh, indent=2)
    print(json.dumps(summary, indent=2))
    print(f"written to {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
