"""The deterministic simulator: real governor daemons on a simulated world.

Each member is the real `Governor` (governor/daemon.py): its real `run_once` pass, its real
executors, its real etcd v3 adapter, sync manager, lock fence, failsafe round and shutdown. Only the
world is simulated, behind the daemon's ports:

  time        each member's clock (governor/clock.py), installed while its code runs: the world's
              time, plus what the member's own waits and timeouts used up in its pass (a pass that
              waits for an unreachable etcd ends seconds later)
  etcd        sim/etcd.py: the v3 gateway's semantics (revisions, leases with TTL, transactions);
              a partition makes a member's requests time out; a member whose watch runs is woken by
              the changes the real `keys.wakes` names
  PostgreSQL  sim/postgres.py: WAL as write ids, timelines, streaming, synchronous commit, pg_rewind
  the others  the peers port: another member's /status is its real status board, its POST /failsafe
              answer is the real `vouch.answer` on its memory

A schedule of faults comes from a seed: crashes of a host (governor and PostgreSQL), freezes of the
governor process longer than ttl (its lock fence thread too; the supervising parent fences),
partitions from etcd (one member, or all), replication stalls, clean stops (the real shutdown),
switchovers and maintenance mode requested through a real etcd client, clock jumps of the wall
clock. Invariants, at every tick:

  one_writer    never two PostgreSQL servers that accept writes at once;
  sync_loss     a member promoted holds every commit acknowledged while commits waited for
                synchronous standbys (synchronous_standby_names as PostgreSQL applied it);
  bounded_loss  and every other acknowledged write the leader had when it last published its
                position, less maximum_lag_on_failover (asynchronous mode, or synchronous mode
                degraded with no standby left: README's "then any healthy replica may be promoted");
  progress      once the faults are over, a leader that accepts writes within 3 ttl + 5 s.

`Patch` switches a rule of the real code off (a monkeypatch of governor's own functions for the run),
to show the invariants catch what each rule guards.
"""
from __future__ import annotations

import contextlib
import logging
import random
from dataclasses import dataclass, field
from typing import Callable, Dict, Iterator, List, Optional, Tuple

from governor import clock, ctl_standby, sleeping
from governor.daemon import Governor
from governor.dcs import keys, rotation
from governor.dcs.etcd3 import Etcd3, Unreachable
from tests.sim.etcd import EtcdModel, b64, unb64
from tests.sim.faults import Faults
from tests.sim.node import PREFIX, Node, NodeClock, SimPeers, Supervisor, member_config
from tests.sim.passes import ACTIONS, READ, PausedPass, run_once
from tests.sim.postgres import REMOTE, SYSID, Pg, SimController, SimDisk, SimServer
from tests.sim.replication import Replication

TICK = 0.1



class Violation(AssertionError):
    pass


@dataclass
class Timing:
    ttl: int = 10
    loop_wait: int = 1
    retry_timeout: int = 3
    max_lag: int = 5            # maximum_lag_on_failover: positions are write counts here


# ------------------------------------------------------------------------------------ a member

# ------------------------------------------------------------------------------------ the world

class World(Faults, Replication):
    def __init__(self, seed: int, timing: Optional[Timing] = None, members: Optional[int] = None,
                 duration: float = 45.0, faults: Optional[List[Tuple[float, str, str, float]]] = None,
                 synchronous: Optional[bool] = None, failsafe_mode: Optional[bool] = None, standby: bool = False,
                 wait_decision: bool = True, expect: Optional[List[Tuple[str, ...]]] = None):
        self.seed = seed
        # A hand-written scenario's own expectations beside the invariants (tests/test_sim_scenarios.py):
        # ("writable", member, from, to), ("case", member, case, by) or ("never", member, case, until).
        self.expect = list(expect or [])
        self.failsafe_mode = not standby and ((seed // 6) % 2 == 1 if failsafe_mode is None else failsafe_mode)
        self.synchronous = not standby and (seed % 2 == 0 if synchronous is None else synchronous)
        # Standby schedules: even seeds start as a standby cluster of the remote site (half of them get
        # promote-cluster), odd ones as a primary cluster that gets demote-cluster.
        self.demote_flavour = standby and seed % 2 == 1
        self.standby_start = standby and not self.demote_flavour
        self.wait_decision = wait_decision      # demote-cluster --wait also waits for a standby_* decision
        self.last_primary_wal: Tuple[int, ...] = ()
        self.last_primary_timeline = 1
        self.is_standby = self.standby_start       # the standby_cluster setting is there
        self.sync_on = self.synchronous            # synchronous_mode as edit-config last set it
        self.timing = timing or (Timing(retry_timeout=4) if self.failsafe_mode else Timing())
        self.plan_rng = random.Random(seed)
        self.rng = random.Random(seed * 7919 + 1)
        rotation.jitter.seed(seed)          # the etcd adapters' pauses between retries
        self.duration = duration
        self.now = 0.0
        self.log: List[str] = []
        self.etcd = EtcdModel(self._etcd_changed)
        self.write_id = 0
        self.acked: Dict[int, bool] = {}          # write id -> acknowledged while commits waited for standbys
        self.acked_upto: Dict[str, int] = {}      # how far each primary's WAL has been looked at (since it became one)
        self.published_wal: Tuple[int, ...] = ()
        self.max_timeline = 1
        self.splits: Dict[frozenset, float] = {}     # pairs of hosts that cannot reach each other, until
        count = 3 + (seed // 2) % 3 if members is None else members
        names = [f"m{i}" for i in range(count)]
        # What differs between members and seeds: a failed pg_rewind re-clones (or waits for the
        # operator), tags, a pre_promote callback that sometimes refuses.
        self.rewind_failure = 0.2          # how often pg_rewind of a diverged former primary fails
        self.reclone = seed % 3 != 0
        self.tags: Dict[str, Tuple[str, ...]] = {}
        if seed % 5 == 0:
            self.tags[names[-1]] = ("nofailover",)
        if seed % 7 == 0 and self.synchronous and count >= 4:
            self.tags[names[1]] = ("nosync",)
        self.pre_promote = seed % 4 == 1
        self.pgs: Dict[str, Pg] = {}
        self.nodes: Dict[str, Node] = {}
        # The other site: the primary cluster of a standby cluster, or a standby of this one.
        self.remote = Pg(REMOTE, running=True, in_recovery=not self.standby_start, standby_signal=False)
        self.remote_live = self.standby_start
        self.pgs[REMOTE] = self.remote
        first_upstream = REMOTE if self.standby_start else None
        for i, name in enumerate(names):
            primary = i == 0 and not self.standby_start
            pg = self.pgs[name] = Pg(name, standby_signal=not primary, last_primary=primary,
                                     conf_upstream=first_upstream if i == 0 else names[0])
            node = self.nodes[name] = Node(name, pg, mono_offset=self.rng.uniform(100, 10000),
                                           wall_offset=self.rng.uniform(-0.5, 0.5),
                                           next_pass=self.rng.uniform(0, self.timing.loop_wait))
            SimController(self, pg).start(60)
            self._boot(node)
        self.etcd.request("/kv/put", {"key": b64(PREFIX + "initialize"), "value": b64(SYSID)}, 0.0)
        self.ctl = Etcd3(self._etcd_config(), retry_timeout=3, transport=self._ctl_send)  # governorctl's client
        if self.standby_start:
            self._governorctl(ctl_standby.demote_cluster, host=REMOTE, port=5432)
        self.faults: List[Tuple[float, str, str, float]] = []
        self.last_fault_end = 0.0
        if faults is None:
            self._plan_faults()
        else:
            self.faults = sorted(faults)
            self.last_fault_end = max((f[0] + f[3] for f in faults), default=0.0)
        self.schedule = list(self.faults)

    # -------------------------------------------------------------------------------- members

    def _etcd_config(self):
        return self._config("ctl").etcd

    def _config(self, name: str):
        t = self.timing
        return member_config(name, t.ttl, t.loop_wait, t.retry_timeout, t.max_lag, self.failsafe_mode,
                             self.synchronous, self.reclone, self.tags.get(name, ()), self.pre_promote)

    def _callback(self, kind: str) -> int:
        """A waited-for callback's exit status: pre_promote refuses one promotion in four."""
        return 1 if kind == "pre_promote" and self.rng.random() < 0.25 else 0

    def _boot(self, node: Node) -> None:
        """A governor process starts on this host: its memory is new, PostgreSQL's disk is as it was."""
        with self.running(node):
            cfg = self._config(node.name)
            dcs = Etcd3(cfg.etcd, retry_timeout=cfg.retry_timeout, transport=self._sender(node))
            node.supervisor = Supervisor()
            g = Governor(cfg, dcs=dcs, controller=SimController(self, node.pg), server=SimServer(self, node.pg),
                         disk=SimDisk(self, node.pg), peers=SimPeers(self, node.name), report=node.supervisor)
            g.fence.stop = lambda: self._fence_stop(node)
            g.dcs.keep_watching = lambda wake: True     # the world wakes it (_etcd_changed)
            g.callbacks.wait = lambda config, kind, role, limit: self._callback(kind)
            g.mem.name_is_ours = True
            node.g = g
        node.last_poll = self.now

    def _sender(self, node: Node) -> Callable[[Tuple[str, int], str, dict, float], Tuple[int, dict]]:
        def send(endpoint: Tuple[str, int], path: str, body: dict, timeout: float) -> Tuple[int, dict]:
            if self.now < node.cut_until:
                node.elapsed += timeout          # a partition: the request times out
                raise Unreachable("timed out")
            status, answer = self.etcd.request(path, body, self.now + node.elapsed)
            if path == "/kv/put" and body.get("key") == b64(PREFIX + "optime/leader"):
                self.published_wal = node.pg.wal[:int(unb64(body["value"]))]
            return status, answer
        return send

    def _ctl_send(self, endpoint: Tuple[str, int], path: str, body: dict, timeout: float) -> Tuple[int, dict]:
        return self.etcd.request(path, body, self.now)

    @contextlib.contextmanager
    def running(self, node: Node) -> Iterator[None]:
        """The member's clock is the clock while its code runs."""
        before = clock.install(NodeClock(self, node))
        try:
            yield
        finally:
            clock.install(before)

    def _etcd_changed(self, key: str, before: Optional[str], after: Optional[str]) -> None:
        """A member whose watch runs (it called keep_watching in a sleep) wakes for what keys.wakes names."""
        if not key.startswith(PREFIX) or not keys.wakes(key[len(PREFIX):], before, after):
            return
        for node in self.nodes.values():
            if node.g is not None and node.g.watching is not None and self.now >= node.cut_until:
                node.g.wake.set()

    # -------------------------------------------------------------------------------- governor

    def _fences(self) -> None:
        for node in self.nodes.values():
            if not node.alive(self.now):
                continue
            if self.now < node.frozen_until:
                # the fence thread is frozen with the process; the supervising parent acts
                sup = node.supervisor
                if sup.deadline is not None and self.now + node.mono_offset >= sup.deadline - sup.margin \
                        and node.pg.running:
                    self.stop_postgres(node.name, "immediate")
                    self.note(f"{node.name} fenced by its supervising parent")
                continue
            if node.g.fence.deadline is None:
                continue
            node.elapsed = 0.0
            with self.running(node):
                deadline = node.g.fence.due()
                if deadline is not None:
                    node.g.fence.fire(deadline)

    def _pass(self, node: Node) -> None:
        node.elapsed = 0.0
        if self.now < node.slow_until or self.now < node.slow_read_until:
            where = ACTIONS if self.now < node.slow_until else READ
            paused = PausedPass(node, lambda: clock.install(NodeClock(self, node)), where)
            paused.start()
            if not paused.done:
                paused.resume_at = self.now + self.rng.choice([0.5, 1.5, 3.0, 6.0])
                node.paused = paused
                return
            self._sleep(node, paused.ok, paused.started)
            return
        with self.running(node):
            started = clock.monotonic()
            ok = run_once(node, node.name)
        self._sleep(node, ok, started)

    def _resume(self, node: Node) -> None:
        paused, node.paused = node.paused, None
        node.elapsed = 0.0
        paused.resume()
        self._sleep(node, paused.ok, paused.started)

    def _abandon(self, node: Node) -> None:
        if node.paused is not None:
            node.paused.abandon()
            node.paused = None

    def _sleep(self, node: Node, ok: bool, started: float) -> None:
        """After the pass: the real back-off says how long the loop sleeps."""
        g = node.g
        with self.running(node):
            delay = g.backoff.next_delay(ok, self.timing.loop_wait, started)
        sleeping.start_watching(g)    # the real sleep's start (the watch itself: _etcd_changed)
        node.next_pass = self.now + node.elapsed + max(delay, 0.0)
        node.last_poll = self.now
        case = g.board.get().decision
        if case != node.last_case:
            node.last_case = case
            self.note(f"{node.name}: {case}")

    def _due(self, node: Node) -> bool:
        """Whether the member's sleep ends now: its time is up, its watch woke it, or its local poll
        (a PostgreSQL settling, a synchronous standby lost) saw a change."""
        g = node.g
        if self.now + 1e-9 >= node.next_pass or g.wake.is_set():
            return True
        poll = sleeping.poll_interval(g)
        if poll is None or self.now - node.last_poll + 1e-9 < poll:
            return False
        node.last_poll = self.now
        node.elapsed = 0.0
        with self.running(node):
            return sleeping.local_change(g)

    # -------------------------------------------------------------------------------- invariants

    def _check_promotion(self, pg: Pg) -> None:
        have = set(pg.wal)
        lost = [w for w, waited in self.acked.items() if waited and w not in have]
        if lost:
            raise Violation(f"sync_loss: {pg.name} promoted without {len(lost)} commit(s) acknowledged once "
                            f"synchronous standbys had them, e.g. {lost[:3]}")
        # Commits acknowledged without waiting (asynchronous, or synchronous mode degraded with no
        # standby left, as README says) are lost at most down to maximum_lag_on_failover.
        must = self.published_wal[:max(0, len(self.published_wal) - self.timing.max_lag)]
        missing = [w for w in must if w in self.acked and w not in have]
        if missing:
            raise Violation(f"bounded_loss: {pg.name} promoted without {len(missing)} write(s) the leader had "
                            f"when it published position {len(self.published_wal)} (max lag {self.timing.max_lag})")

    def _check_one_writer(self) -> None:
        writers = [pg.name for pg in self.pgs.values() if pg is not self.remote and self.accepts_writes(pg)]
        if writers and self.remote_live and self.accepts_writes(self.remote):
            raise Violation(f"standby_writer: {', '.join(writers)} accept writes while the other site does, at "
                            f"{self.now:.1f}s")
        if len(writers) > 1:
            raise Violation(f"one_writer: {', '.join(writers)} accept writes at {self.now:.1f}s")

    def _check_expected(self) -> None:
        for kind, who, a, b in self.expect:
            if kind == "writable" and float(a) <= self.now < float(b) and not self.accepts_writes(self.pgs[who]):
                raise Violation(f"expected: {who} accepts writes from {a}s to {b}s; it does not at {self.now:.1f}s")
            if kind == "case" and self.now >= float(b) and not any(
                    line.split()[1:] == [f"{who}:", a] and float(line.split()[0]) <= float(b) for line in self.log):
                raise Violation(f"expected: {who} decides {a} by {b}s; it has not at {self.now:.1f}s")
            if kind == "never" and any(line.split()[1:] == [f"{who}:", a] and float(line.split()[0]) < float(b)
                                       for line in self.log):
                raise Violation(f"expected: {who} never decides {a} before {b}s; it does at {self.now:.1f}s")

    # -------------------------------------------------------------------------------- run

    def run(self) -> None:
        quiet = logging.getLogger("governor")
        level = quiet.level
        quiet.setLevel(logging.CRITICAL + 1)
        outer = clock.install(clock.SYSTEM)     # a slow pass's thread leaves its member's clock installed
        try:
            self._run()
        except Violation as exc:
            raise Violation(f"seed {self.seed}: {exc}\n  faults: {self.schedule}\n  " + "\n  ".join(self.log[-25:])
                            ) from None
        finally:
            quiet.setLevel(level)
            for node in self.nodes.values():
                self._abandon(node)
            clock.install(outer)

    def _run(self) -> None:
        settled_after = self.last_fault_end + 3 * self.timing.ttl + 5
        leader_seen = False
        for step in range(int(self.duration / TICK)):
            self.now = round(step * TICK, 1)
            self.etcd.expire(self.now)
            for node in self.nodes.values():
                if node.g is None and self.now >= node.crashed_until:
                    self._boot(node)
                    node.next_pass = self.now
            self._apply_faults()
            self._fences()
            self._replicate()
            self._writes()
            self._check_one_writer()
            self._check_expected()
            for node in sorted(self.nodes.values(), key=lambda n: (n.next_pass, n.name)):
                if not node.alive(self.now) or self.now < node.frozen_until:
                    continue
                if node.paused is not None:
                    if self.now + 1e-9 >= node.paused.resume_at:
                        self._resume(node)
                        self._check_one_writer()
                elif self._due(node):
                    self._pass(node)
                    self._check_one_writer()
            if self.now > settled_after:
                holder = self.etcd.get(PREFIX + "leader")
                pg = self.pgs.get(holder or "")
                if self.is_standby and self.remote_live:
                    leader_seen = leader_seen or (pg is not None and pg.upstream == REMOTE and self.streams(pg))
                else:
                    leader_seen = leader_seen or (pg is not None and pg is not self.remote and self.accepts_writes(pg))
        if self.duration > settled_after + 1 and not leader_seen:
            raise Violation("standby_progress: no standby leader streaming from the other site within 3 ttl + 5 s "
                            "after the last fault" if self.is_standby and self.remote_live else
                            "progress: no leader accepting writes within 3 ttl + 5 s after the last fault")


@dataclass
class Found:
    seed: Optional[int]          # the first seed that broke an invariant (None: none did)
    schedules: int               # how many schedules ran
    message: str = ""
    shrunk: List[Tuple[float, str, str, float]] = field(default_factory=list)


def fails(seed: int, faults: List[Tuple[float, str, str, float]], **kw: object) -> Optional[str]:
    try:
        World(seed, faults=faults, **kw).run()
    except Violation as exc:
        return str(exc).splitlines()[0]
    return None


def shrink(seed: int, **kw: object) -> List[Tuple[float, str, str, float]]:
    """The failing seed's fault schedule with every fault removed that is not needed for a
    violation (the random choices inside the run still come from the seed)."""
    faults = World(seed, **kw).schedule
    changed = True
    while changed:
        changed = False
        for i in range(len(faults)):
            fewer = faults[:i] + faults[i + 1:]
            if fails(seed, fewer, **kw):
                faults, changed = fewer, True
                break
    return faults


def search(seeds: range, **kw: object) -> Found:
    """Run each seed until one breaks an invariant; shrink its schedule."""
    for count, seed in enumerate(seeds, 1):
        try:
            World(seed, **kw).run()
        except Violation as exc:
            return Found(seed, count, str(exc), shrink(seed, **kw))
    return Found(None, len(seeds))
