#!/usr/bin/env python3
"""Standby cluster benchmark: replication delay to a second site, and moving the primary site.

Brings up etcd, site A (two members behind the shipped haproxy example) and site B, a standby
cluster of A through that haproxy (two members: the standby leader streams from A, the other from
it). Measures:

  delay          --samples rows, one at a time, committed on A's primary through haproxy; seconds
                 until each is visible on B's standby leader and on B's cascaded member (polled
                 every 2 ms on open connections; a light load: nothing else writes)
  retarget       a crash of A's primary (SIGKILL of governor and PostgreSQL): seconds until A's
                 new primary accepts writes, until B's leader streams A's new timeline (haproxy's
                 check moves, B's WAL receiver reconnects), and the delay of the next row
  switch         --rounds planned moves of the primary site (demote-cluster on the primary site,
                 then promote-cluster on the standby site, each with --wait): seconds of each
                 command, and the window with no writable primary on either site (from the old
                 primary's last writable sample to the new one's first, sampled every 10 ms)

Usage (as root): bench/standby.py [--samples 200] [--rounds 3] [--output FILE]
Writes JSON (default bench/results/standby-<time>.json) and prints a summary.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import sys
import threading
import time
from typing import Dict, List, Optional

import psycopg2

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from bench import report  # noqa: E402
from tests import harness  # noqa: E402
from tests.test_standby_cluster import sender_port, standby_leader  # noqa: E402


def connect(port: int):
    conn = psycopg2.connect(host="127.0.0.1", port=port, user="postgres", dbname="postgres",
                            password=harness.SUPERUSER_PASSWORD, connect_timeout=2)
    conn.autocommit = True
    return conn


def visible_after(writer, readers: List, n: int) -> List[float]:
    """Commit row n through `writer`; seconds until each reader sees it."""
    with writer.cursor() as cur:
        cur.execute("INSERT INTO site VALUES (%s)", (n,))
    committed = time.monotonic()
    seen: List[Optional[float]] = [None] * len(readers)
    while None in seen:
        for i, reader in enumerate(readers):
            if seen[i] is None:
                with reader.cursor() as cur:
                    cur.execute("SELECT 1 FROM site WHERE n = %s", (n,))
                    if cur.fetchone():
                        seen[i] = time.monotonic() - committed
        if time.monotonic() - committed > 60:
            raise RuntimeError(f"row {n} not replicated within 60 s")
        time.sleep(0.002)
    return [s for s in seen if s is not None]


class Writable(threading.Thread):
    """Every 10 ms: which of the nodes accepts writes (pg_is_in_recovery() false)."""

    def __init__(self, nodes: List[harness.Node]):
        super().__init__(daemon=True)
        self.nodes, self.samples, self.halt = nodes, [], threading.Event()

    def run(self) -> None:
        while not self.halt.is_set():
            now = time.monotonic()
            self.samples.append((now, {n.name for n in self.nodes if harness.PrimaryWatch.writable(n)}))
            self.halt.wait(0.01)


def summary(values: List[float]) -> Dict[str, float]:
    ordered = sorted(values)
    return {"median_ms": round(statistics.median(ordered) * 1000, 2),
            "p95_ms": round(ordered[int(0.95 * (len(ordered) - 1))] * 1000, 2),
            "max_ms": round(ordered[-1] * 1000, 2), "samples": len(ordered)}


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--samples", type=int, default=200, help="rows timed for the delay (default 200)")
    p.add_argument("--rounds", type=int, default=3, help="planned moves of the primary site (default 3)")
    p.add_argument("--output", help="JSON result file")
    args = p.parse_args()

    base = harness.new_base_dir()
    harness.become_subreaper()
    etcd = harness.Etcd(base).start()
    src = harness.make_source_copy(base)
    a = harness.TestCluster(etcd, base, src, "benchsitea")
    b = harness.TestCluster(etcd, base, src, "benchsiteb")
    results: Dict[str, object] = {}
    proxy = None
    try:
        a1 = a.add("a1")
        a.wait_for_primary(60)
        a.add("a2")
        a.wait_for_streaming(["a2"], 120)
        proxy = harness.Haproxy(a, base)
        a1.sql("CREATE TABLE site (n bigint PRIMARY KEY)")
        b1, b2 = b.add("b1", start=False), b.add("b2", start=False)
        made = harness.governorctl(b1, "demote-cluster", "--host", "127.0.0.1", "--port", str(proxy.rw_port),
                                   "--force")
        assert made.returncode == 0, made.stderr
        b1.start()
        b2.start()
        lead = standby_leader(b)
        other = b2 if lead is b1 else b1
        harness.wait_until(lambda: sender_port(other) == lead.port, 120, "B's cascade")
        harness.wait_until(lambda: sender_port(lead) == proxy.rw_port, 60, "B's leader streaming")

        writer, readers = connect(proxy.rw_port), [connect(lead.port), connect(other.port)]
        delays = [visible_after(writer, readers, n) for n in range(1, args.samples + 1)]
        results["delay"] = {"standby_leader": summary([d[0] for d in delays]),
                            "cascaded_member": summary([d[1] for d in delays])}
        print(f"delay: {json.dumps(results['delay'])}", flush=True)
        writer.close()

        crashed = time.monotonic()
        a1.crash()
        new = a.wait_for_primary(60)
        writable = time.monotonic() - crashed
        harness.wait_until(lambda: lead.sql("SELECT received_tli FROM pg_stat_wal_receiver WHERE status = "
                                            "'streaming'") == [(2,)], 120, "B's leader on A's new timeline")
        streaming = time.monotonic() - crashed
        retarget = visible_after(connect(new.port), [readers[0]], args.samples + 1)[0]
        results["retarget"] = {"crash_to_new_primary_seconds": round(writable, 2),
                               "crash_to_standby_leader_streaming_new_timeline_seconds": round(streaming, 2),
                               "next_row_ms": round(retarget * 1000, 2)}
        print(f"retarget: {json.dumps(results['retarget'])}", flush=True)
        for r in readers:
            r.close()
        a1.start()
        a.wait_for_streaming(["a1"], 120)

        sites = {"A": (a, new), "B": (b, lead)}
        primary_site, standby_site = "A", "B"
        rounds = []
        watch = Writable([*a.nodes.values(), *b.nodes.values()])
        watch.start()
        for _ in range(args.rounds):
            old_leader, new_leader = sites[primary_site][1], sites[standby_site][1]
            t0 = time.monotonic()
            out = harness.governorctl(old_leader, "demote-cluster", "--host", "127.0.0.1", "--port",
                                      str(new_leader.port), "--force", "--wait", "120")
            assert out.returncode == 0, out.stderr
            t1 = time.monotonic()
            out = harness.governorctl(new_leader, "promote-cluster", "--force", "--wait", "120")
            assert out.returncode == 0, out.stderr
            harness.wait_until(lambda n=new_leader: n.role() == "primary", 30, "the promoted leader")
            t2 = time.monotonic()
            time.sleep(0.5)
            last_old = max(t for t, names in watch.samples if old_leader.name in names and t <= t2)
            first_new = min(t for t, names in watch.samples if new_leader.name in names and t >= t1)
            both = [t for t, names in watch.samples if len(names) > 1]
            assert not both, f"two writable primaries at {both[:3]}"
            rounds.append({"from": primary_site, "to": standby_site, "demote_cluster_seconds": round(t1 - t0, 3),
                           "promote_cluster_seconds": round(t2 - t1, 3),
                           "no_writable_primary_seconds": round(first_new - last_old, 3)})
            print(f"switch: {json.dumps(rounds[-1])}", flush=True)
            primary_site, standby_site = standby_site, primary_site
            # the demoted site's leader follows the new primary before the next move
            harness.wait_until(lambda o=old_leader, n=new_leader: sender_port(o) == n.port, 60,
                               "the demoted site following")
        watch.halt.set()
        results["switch"] = rounds
    finally:
        if proxy is not None:
            proxy.stop()
        a.teardown()
        b.teardown()
        etcd.stop()
        harness.stop_all_processes()
        shutil.rmtree(base, ignore_errors=True)

    settings = {"ttl": 10, "loop_wait": 1, "network": "loopback, one etcd, two scopes",
                "sites": "A: 2 members + haproxy; B: standby cluster of A through haproxy, 2 members"}
    report.write("standby", settings, results, args.output)
    return 0


if __name__ == "__main__":
    sys.exit(main())
