#!/usr/bin/env python3
"""Fleet benchmark (issue 38): N governor clusters of 3 members each on one etcd. Reports what
each cluster costs etcd and the host while idle, the leaders' lock renewal latency, one cluster's
crash failover while the others idle, and an etcd restart: every member reconnects, no false
failover, how long until every cluster has a writable leader again, the peak request rate meanwhile.

Two kinds of fleet:
  real      real governor daemons, each beside its real PostgreSQL (as far as this machine allows:
            40 clusters are 120 postmasters)
  --model   the real governor loop, lock fence and etcd v3 adapter (watch included) of every
            member, its PostgreSQL the simulator's model (tests/sim/live.py), --per-process
            clusters per process (bench/fleetworker.py): 1,000 clusters on one machine

  etcd requests/s   etcd's own grpc_server_handled_total (the JSON gateway is gRPC inside), idle
  puts/s            etcd_mvcc_put_total
  etcd CPU, bytes   process_cpu_seconds_total, etcd_network_client_grpc_{received,sent}_bytes_total
  watch streams     etcd_debugging_mvcc_watch_stream_total
  CPU/cluster       user + system time of the governor processes (PostgreSQL not counted) / N
  renewal p50/p99   the leaders' lease keepalives: the exporter's buckets (real), every one (model)
  failover          one leader's host crashes: until another member of that cluster takes writes
  etcd restart      etcd stopped for --outage seconds and started again (--etcd-members 3: its
                    first member, the one every governor asks first, killed), then watched for
                    2 ttl + 10 s: leader changes (false failovers), time until every cluster is
                    healthy, peak requests/s, the members' and etcd's CPU meanwhile; a worker
                    that stops reporting for 3 s counts its clusters as not healthy. --compact:
                    etcd's revision moved on and compacted first (every watch's revision lost)
  --pin             etcd on the first CPU, the members on the others: on 2 cores 3,000 members
                    retrying starve an etcd that shares their CPU

Usage (as root): bench/fleet.py [--clusters 10] [--model [--per-process 125] [--etcd-members 3]]
                 [--idle 60] [--outage 5] [--pin | --nice 10] [--compact] [--output FILE]
Profile: the defaults (ttl 30, loop_wait 10, retry_timeout 10). Writes bench/results/fleet-*.json.
"""
from __future__ import annotations

import argparse
import contextlib
import json
import os
import re
import shutil
import subprocess
import sys
import threading
import time
import urllib.request
from typing import Dict, Iterable, List, Optional, Set, Tuple

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from bench.fleetetcd import FleetEtcd  # noqa: E402
from tests import harness  # noqa: E402

PROFILE = {"loop_wait": 10, "retry_timeout": 10, "etcd": {"ttl": 30},
           "postgresql": {"parameters": {"shared_buffers": "8MB", "max_connections": 20}}}
NAMES = ("node1", "node2", "node3")


def cpu_seconds(pids: Iterable[int]) -> float:
    ticks = os.sysconf("SC_CLK_TCK")
    total = 0.0
    for pid in pids:
        try:
            with open(f"/proc/{pid}/stat") as fh:
                fields = fh.read().rsplit(")", 1)[1].split()
        except OSError:
            continue
        total += (int(fields[11]) + int(fields[12])) / ticks
    return total


def bucket_quantile(buckets: Dict[float, float], q: float) -> Optional[float]:
    """The upper bound of the bucket holding quantile q (Prometheus buckets are cumulative)."""
    if not buckets or not buckets.get(float("inf")):
        return None
    total = buckets[float("inf")]
    for bound in sorted(buckets):
        if buckets[bound] >= q * total:
            return bound
    return None


def sample_quantile(samples: List[float], q: float) -> Optional[float]:
    if not samples:
        return None
    ordered = sorted(samples)
    return round(ordered[min(len(ordered) - 1, int(q * len(ordered)))], 4)


class RealFleet:
    """Real governor daemons, each with its real PostgreSQL (tests/harness.py)."""
    kind = "real PostgreSQL"

    def __init__(self, etcd: FleetEtcd, base: str, count: int):
        self.etcd, self.base = etcd.harness_etcd, base
        self.clusters = [harness.TestCluster(self.etcd, base, "", f"fleet{i}-{os.getpid()}") for i in range(count)]
        self.scopes = [c.scope for c in self.clusters]
        self.crashed: Optional[harness.Node] = None

    def start(self) -> None:
        src = harness.make_source_copy(self.base)
        for c in self.clusters:
            c.src_dir = src
            c.add(NAMES[0], extra=PROFILE)
        for c in self.clusters:
            c.wait_for_primary(300)
            for name in NAMES[1:]:
                c.add(name, extra=PROFILE)
        for c in self.clusters:
            c.wait_for_streaming(list(NAMES[1:]), 600)

    def leaders(self) -> Dict[str, Optional[str]]:
        """Each cluster's lock holder when its server takes writes, else None."""
        out: Dict[str, Optional[str]] = {}
        for c in self.clusters:
            try:
                name = c.leader_name()
            except OSError:
                name = None
            node = c.nodes.get(name or "")
            out[c.scope] = name if node is not None and harness.PrimaryWatch.writable(node) else None
        return out

    def cpu(self) -> float:
        pids = []
        for c in self.clusters:
            for n in c.nodes.values():
                if n.proc and n.proc.poll() is None:
                    pids += [pid for pid in [n.proc.pid] + harness.child_pids(n.proc.pid)
                             if "governor" in harness.cmdline(pid)]
        return cpu_seconds(pids)

    def reset_renewals(self) -> None:
        self._before = self._buckets()

    def _buckets(self) -> Dict[float, float]:
        merged: Dict[float, float] = {}
        for c in self.clusters:
            for n in c.nodes.values():
                try:
                    with urllib.request.urlopen(f"http://127.0.0.1:{n.metrics_port}/metrics", timeout=3) as resp:
                        text = resp.read().decode()
                except OSError:
                    continue
                for m in re.finditer(r'governor_dcs_request_duration_seconds_bucket\{le="([^"]+)",'
                                     r'operation="lease keepalive"\} (\S+)', text):
                    merged[float(m.group(1))] = merged.get(float(m.group(1)), 0.0) + float(m.group(2))
        return merged

    def renewals(self) -> Tuple[Optional[float], Optional[float], str]:
        now = self._buckets()
        delta = {b: now[b] - self._before.get(b, 0.0) for b in now}
        return bucket_quantile(delta, 0.5), bucket_quantile(delta, 0.99), "upper bound of the exporter's bucket"

    def crash(self, scope: str, leader: str) -> None:
        c = self.clusters[self.scopes.index(scope)]
        self.crashed = c.nodes[leader]
        self.crashed.crash()

    def after_failover(self) -> None:
        if self.crashed is not None:
            self.crashed.start()
            self.clusters[0].wait_for_streaming([self.crashed.name], 120)

    def promotions(self) -> Optional[int]:
        return None

    def violations(self) -> List[str]:
        return []

    def teardown(self) -> None:
        for c in self.clusters:
            c.teardown()


class ModelFleet:
    """Real governor loops and etcd adapters whose PostgreSQL is the simulator's model, many
    members per process (bench/fleetworker.py)."""
    kind = "PostgreSQL model"

    def __init__(self, etcd: FleetEtcd, base: str, count: int, per_process: int, writes: bool, nice: int = 0):
        self.scopes = [f"fm{os.getpid()}x{i}" for i in range(count)]
        self.per_process, self.base = per_process, base
        self.workers: List[subprocess.Popen] = []
        self.latest: Dict[int, dict] = {}
        self.heard: Dict[int, float] = {}     # when each worker's last line arrived (monotonic)
        self.longest_silence = 0.0
        self.samples: List[float] = []
        self.errors = 0
        self.guard = threading.Lock()
        ramp = max(5.0, 0.05 * count)
        for w, first in enumerate(range(0, count, per_process)):
            proc = subprocess.Popen(
                [*(["nice", "-n", str(nice)] if nice else []),
                 sys.executable, os.path.join(harness.REPO, "bench", "fleetworker.py"), "--etcd", etcd.endpoint,
                 "--prefix", f"fm{os.getpid()}x", "--first", str(first), "--count",
                 str(min(per_process, count - first)), "--ramp", str(ramp),
                 "--ttl", str(PROFILE["etcd"]["ttl"]), "--loop-wait", str(PROFILE["loop_wait"]),
                 "--retry-timeout", str(PROFILE["retry_timeout"]), *(["--writes"] if writes else [])],
                stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, start_new_session=True,
                stderr=open(os.path.join(base, f"fleetworker-{w}.log"), "w"))
            harness._processes.append(proc)
            self.workers.append(proc)
            threading.Thread(target=self._read, args=(w, proc), daemon=True).start()

    def _read(self, w: int, proc: subprocess.Popen) -> None:
        for line in proc.stdout:
            try:
                report = json.loads(line)
            except ValueError:
                continue
            with self.guard:
                now = time.monotonic()
                self.longest_silence = max(self.longest_silence, now - self.heard.get(w, now))
                self.latest[w], self.heard[w] = report, now
                self.samples += report["keepalive"]
                self.errors += len(report["errors"])

    def start(self) -> None:
        deadline = time.monotonic() + 600
        while not all(self.leaders().get(s) for s in self.scopes):    # a dead worker raises at once
            if time.monotonic() > deadline:
                raise AssertionError("timed out after 600 s waiting for every model cluster to lead")
            time.sleep(0.5)

    def leaders(self) -> Dict[str, Optional[str]]:
        dead = [p.args[-1] for p in self.workers if p.poll() is not None]
        if dead:
            raise RuntimeError(f"a fleet worker exited: {dead}")
        out: Dict[str, Optional[str]] = {}
        with self.guard:
            for w, report in self.latest.items():
                # A worker that has not reported for 3 s (it writes every second) is too starved
                # to vouch for its clusters: they count as unknown, never as healthy.
                fresh = time.monotonic() - self.heard[w] < 3.0
                for scope, holder in report["holders"].items():
                    out[scope] = holder if fresh and holder and report["writable"][scope] == [holder] else None
        return out

    def reset_silence(self) -> None:
        with self.guard:
            self.longest_silence = 0.0

    def cpu(self) -> float:
        return cpu_seconds(p.pid for p in self.workers)

    def reset_renewals(self) -> None:
        with self.guard:
            self.samples = []

    def renewals(self) -> Tuple[Optional[float], Optional[float], str]:
        with self.guard:
            samples = self.samples[:]
        return sample_quantile(samples, 0.5), sample_quantile(samples, 0.99), f"exact, {len(samples)} renewals"

    def crash(self, scope: str, leader: str) -> None:
        proc = self.workers[self.scopes.index(scope) // self.per_process]
        proc.stdin.write(f"crash {scope}\n")
        proc.stdin.flush()

    def after_failover(self) -> None:
        pass

    def promotions(self) -> Optional[int]:
        with self.guard:
            return sum(n for r in self.latest.values() for n in r["promotions"].values())

    def violations(self) -> List[str]:
        with self.guard:
            return [v for r in self.latest.values() for v in r["violations"]]

    def watch_compacted(self) -> int:
        with self.guard:
            return sum(r.get("watch_compacted", 0) for r in self.latest.values())

    def teardown(self) -> None:
        for proc in self.workers:
            try:
                proc.stdin.write("quit\n")
                proc.stdin.flush()
            except OSError:
                pass
        for proc in self.workers:
            try:
                proc.wait(60)
            except subprocess.TimeoutExpired:
                proc.kill()
        kept = f"/tmp/governor-fleet-logs-{os.getpid()}"
        shutil.copytree(self.base, kept, ignore=shutil.ignore_patterns("data"), dirs_exist_ok=True)
        print(f"the workers' logs (their warnings and errors) are kept in {kept}")


@contextlib.contextmanager
def pinned(cpus: Optional[Set[int]]):
    """Processes started inside run on CPUS (children inherit the affinity); the bench and what it
    starts afterwards go back to the others."""
    if not cpus:
        yield
        return
    before = os.sched_getaffinity(0)
    os.sched_setaffinity(0, cpus)
    try:
        yield
    finally:
        os.sched_setaffinity(0, before)


def healthy_count(fleet) -> int:
    return sum(1 for name in fleet.leaders().values() if name)


def run(fleet, etcd: FleetEtcd, args: argparse.Namespace, result: dict) -> None:
    n = len(fleet.scopes)
    began = time.monotonic()
    fleet.start()
    result["bootstrap_s"] = round(time.monotonic() - began, 1)
    print(f"{n} clusters ({fleet.kind}) lead after {result['bootstrap_s']}s", flush=True)
    time.sleep(15)
    m0, cpu0, t0 = etcd.metrics(), fleet.cpu(), time.monotonic()
    fleet.reset_renewals()
    time.sleep(args.idle)
    m1, cpu1, t1 = etcd.metrics(), fleet.cpu(), time.monotonic()
    span = t1 - t0
    p50, p99, how = fleet.renewals()
    result["idle"] = {
        "seconds": round(span, 1),
        "etcd_requests_per_s": round((m1["requests"] - m0["requests"]) / span, 1),
        "etcd_requests_per_s_per_cluster": round((m1["requests"] - m0["requests"]) / span / n, 3),
        "etcd_puts_per_s": round((m1["puts"] - m0["puts"]) / span, 2),
        "etcd_cpu_percent": round(100 * (m1["cpu_s"] - m0["cpu_s"]) / span, 2),
        "etcd_bytes_per_s_per_cluster": round((m1["bytes_in"] + m1["bytes_out"] - m0["bytes_in"] - m0["bytes_out"])
                                              / span / n),
        "etcd_watch_streams": m1["watch_streams"],
        "governor_cpu_percent_per_cluster": round(100 * (cpu1 - cpu0) / span / n, 3),
        "renewal_p50_s": p50, "renewal_p99_s": p99, "renewal_measure": how}
    print(json.dumps(result["idle"]), flush=True)

    # One cluster's leader host crashes while the others idle.
    victim = fleet.scopes[0]
    old = fleet.leaders()[victim]
    promotions0 = fleet.promotions()
    crashed = time.monotonic()
    fleet.crash(victim, old)
    harness.wait_until(lambda: fleet.leaders().get(victim) not in (None, old), 180, "the crashed cluster's failover")
    result["failover_s"] = round(time.monotonic() - crashed, 2)
    print(f"failover of one cluster under fleet load: {result['failover_s']}s", flush=True)
    fleet.after_failover()
    harness.wait_until(lambda: healthy_count(fleet) == n, 120, "every cluster to lead after the failover")

    # etcd restarts: nobody may fail over; every cluster healthy again.
    leaders = fleet.leaders()
    promotions1 = fleet.promotions()
    if hasattr(fleet, "reset_silence"):
        fleet.reset_silence()
    if args.compact:
        result["compacted_revision"] = etcd.compact_ahead()
    stopped = time.monotonic()
    etcd.stop_one()
    down = time.monotonic()
    cpu_down = fleet.cpu()
    time.sleep(args.outage)
    members_cpu_down = 100 * (fleet.cpu() - cpu_down) / (time.monotonic() - down)
    starting = time.monotonic()
    with pinned(args.etcd_cpus):
        etcd.start_one()
    restarted = time.monotonic()
    # Watched for two ttl and more: a lock that was not renewed expires within one ttl.
    peak, last, healthy_after, lowest = 0.0, etcd.metrics()["requests"], None, n
    cpu_last, etcd_cpu_last, first_10s = fleet.cpu(), cpu_seconds(etcd.pids()), []
    watch = 2 * PROFILE["etcd"]["ttl"] + 10
    while time.monotonic() - restarted < watch or (healthy_after is None and time.monotonic() - restarted < 300):
        time.sleep(1)
        now = etcd.metrics()["requests"]
        peak, last = max(peak, now - last), now
        if len(first_10s) < 10:
            cpu_now, etcd_cpu_now = fleet.cpu(), cpu_seconds(etcd.pids())
            first_10s.append((round(100 * (cpu_now - cpu_last)), round(100 * (etcd_cpu_now - etcd_cpu_last))))
            cpu_last, etcd_cpu_last = cpu_now, etcd_cpu_now
        count = healthy_count(fleet)
        lowest = min(lowest, count)
        if count == n and healthy_after is None:
            healthy_after = round(time.monotonic() - restarted, 1)
    after = fleet.leaders()
    changed = [s for s in fleet.scopes if after.get(s) != leaders.get(s)]
    result["etcd_restart"] = {"outage_s": round(restarted - stopped, 1), "stop_s": round(down - stopped, 1),
                              "start_s": round(restarted - starting, 1), "all_healthy_after_s": healthy_after,
                              "fewest_healthy_clusters": lowest, "leader_changes": len(changed),
                              "peak_requests_per_s": peak,
                              "members_cpu_percent_while_down": round(members_cpu_down),
                              "cpu_percent_members_etcd_first_10s": first_10s}
    if promotions1 is not None:
        result["etcd_restart"]["promotions"] = fleet.promotions() - promotions1
        result["failover_promotions"] = promotions1 - promotions0
        result["violations"] = fleet.violations()
    if args.compact and hasattr(fleet, "watch_compacted"):
        result["etcd_restart"]["watches_that_found_their_revision_compacted"] = fleet.watch_compacted()
    if hasattr(fleet, "longest_silence"):
        result["etcd_restart"]["longest_worker_silence_s"] = round(fleet.longest_silence, 1)
    print(json.dumps(result["etcd_restart"]), flush=True)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--clusters", type=int, default=10)
    p.add_argument("--model", action="store_true", help="members' PostgreSQL is the simulator's model")
    p.add_argument("--per-process", type=int, default=125, help="--model: clusters per process")
    p.add_argument("--writes", action="store_true",
                   help="--model: each primary takes a write every 0.5 s (positions move and are published)")
    p.add_argument("--idle", type=float, default=60)
    p.add_argument("--outage", type=float, default=5)
    p.add_argument("--etcd-members", type=int, choices=(1, 3), default=1,
                   help="3: a 3-member etcd (--model only), and the restart stops its first member")
    p.add_argument("--pin", action="store_true",
                   help="etcd on the first CPU, the members on the others (etcd not starved by its clients)")
    p.add_argument("--compact", action="store_true",
                   help="before the restart, etcd's revision moved on and compacted: every watch reconnects "
                        "to a compacted revision and its member reads its scope afresh")
    p.add_argument("--nice", type=int, default=0,
                   help="--model: the workers' niceness (etcd keeps 0: it is served first when both want the CPU)")
    p.add_argument("--output")
    args = p.parse_args()
    if args.etcd_members == 3 and not args.model:
        p.error("--etcd-members 3 needs --model")
    harness.become_subreaper()
    cpus = sorted(os.sched_getaffinity(0))
    args.etcd_cpus = {cpus[0]} if args.pin and len(cpus) > 1 else None
    if args.etcd_cpus:
        os.sched_setaffinity(0, set(cpus[1:]))
    base = harness.new_base_dir()
    result: dict = {"clusters": args.clusters, "members": 3 * args.clusters, "profile": PROFILE,
                    "postgresql": "model" if args.model else "real",
                    "writes": "a write every 0.5 s" if args.writes else "none", "cores": os.cpu_count(),
                    "etcd_members": args.etcd_members,
                    "pinned": "etcd on one CPU, the members on the other(s)" if args.pin else "no",
                    "members_nice": args.nice}
    fleet = None
    try:
        with pinned(args.etcd_cpus):
            etcd = FleetEtcd(base, args.etcd_members).start()
        fleet = ModelFleet(etcd, base, args.clusters, args.per_process, args.writes, args.nice) if args.model else \
            RealFleet(etcd, base, args.clusters)
        run(fleet, etcd, args, result)
    finally:
        if fleet is not None:
            fleet.teardown()
        harness.stop_all_processes()
        shutil.rmtree(base, ignore_errors=True)
    out = args.output or os.path.join(harness.REPO, "bench", "results",
                                      f"fleet-{'model-' if args.model else ''}{time.strftime('%Y%m%d-%H%M%S')}.json")
    os.makedirs(os.path.dirname(os.path.abspath(out)), exist_ok=True)    # bench/results/ is not in git
    with open(out, "w") as fh:
        json.dump({"date": time.strftime("%Y-%m-%d"), **result}, fh, indent=1)
    print(f"written to {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
