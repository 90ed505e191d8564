"""A simulated host: its governor (the real daemon, built by the world), its PostgreSQL model, its
clock, and the peers port through which its governor reaches the other hosts."""
from __future__ import annotations

import functools
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Dict, List, Optional, Tuple

from governor import config as config_mod
from governor.config import Config
from governor.daemon import Governor
from governor.peers import member_from_status
from tests.sim.passes import PausedPass
from tests.sim.postgres import SYSID, Pg

if TYPE_CHECKING:
    from tests.sim.world import World

SCOPE = "sim"
PREFIX = f"/service/{SCOPE}/"
BIN_DIR = "/usr/lib/postgresql/15/bin"


@functools.lru_cache(maxsize=256)
def member_config(name: str, ttl: int, loop_wait: int, retry_timeout: int, max_lag: int, failsafe_mode: bool,
                  synchronous: bool, reclone: bool = True, tags: Tuple[str, ...] = (),
                  pre_promote: bool = False) -> Config:
    """A member's configuration, as its files would say it (validated by the real code)."""
    raw = {"etcd": {"scope": SCOPE, "ttl": ttl, "host": "etcd:2379"}, "loop_wait": loop_wait,
           "retry_timeout": retry_timeout, "failsafe_mode": failsafe_mode, "synchronous_mode": synchronous,
           "postgresql": {"name": name, "data_dir": f"/tmp/governor-sim-{name}", "bin_dir": BIN_DIR,
                          "connect_address": f"{name}:5432", "listen": "0.0.0.0:5432",
                          "maximum_lag_on_failover": max_lag, "use_pg_rewind": True,
                          "remove_data_directory_on_rewind_failure": reclone,
                          "replication": {"username": "replicator", "password": "r"},
                          "superuser": {"username": "postgres", "password": "s"}},
           "restapi": {"listen": "127.0.0.1:8008", "connect_address": f"{name}:8008"},
           "metrics": {"enabled": False}, "tags": {tag: True for tag in tags}}
    if pre_promote:
        raw["callbacks"] = {"pre_promote": "/bin/true"}     # what it answers is the world's (World._callback)
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
    slow_read_until: float = 0.0         # its passes pause while reading PostgreSQL's state
    paused: Optional[PausedPass] = None
    last_case: str = ""                  # the decision of its last pass (the trace shows changes)
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

    def ask_all(self, members: Dict[str, str], servers: List[Tuple[str, int]], pg: object, sysid: str,
                cafile: Optional[str]) -> Tuple[Dict[str, object], List[Optional[bool]]]:
        return ({name: self.status(url, name, cafile) for name, url in members.items()},
                [self.writable(pg, host, port, sysid) for host, port in servers])

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
        asker = self.world.nodes[self.me]
        refused = []
        for name in members:
            node = self._answering(name)
            if node is None:
                refused.append(f"{name}: no answer within {timeout:g}s")
                continue
            code = self._answer(asker, node, {"leader": leader, "sysid": sysid})
            if code != 200:
                refused.append(f"{name}: answered {code}")
        if any("no answer" in r for r in refused):
            asker.elapsed += timeout          # the round waited for the silent ones
        return refused

    def _answer(self, asker: Node, node: Node, body: dict) -> int:
        """The member's real answer to POST /failsafe. The request arrives when the asker sends
        it: its pass may already have spent time (etcd timeouts) that the world has not; the
        promise counts from then."""
        from governor import vouch
        node.elapsed = asker.elapsed
        with self.world.running(node):
            return vouch.answer(node.g, body)[0]
