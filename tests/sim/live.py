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

import argparse
import contextlib
import functools
import io
import logging
import random
from dataclasses import dataclass, field
from typing import Callable, Dict, Iterator, List, Optional, Tuple

from governor import clock, ctl_standby
from governor import config as config_mod
from governor.cluster import Member
from governor.config import Config
from governor.daemon import Governor
from governor.dcs import keys
from governor.dcs.etcd3 import Etcd3, Unreachable
from governor.peers import member_from_status
from governor.shutdown import shutdown
from tests.sim.etcd import EtcdModel
from tests.sim.passes import PausedPass, run_once
from tests.sim.postgres import SYSID, Pg, SimController, SimDisk, SimServer

TICK = 0.1
SCOPE = "sim"
PREFIX = f"/service/{SCOPE}/"
LEADER = "<leader>"
REMOTE = "site-a"          # the other site's PostgreSQL
BIN_DIR = "/usr/lib/postgresql/15/bin"


class Violation(AssertionError):
    pass


@dataclass
class Timing:
    ttl: int = 10
    loop_wait: int = 1
    retry_timeout: int = 3
    max_lag: int = 5            # maximum_lag_on_failover: positions are write counts here


# ------------------------------------------------------------------------------------ a member

@functools.lru_cache(maxsize=256)
def member_config(name: str, ttl: int, loop_wait: int, retry_timeout: int, max_lag: int, failsafe_mode: bool,
                  synchronous: bool) -> Config:
    """A member's configuration, as its files would say it (validated by the real code)."""
    raw = {"etcd": {"scope": SCOPE, "ttl": ttl, "host": "etcd:2379"}, "loop_wait": loop_wait,
           "retry_timeout": retry_timeout, "failsafe_mode": failsafe_mode, "synchronous_mode": synchronous,
           "postgresql": {"name": name, "data_dir": f"/tmp/governor-sim-{name}", "bin_dir": BIN_DIR,
                          "connect_address": f"{name}:5432", "listen": "0.0.0.0:5432",
                          "maximum_lag_on_failover": max_lag, "use_pg_rewind": True,
                          "replication": {"username": "replicator", "password": "r"},
                          "superuser": {"username": "postgres", "password": "s"}},
           "restapi": {"listen": "127.0.0.1:8008", "connect_address": f"{name}:8008"},
           "metrics": {"enabled": False}}
    return config_mod.validate(raw, {}, "simulation")


class Supervisor:
    """What the supervising parent process is told: the lock's deadline; it fences a frozen child."""

    def __init__(self) -> None:
        self.deadline: Optional[float] = None
        self.margin = 1.0

    def __call__(self, deadline: Optional[float]) -> None:
        self.deadline = deadline


@dataclass
class Node:
    name: str
    pg: Pg
    g: Optional[Governor] = None
    elapsed: float = 0.0                 # what its current pass has waited so far
    mono_offset: float = 0.0             # its monotonic clock's origin (never compared across hosts)
    wall_offset: float = 0.0             # its wall clock's error
    next_pass: float = 0.0
    last_poll: float = 0.0
    crashed_until: float = 0.0
    frozen_until: float = 0.0
    cut_until: float = 0.0
    slow_until: float = 0.0              # its passes pause between decision and actions
    paused: Optional[PausedPass] = None
    supervisor: Supervisor = field(default_factory=Supervisor)

    def alive(self, now: float) -> bool:
        return self.g is not None and now >= self.crashed_until


class NodeClock:
    def __init__(self, world: World, node: Node):
        self.world, self.node = world, node

    def monotonic(self) -> float:
        return self.world.now + self.node.elapsed + self.node.mono_offset

    def wall(self) -> float:
        return 1.8e9 + self.world.now + self.node.elapsed + self.node.wall_offset

    def sleep(self, seconds: float) -> None:
        self.node.elapsed += max(0.0, seconds)


class SimPeers:
    """The peers port of one member: the others as the world has them."""

    def __init__(self, world: World, me: str):
        self.world, self.me = world, me

    def _answering(self, name: str) -> Optional[Node]:
        node = self.world.nodes.get(name)
        if node is None or not node.alive(self.world.now) or self.world.now < node.frozen_until \
                or self.world.split(self.me, name):
            return None
        return node

    def status(self, api_url: str, name: str, cafile: Optional[str]) -> object:
        node = self._answering(name)
        return member_from_status(node.g.board.get().as_dict(), name) if node else None

    def writable(self, pg: object, host: str, port: int, sysid: str) -> Optional[bool]:
        other = self.world.pgs.get(host)
        return other is not None and not self.world.split(self.me, host) and self.world.accepts_writes(other)

    def identify(self, pg: object, host: str, port: int) -> Optional[Tuple[str, int]]:
        other = self.world.pgs.get(host)
        if other is None or not other.running or self.world.split(self.me, host):
            return None
        return SYSID, other.timeline

    def reachable(self, host: str, port: int, timeout: float = 1.0) -> bool:
        other = self.world.pgs.get(host)
        return other is not None and other.running and not self.world.split(self.me, host)

    def vouch(self, members: Dict[str, str], leader: str, sysid: Optional[str], api: object,
              timeout: float) -> List[str]:
        from governor import vouch
        refused = []
        for name in members:
            node = self._answering(name)
            if node is None:
                refused.append(f"{name}: no answer within {timeout:g}s")
                continue
            with self.world.running(node):
                code, body = vouch.answer(node.g, {"leader": leader, "sysid": sysid})
            if code != 200:
                refused.append(f"{name}: answered {code}")
        return refused


# ------------------------------------------------------------------------------------ the world

class World:
    def __init__(self, seed: int, timing: Optional[Timing] = None, members: Optional[int] = None,
                 duration: float = 45.0, faults: Optional[List[Tuple[float, str, str, float]]] = None,
                 synchronous: Optional[bool] = None, failsafe_mode: Optional[bool] = None, standby: bool = False,
                 wait_decision: bool = True):
        self.seed = seed
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
        self.timing = timing or (Timing(retry_timeout=4) if self.failsafe_mode else Timing())
        self.plan_rng = random.Random(seed)
        self.rng = random.Random(seed * 7919 + 1)
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
        self.etcd.request("/kv/put", {"key": _b64(PREFIX + "initialize"), "value": _b64(SYSID)}, 0.0)
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
                             self.synchronous)

    def _boot(self, node: Node) -> None:
        """A governor process starts on this host: its memory is new, PostgreSQL's disk is as it was."""
        with self.running(node):
            cfg = self._config(node.name)
            dcs = Etcd3(cfg.etcd, retry_timeout=cfg.retry_timeout, transport=self._sender(node))
            node.supervisor = Supervisor()
            g = Governor(cfg, dcs=dcs, controller=SimController(self, node.pg), server=SimServer(self, node.pg),
                         disk=SimDisk(self, node.pg), peers=SimPeers(self, node.name), report=node.supervisor)
            g.fence.stop = lambda: self._fence_stop(node)
            g.mem.name_is_ours = True
            node.g = g
        node.last_poll = self.now

    def _sender(self, node: Node) -> Callable[[Tuple[str, int], str, dict, float], Tuple[int, dict]]:
        def send(endpoint: Tuple[str, int], path: str, body: dict, timeout: float) -> Tuple[int, dict]:
            if self.now < node.cut_until:
                node.elapsed += timeout          # a partition: the request times out
                raise Unreachable("timed out")
            status, answer = self.etcd.request(path, body, self.now + node.elapsed)
            if path == "/kv/put" and body.get("key") == _b64(PREFIX + "optime/leader"):
                self.published_wal = node.pg.wal[:int(_unb64(body["value"]))]
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

    # -------------------------------------------------------------------------------- PostgreSQL

    def split(self, a: str, b: str) -> bool:
        """Whether hosts a and b cannot reach each other (their APIs, their PostgreSQL) now."""
        return self.splits.get(frozenset((a, b)), 0.0) > self.now

    def accepts_writes(self, pg: Pg) -> bool:
        node = self.nodes.get(pg.name)
        return pg.writable() and (node is None or self.now >= node.crashed_until)

    def _governorctl(self, command: Callable, **args: object) -> None:
        """A governorctl command, run by its own code against etcd (no --wait: the world waits)."""
        namespace = argparse.Namespace(force=True, wait=0, primary_slot_name=None, restore_command=None, **args)
        with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
            command(namespace, self.ctl, self.ctl.get_cluster())

    def streams(self, pg: Pg) -> bool:
        up = self.pgs.get(pg.upstream or "")
        return pg.running and pg.in_recovery and up is not None and up.running and self.now >= pg.stalled_until \
            and self.accepts_or_serves(up) and not self.split(pg.name, up.name) \
            and up.wal[:len(pg.wal)] == pg.wal

    def accepts_or_serves(self, pg: Pg) -> bool:
        node = self.nodes.get(pg.name)
        return node is None or self.now >= node.crashed_until

    def stop_postgres(self, name: str, mode: str) -> None:
        pg = self.pgs[name]
        if not pg.running:
            return
        if mode == "fast" and not pg.in_recovery:
            # a fast shutdown waits until every connected standby received all WAL
            for other in self.pgs.values():
                if other.upstream == name and self.streams(other):
                    other.wal = pg.wal
                    other.timeline = max(other.timeline, pg.timeline)
        pg.running = False
        pg.stamp += 1

    def became_writable(self, name: str) -> None:
        self.acked_upto.pop(name, None)
        self._check_one_writer()

    def promoted(self, name: str) -> None:
        pg = self.pgs[name]
        self.acked_upto.pop(name, None)
        self.max_timeline += 1
        pg.in_recovery, pg.standby_signal, pg.last_primary, pg.timeline = False, False, True, self.max_timeline
        pg.stamp += 1
        self.note(f"{name} promoted on timeline {pg.timeline} at {pg.lsn}")
        self._check_promotion(pg)
        self._check_one_writer()

    def rewind(self, name: str, host: str) -> str:
        from governor.postgres.bootstrap import BootstrapError
        source = self.pgs.get(host)
        if source is None or not source.running or not self.accepts_or_serves(source) \
                or self.split(name, host):
            raise BootstrapError(f"pg_rewind: could not connect to server on {host}")
        pg = self.pgs[name]
        common = 0
        while common < min(len(pg.wal), len(source.wal)) and pg.wal[common] == source.wal[common]:
            common += 1
        pg.wal, pg.timeline, pg.last_primary = pg.wal[:common], source.timeline, False
        pg.stamp += 1
        return "pg_rewind: Done!"

    def _fence_stop(self, node: Node) -> Optional[int]:
        if not node.pg.running:
            return None
        self.stop_postgres(node.name, "immediate")
        self.note(f"{node.name} fenced")
        return 4242

    # -------------------------------------------------------------------------------- faults

    def _plan_faults(self) -> None:
        t = 3.0
        names = list(self.nodes)
        while t < self.duration - 20:
            t += self.plan_rng.uniform(0.5, 8.0)
            kind = self.plan_rng.choice(["crash", "freeze", "cut", "stall", "stop", "switchover", "cut_all",
                                         "pause", "clock", "split", "slow"])
            who = self.plan_rng.choice(names)
            if self.plan_rng.random() < 0.5:
                who = LEADER
            length = self.plan_rng.choice([0.5, 2.0, 5.0, 9.0, 12.0, 20.0]) * self.plan_rng.uniform(0.8, 1.2)
            self.faults.append((round(t, 1), kind, who, round(length, 1)))
            self.last_fault_end = max(self.last_fault_end, t + length)
        if self.demote_flavour:
            self.faults.append((round(self.plan_rng.uniform(3.0, self.duration - 20), 1), "demote_cluster", "-", 0.0))
        elif self.standby_start and self.plan_rng.random() < 0.5:
            self.faults.append((round(self.plan_rng.uniform(3.0, self.duration - 20), 1), "promote_cluster", "-", 0.0))
        self.faults.sort()

    def _apply_faults(self) -> None:
        while self.faults and self.faults[0][0] <= self.now + 1e-9:
            _t, kind, who, length = self.faults.pop(0)
            holder = self.etcd.get(PREFIX + "leader")
            if who == LEADER:
                who = holder if holder in self.nodes else sorted(self.nodes)[0]
            node = self.nodes.get(who)
            if kind == "demote_cluster":
                self._governorctl(ctl_standby.demote_cluster, host=REMOTE, port=5432)
                self.is_standby = True
                self.note("demote-cluster")
                continue
            if kind == "promote_cluster":
                # the other site was demoted first (it stops taking writes), then promote-cluster here
                self.remote_live, self.remote.in_recovery = False, True
                self._governorctl(ctl_standby.promote_cluster)
                self.is_standby = False
                self.note("promote-cluster")
                continue
            if kind == "switchover":
                others = [n for n in self.nodes if n != holder]
                if holder:
                    self.ctl.request_switchover({"leader": holder, "candidate": self.rng.choice(others)})
                self.note(f"switchover requested from {holder}")
                continue
            if kind == "pause":
                self.ctl.set_paused(True)
                self.faults.append((round(self.now + length, 1), "resume", "-", 0.0))
                self.faults.sort()
                self.note(f"maintenance mode for {length}s")
                continue
            if kind == "resume":
                self.ctl.set_paused(False)
                continue
            if kind == "cut_all":
                for n in self.nodes.values():
                    n.cut_until = max(n.cut_until, self.now + length)
                self.note(f"etcd unreachable for everyone for {length}s")
                continue
            if kind in ("crash", "stop"):
                self._abandon(node)
            if kind == "crash":
                node.crashed_until = self.now + length
                self.stop_postgres(who, "immediate")
                node.g = None
            elif kind == "freeze":
                node.frozen_until = max(node.frozen_until, self.now + length)
            elif kind == "slow":
                node.slow_until = max(node.slow_until, self.now + length)
            elif kind == "cut":
                node.cut_until = max(node.cut_until, self.now + length)
            elif kind == "split":
                # the target loses the network to every other member (etcd still reaches both)
                for other in self.nodes:
                    if other != who:
                        pair = frozenset((who, other))
                        self.splits[pair] = max(self.splits.get(pair, 0.0), self.now + length)
            elif kind == "stall":
                node.pg.stalled_until = max(node.pg.stalled_until, self.now + length)
            elif kind == "clock":
                node.wall_offset += self.rng.choice([-1, 1]) * length     # a jump of the wall clock
            elif kind == "stop":
                if node.g is not None and self.now >= node.frozen_until:
                    node.elapsed = 0.0
                    with self.running(node):
                        shutdown(node.g)
                    node.g = None
                    node.crashed_until = self.now + length
            self.note(f"{kind} {who} for {length}s")

    def note(self, text: str) -> None:
        self.log.append(f"{self.now:6.1f} {text}")

    # -------------------------------------------------------------------------------- clients

    def _writes(self) -> None:
        if self.demote_flavour and not self.remote_live:
            if self.is_standby and self._demoted():
                # demote-cluster --wait returned and nothing here takes writes: the operator promotes
                # the other site, which streamed this cluster's WAL (perhaps not its last writes)
                tail = self.rng.choice([0, 0, 1, 2])
                self.remote.wal = self.last_primary_wal[:max(0, len(self.last_primary_wal) - tail)]
                self.max_timeline += 1
                self.remote.in_recovery, self.remote.timeline, self.remote_live = False, self.max_timeline, True
                self.note(f"the other site promoted with {len(self.remote.wal)} of {len(self.last_primary_wal)} "
                          "writes")
            else:
                self.remote.wal, self.remote.timeline = self.last_primary_wal, self.last_primary_timeline
        for pg in self.pgs.values():
            if self.accepts_writes(pg):
                self.write_id += 1
                pg.wal = pg.wal + (self.write_id,)
                if pg is not self.remote:
                    self.last_primary_wal, self.last_primary_timeline = pg.wal, pg.timeline
        self._acks()

    def _demoted(self) -> bool:
        """What demote-cluster --wait waits for (ctl_standby): the lock holder's member key says it runs
        as a replica, and its /status that it decided so under standby_cluster; and what the operator
        sees before promoting the other site: nothing here takes writes."""
        holder = self.etcd.get(PREFIX + "leader")
        node = self.nodes.get(holder or "")
        key = self.etcd.get(f"{PREFIX}members/{holder}") if holder else None
        member = Member.from_json(holder or "", key or "")
        if node is None or node.g is None or member.role != "replica" or member.state != "running":
            return False
        decided = ctl_standby.decided_standby(node.g.board.get().as_dict())
        return (decided or not self.wait_decision) and not any(
            self.accepts_writes(pg) for pg in self.pgs.values() if pg is not self.remote)

    def _acks(self) -> None:
        """A commit is acknowledged once what synchronous_standby_names asks for holds it."""
        for pg in self.pgs.values():
            if not self.accepts_writes(pg):
                continue
            need, names, anyof = pg.required()
            if need == 0:
                upto = pg.lsn
            else:
                holders = [self.pgs[n] for n in names if n in self.pgs and self.streams(self.pgs[n])
                           and self.pgs[n].upstream == pg.name]
                chosen = holders if anyof else holders[:need]
                have = sorted((o.lsn for o in chosen), reverse=True)
                upto = have[need - 1] if len(have) >= need else 0
            done = self.acked_upto.get(pg.name, 0)
            if pg is self.remote:
                continue
            for wid in pg.wal[done:upto]:
                self.acked.setdefault(wid, need > 0)
            self.acked_upto[pg.name] = max(done, upto)

    def _replicate(self) -> None:
        for pg in self.pgs.values():
            if self.streams(pg):
                up = self.pgs[pg.upstream]
                pg.wal, pg.timeline = up.wal, max(pg.timeline, up.timeline)

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
            node.elapsed = 0.0
            with self.running(node):
                deadline = node.g.fence.due()
                if deadline is not None:
                    node.g.fence.fire(deadline)

    def _pass(self, node: Node) -> None:
        node.elapsed = 0.0
        if self.now < node.slow_until:
            paused = PausedPass(node, lambda: clock.install(NodeClock(self, node)))
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
        if g.cluster is not None and g.watching is None:
            g.watching = g.dcs        # the sleep starts the watch (modelled by _etcd_changed)
        node.next_pass = self.now + node.elapsed + max(delay, 0.0)
        node.last_poll = self.now

    def _due(self, node: Node) -> bool:
        """Whether the member's sleep ends now: its time is up, its watch woke it, or its local poll
        (a PostgreSQL settling, a synchronous standby lost) saw a change."""
        g = node.g
        if self.now + 1e-9 >= node.next_pass or g.wake.is_set():
            return True
        poll = g._local_poll()
        if poll is None or self.now - node.last_poll + 1e-9 < poll:
            return False
        node.last_poll = self.now
        node.elapsed = 0.0
        with self.running(node):
            return g._local_change()

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

    # -------------------------------------------------------------------------------- run

    def run(self) -> None:
        quiet = logging.getLogger("governor")
        level = quiet.level
        quiet.setLevel(logging.CRITICAL + 1)
        try:
            self._run()
        except Violation as exc:
            raise Violation(f"seed {self.seed}: {exc}\n  faults: {self.schedule}\n  " + "\n  ".join(self.log[-25:])
                            ) from None
        finally:
            quiet.setLevel(level)
            for node in self.nodes.values():
                self._abandon(node)

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


def _b64(text: str) -> str:
    from tests.sim.etcd import b64
    return b64(text)


def _unb64(text: str) -> str:
    from tests.sim.etcd import unb64
    return unb64(text)


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
