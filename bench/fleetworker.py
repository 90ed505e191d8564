#!/usr/bin/env python3
"""One process of bench/fleet.py --model: COUNT clusters of 3 members each, every member the real
governor loop and etcd v3 adapter, its PostgreSQL the simulator's model (tests/sim/live.py).

Reads commands on stdin, a line each: `crash SCOPE` (the member that holds SCOPE's lock dies),
`quit`. Writes a JSON line on stdout every second:
  {"started": clusters started, "holders": {scope: member holding the lock with a writable server},
   "writable": {scope: writable servers}, "promotions": {scope: n}, "violations": [...],
   "keepalive": [seconds of each lease keepalive since the last line], "errors": [...],
   "watch_compacted": watches that found the revision they needed compacted (so far)}
"""
from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import threading
import time
from typing import List

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from tests.sim.live import LiveCluster  # noqa: E402


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--etcd", required=True, help="host:port[,host:port...]")
    p.add_argument("--prefix", required=True)
    p.add_argument("--first", type=int, default=0)
    p.add_argument("--count", type=int, required=True)
    p.add_argument("--ramp", type=float, default=30, help="seconds over which the clusters start")
    p.add_argument("--ttl", type=int, default=30)
    p.add_argument("--loop-wait", type=int, default=10)
    p.add_argument("--retry-timeout", type=int, default=10)
    p.add_argument("--writes", action="store_true", help="each primary takes a write every 0.5 s")
    args = p.parse_args()
    threading.stack_size(512 * 1024)
    logging.basicConfig(level=logging.WARNING, stream=sys.stderr, format="%(asctime)s %(threadName)s %(message)s")
    # What the members decide is news only when odd (stderr: warnings); watches that found their
    # revision compacted are counted (an INFO record).
    compacted = [0]

    class CountCompacted(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            if str(record.msg).startswith("etcd compacted the history"):
                compacted[0] += 1

    logging.getLogger().handlers[0].setLevel(logging.WARNING)
    logging.getLogger("governor").setLevel(logging.INFO)
    logging.getLogger("governor").addHandler(CountCompacted(logging.INFO))
    timings: List[float] = []
    errors: List[str] = []
    guard = threading.Lock()

    def observe(operation: str, seconds: float, ok: bool) -> None:
        if operation == "lease keepalive":
            with guard:
                timings.append(seconds)
        if not ok:
            with guard:
                errors.append(operation)

    clusters = [LiveCluster(f"{args.prefix}{i}", args.etcd, args.ttl, args.loop_wait, args.retry_timeout,
                            observer=observe) for i in range(args.first, args.first + args.count)]
    by_scope = {c.scope: c for c in clusters}
    started = 0
    stop = threading.Event()

    def starter() -> None:
        nonlocal started
        for c in clusters:
            if stop.is_set():
                return
            try:
                c.initialize()
            except Exception as exc:  # noqa: BLE001 - the run is void: say so and end
                sys.stderr.write(f"cannot initialize {c.scope}: {exc}\n")
                os._exit(1)
            c.start()
            started += 1
            time.sleep(args.ramp / max(1, len(clusters)))

    def ticker() -> None:
        while not stop.wait(0.5):
            for c in clusters[:started]:
                c.tick(args.writes)

    def reporter() -> None:
        while not stop.wait(1.0):
            with guard:
                kept, failed = timings[:], errors[:]
                timings.clear()
                errors.clear()
            line = {"started": started,
                    "holders": {c.scope: c.holder() for c in clusters[:started]},
                    "writable": {c.scope: c.writable() for c in clusters[:started]},
                    "promotions": {c.scope: c.promotions for c in clusters[:started]},
                    "violations": [v for c in clusters for v in c.violations],
                    "keepalive": [round(t, 4) for t in kept], "errors": failed, "watch_compacted": compacted[0]}
            sys.stdout.write(json.dumps(line) + "\n")
            sys.stdout.flush()

    for target in (starter, ticker, reporter):
        threading.Thread(target=target, daemon=True, name=target.__name__).start()
    for command in sys.stdin:
        words = command.split()
        if words[:1] == ["crash"] and len(words) == 2 and words[1] in by_scope:
            holder = by_scope[words[1]].holder()
            if holder:
                by_scope[words[1]].crash(holder)
        elif words[:1] == ["quit"]:
            break
    stop.set()
    # No orderly stop of 3 * COUNT members (minutes when their host is starved): the bench is over.
    sys.stderr.flush()
    os._exit(0)


if __name__ == "__main__":
    sys.exit(main())
