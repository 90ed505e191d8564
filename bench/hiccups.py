#!/usr/bin/env python3
"""Hiccup benchmark (issue 38): what a small ttl costs when etcd or the host hiccups. Real etcd
(one member, or three for an election), 3 governor/PostgreSQL members on loopback reaching etcd
through a proxy that can add latency, a client writing every 50 ms to whichever server takes
writes, and a 100 ms watch of every server. Nothing crashes: every promotion is a false
failover, every time the leader stops taking writes a demotion.

  pause-1     etcd SIGSTOPped for 1 s (an fsync stall on the etcd host)
  pause-3     etcd SIGSTOPped for 3 s
  latency     for 15 s, each request chunk to etcd delayed 0.1-2 s (a congested network)
  election    the etcd raft leader of three killed, restarted 5 s later (an etcd leader election)
  cpu-hog     four busy processes on the 2 cores for 15 s (a loaded host)

Profiles: ttl 5 (loop_wait 1, retry_timeout 2), ttl 10 (loop_wait 1, retry_timeout 3), ttl 30 (the
defaults: loop_wait 10, retry_timeout 10). Per run: false_failovers (leader key changes),
demotions (the leader's server stopped taking writes), longest write gap, two_primaries (must be 0).

Usage (as root): bench/hiccups.py [--runs 1] [--ttls 5,10,30] [--kinds pause-1,pause-3,latency,election,cpu-hog]
                                  [--output FILE]
Writes a JSON file (default bench/results/hiccups-<time>.json) and prints a summary.
"""
from __future__ import annotations

import argparse
import json
import os
import queue
import random
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from typing import List, Optional, Tuple

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from tests import harness  # noqa: E402
from tests.etcdtrio import EtcdTrio  # noqa: E402

PROFILES = {5: {"loop_wait": 1, "retry_timeout": 2}, 10: {"loop_wait": 1, "retry_timeout": 3},
            30: {"loop_wait": 10, "retry_timeout": 10}}
KINDS = ("pause-1", "pause-3", "latency", "election", "cpu-hog")


class DelayProxy(threading.Thread):
    """TCP forwarder to etcd; while `spike` is set each chunk a client sends waits 0.1-2 s."""

    def __init__(self, targets: List[int]):
        super().__init__(daemon=True)
        self.targets = targets
        self.port = harness.free_port()
        self.spike = threading.Event()
        self.rng = random.Random(7)
        self.listener = socket.socket()
        self.listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.listener.bind(("127.0.0.1", self.port))
        self.listener.listen(128)

    def run(self) -> None:
        turn = 0
        while True:
            try:
                client, _ = self.listener.accept()
            except OSError:
                return
            upstream = None
            for i in range(len(self.targets)):      # the first member that accepts, in turn
                try:
                    target = self.targets[(turn + i) % len(self.targets)]
                    upstream = socket.create_connection(("127.0.0.1", target), 2)
                    break
                except OSError:
                    continue
            turn += 1
            if upstream is None:
                client.close()
                continue
            for a, b, delayed in ((client, upstream, True), (upstream, client, False)):
                threading.Thread(target=self._pipe, args=(a, b, delayed), daemon=True).start()

    def _pipe(self, a: socket.socket, b: socket.socket, delayed: bool) -> None:
        chunks: queue.Queue[Tuple[float, bytes]] = queue.Queue()

        def send() -> None:
            try:
                while True:
                    due, data = chunks.get()
                    time.sleep(max(0.0, due - time.monotonic()))
                    if not data:
                        return
                    b.sendall(data)
            except OSError:
                return
        sender = threading.Thread(target=send, daemon=True)
        sender.start()
        last_due = 0.0
        try:
            while True:
                data = a.recv(65536)
                delay = self.rng.uniform(0.1, 2.0) if delayed and self.spike.is_set() else 0.0
                last_due = max(last_due, time.monotonic() + delay)     # in order
                chunks.put((last_due, data))
                if not data:
                    break
        except OSError:
            chunks.put((0.0, b""))
        sender.join()
        for s in (a, b):
            try:
                s.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass

    def close(self) -> None:
        self.listener.close()


def raft_leader(trio: EtcdTrio) -> Optional[int]:
    import urllib.request
    for i, (client, _peer) in enumerate(trio.ports):
        try:
            req = urllib.request.Request(f"http://127.0.0.1:{client}/v3/maintenance/status", data=b"{}",
                                         method="POST", headers={"Content-Type": "application/json"})
            with urllib.request.urlopen(req, timeout=2) as resp:
                status = json.load(resp)
            if status.get("leader") == status.get("header", {}).get("member_id"):
                return i
        except OSError:
            continue
    return None


def hiccup(kind: str, etcd_proc: Optional[subprocess.Popen], proxy: DelayProxy, trio: Optional[EtcdTrio]) -> None:
    if kind.startswith("pause-"):
        os.kill(etcd_proc.pid, signal.SIGSTOP)
        time.sleep(float(kind.split("-")[1]))
        os.kill(etcd_proc.pid, signal.SIGCONT)
    elif kind == "latency":
        proxy.spike.set()
        time.sleep(15)
        proxy.spike.clear()
    elif kind == "election":
        leader = raft_leader(trio)
        assert leader is not None, "no etcd raft leader found"
        if leader == 0:                      # keep the keys readable for the watch
            trio.reader.port = trio.ports[1][0]
        trio.stop(leader)
        time.sleep(5)
        trio.start(leader)
    elif kind == "cpu-hog":
        hogs = [subprocess.Popen([sys.executable, "-c", "while True: pass"]) for _ in range(4)]
        time.sleep(15)
        for h in hogs:
            h.kill()
            h.wait()


def one_run(base: str, src: str, ttl: int, kind: str, n: int) -> dict:
    work = os.path.join(base, f"{kind}-{ttl}-{n}")
    os.makedirs(work, exist_ok=True)
    trio, etcd = None, None
    if kind == "election":
        trio = EtcdTrio(work)
        for i in range(3):
            trio.start(i)
        harness.wait_until(trio.healthy, 30, "a 3-member etcd")
        keys, targets = trio.reader, [c for c, _p in trio.ports]
    else:
        etcd = keys = harness.Etcd(work).start()
        targets = [etcd.port]
    proxy = DelayProxy(targets)
    proxy.start()
    cluster = harness.TestCluster(keys, work, src, f"hic-{kind}-{ttl}-{n}-{os.getpid()}")
    timing = {**PROFILES[ttl], "etcd": {"ttl": ttl, "host": f"127.0.0.1:{proxy.port}"}}
    try:
        for name in ("node1", "node2", "node3"):
            cluster.add(name, extra=timing)
        leader = cluster.wait_for_primary(120)
        cluster.wait_for_streaming([x for x in cluster.nodes if x != leader.name], 120)
        leader.sql("CREATE TABLE acks (id int PRIMARY KEY)")
        watch = harness.PrimaryWatch(cluster)
        writer = harness.WriteClient(harness.multihost_dsn(cluster), "acks", interval=0.05)
        watch.start()
        writer.start()
        time.sleep(max(3.0, PROFILES[ttl]["loop_wait"] + 1))
        started = time.monotonic()
        hiccup(kind, etcd.proc if etcd else None, proxy, trio)
        ended = time.monotonic()
        time.sleep(ttl + PROFILES[ttl]["loop_wait"] + 5)       # what follows the hiccup
        writer.stop()
        watch.stop()
        after = [(t, p, ldr) for t, p, ldr in watch.samples if t >= started]
        leaders = [ldr for _t, _p, ldr in after if ldr not in (None, "?")]
        changes = sum(1 for a, b in zip(leaders, leaders[1:]) if a != b)
        writable = [leader.name in p for _t, p, _l in after]
        demotions = sum(1 for a, b in zip(writable, writable[1:]) if a and not b)
        return {"kind": kind, "ttl": ttl, "run": n, "hiccup_s": round(ended - started, 2),
                "false_failovers": changes, "demotions": demotions,
                "longest_write_gap_s": round(writer.longest_gap(started - 1), 2),
                "two_primaries": len(watch.two_primaries()), "acknowledged": len(writer.acked_ids())}
    finally:
        cluster.teardown()
        proxy.close()
        if etcd:
            etcd.stop()
        if trio:
            for i in range(3):
                trio.stop(i)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=1)
    parser.add_argument("--ttls", default="5,10,30")
    parser.add_argument("--kinds", default=",".join(KINDS))
    parser.add_argument("--output")
    args = parser.parse_args()
    harness.become_subreaper()
    base = harness.new_base_dir()
    results = []
    try:
        src = harness.make_source_copy(base)
        for ttl in (int(t) for t in args.ttls.split(",")):
            for kind in args.kinds.split(","):
                for n in range(args.runs):
                    r = one_run(base, src, ttl, kind, n)
                    results.append(r)
                    print(json.dumps(r), flush=True)
    finally:
        harness.stop_all_processes()
        shutil.rmtree(base, ignore_errors=True)
    out = args.output or os.path.join(harness.REPO, "bench", "results",
                                      f"hiccups-{time.strftime('%Y%m%d-%H%M%S')}.json")
    with open(out, "w") as fh:
        json.dump({"date": time.strftime("%Y-%m-%d"), "profiles": PROFILES, "runs": results}, fh, indent=1)
    print(f"\n{'hiccup':10} " + " ".join(f"ttl {t:>2}: failovers/demotions/gap" for t in args.ttls.split(",")))
    for kind in args.kinds.split(","):
        cells = []
        for ttl in (int(t) for t in args.ttls.split(",")):
            rs = [r for r in results if r["kind"] == kind and r["ttl"] == ttl]
            cells.append(f"{sum(r['false_failovers'] for r in rs):>8} / {sum(r['demotions'] for r in rs)} / "
                         f"{max(r['longest_write_gap_s'] for r in rs):5.1f}s   ")
        print(f"{kind:10} " + " ".join(cells))
    print(f"two writable servers at once: {sum(r['two_primaries'] for r in results)} samples; written to {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
