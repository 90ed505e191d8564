"""The simulator's PostgreSQL model in real time, behind real governor daemons on a real etcd:
the members of bench/fleet.py beyond what this machine can run as real PostgreSQL (issue 38).

A LiveCluster is one cluster's world. Its members are the real `Governor`: its real loop
(`Governor.loop`: pass, back-off, sleep with the etcd watch), its lock fence thread and its real
etcd v3 adapter talking HTTP to the etcd given; only PostgreSQL (sim/postgres.py's model) and the
other members' APIs (their status boards, read in-process) are simulated, and the clock is the
real one. The members' loops run in threads of their own, so every touch of the model happens
under the cluster's lock. Nothing fails in the model by chance: a promotion is a failover only
when a leader was crashed on purpose.
"""
from __future__ import annotations

import functools
import threading
import time
from typing import Callable, Dict, List, Optional

from governor import config as config_mod
from governor import vouch
from governor.config import Config
from governor.daemon import Governor
from governor.dcs.etcd3 import Etcd3
from tests.sim.node import Node, SimPeers
from tests.sim.postgres import SYSID, Pg, SimController, SimDisk, SimServer
from tests.sim.replication import Replication

Observer = Callable[[str, float, bool], None]


def member_config(scope: str, name: str, etcd_hosts: str, ttl: int, loop_wait: int, retry_timeout: int) -> Config:
    """A member's configuration (validated by the real code); nothing is written to its data
    directory (the model is the disk)."""
    hosts = etcd_hosts.split(",")
    raw = {"etcd": {"scope": scope, "ttl": ttl, "host": hosts if len(hosts) > 1 else hosts[0]}, "loop_wait": loop_wait,
           "retry_timeout": retry_timeout,
           "postgresql": {"name": name, "data_dir": f"/tmp/governor-fleet-{scope}-{name}",
                          "bin_dir": "/usr/lib/postgresql/15/bin", "connect_address": f"{name}:5432",
                          "listen": "127.0.0.1:5432", "use_pg_rewind": True,
                          "replication": {"username": "replicator", "password": "r"},
                          "superuser": {"username": "postgres", "password": "s"}},
           "restapi": {"listen": "127.0.0.1:8008", "connect_address": f"{name}:8008"},
           "metrics": {"enabled": False}}
    return config_mod.validate(raw, {}, f"fleet model {scope}/{name}")


class NeverFails:
    """The model's chance: promotions finish, rewinds succeed."""

    @staticmethod
    def random() -> float:
        return 1.0


def _locked(cls: type) -> type:
    """A subclass of a model port whose every method runs under the cluster's lock."""
    def wrap(method: Callable) -> Callable:
        @functools.wraps(method)
        def call(self, *args, **kwargs):
            with self.world.lock:
                return method(self, *args, **kwargs)
        return call
    names = {n for klass in cls.__mro__ if klass is not object for n, v in vars(klass).items()
             if callable(v) and not n.startswith("__")}
    return type(f"Locked{cls.__name__}", (cls,), {n: wrap(getattr(cls, n)) for n in names})


LockedServer, LockedController, LockedDisk = _locked(SimServer), _locked(SimController), _locked(SimDisk)


class LivePeers(SimPeers):
    """The other members, answering in real time (the clock is the real one)."""

    def _answer(self, asker: Node, node: Node, body: dict) -> int:
        return vouch.answer(node.g, body)[0]


class LiveCluster(Replication):
    """One cluster: a primary and its standbys streaming from it, then real members that find
    them so (the first takes the lock: its server is the one that takes writes)."""

    def __init__(self, scope: str, etcd_hosts: str, ttl: int = 30, loop_wait: int = 10, retry_timeout: int = 10,
                 members: int = 3, observer: Optional[Observer] = None):
        self.scope = scope
        self.lock = threading.RLock()
        self.rng = NeverFails()
        self.rewind_failure = 0.0
        self.splits: Dict[frozenset, float] = {}
        self.acked: Dict[int, bool] = {}
        self.acked_upto: Dict[str, int] = {}
        self.max_timeline = 1
        self.write_id = 1            # the first write: what initdb and the base backup hold
        self.promotions = 0
        self.violations: List[str] = []
        self.events: List[str] = []
        self.pgs: Dict[str, Pg] = {}
        self.nodes: Dict[str, Node] = {}
        self.threads: Dict[str, threading.Thread] = {}
        names = [f"m{i}" for i in range(members)]
        for i, name in enumerate(names):
            pg = self.pgs[name] = Pg(name, wal=(1,), standby_signal=i > 0, last_primary=i == 0,
                                     conf_upstream=None if i == 0 else names[0])
            self.nodes[name] = Node(name, pg)
            SimController(self, pg).start(60)
        for name in names:
            self._build(self.nodes[name], etcd_hosts, ttl, loop_wait, retry_timeout, observer)

    @property
    def now(self) -> float:
        return time.monotonic()

    def _build(self, node: Node, etcd_hosts: str, ttl: int, loop_wait: int, retry_timeout: int,
               observer: Optional[Observer]) -> None:
        cfg = member_config(self.scope, node.name, etcd_hosts, ttl, loop_wait, retry_timeout)
        dcs = Etcd3(cfg.etcd, retry_timeout=cfg.retry_timeout)
        dcs.observer = observer
        g = Governor(cfg, dcs=dcs, controller=LockedController(self, node.pg), server=LockedServer(self, node.pg),
                     disk=LockedDisk(self, node.pg), peers=LivePeers(self, node.name), report=lambda deadline: None)
        g.fence.stop = lambda: self._fence_stop(node)
        g.mem.name_is_ours = True
        node.g = g

    # ------------------------------------------------------------------ run

    def initialize(self) -> None:
        """The initialize key, as the member that bootstrapped would have written it."""
        dcs = next(iter(self.nodes.values())).g.dcs
        if dcs.claim_initialize():
            dcs.set_initialize(SYSID)

    def start(self) -> None:
        for node in self.nodes.values():
            thread = threading.Thread(target=self._run, args=(node,), name=f"{self.scope}/{node.name}", daemon=True)
            self.threads[node.name] = thread
            thread.start()

    @staticmethod
    def _run(node: Node) -> None:
        node.g.fence.start()
        node.g.loop()

    def stop(self) -> None:
        for node in self.nodes.values():
            node.g.stopping.set()
            node.g.wake.set()
        for thread in self.threads.values():
            thread.join(30)
        for node in self.nodes.values():
            node.g.dcs.close()

    def crash(self, name: str) -> None:
        """The host dies: its server stops taking writes now, its governor stops where it is (no
        shutdown: the lock is left to expire)."""
        node = self.nodes[name]
        with self.lock:
            node.crashed_until = float("inf")
            self.stop_postgres(name, "immediate")
        node.g.stopping.set()
        node.g.wake.set()
        node.g.dcs.close()

    def tick(self, writes: bool) -> None:
        """What happens between passes: the primary takes a write (if asked), the standbys stream."""
        with self.lock:
            for pg in self.pgs.values():
                if writes and self.accepts_writes(pg):
                    self.write_id += 1
                    pg.wal = pg.wal + (self.write_id,)
            self._replicate()

    # ------------------------------------------------------------------ what members report

    def holder(self) -> Optional[str]:
        """The member that believes it holds the lock, and whose server takes writes."""
        for node in self.nodes.values():
            if node.crashed_until == 0.0 and node.g.mem.holds_lock and self.accepts_writes(node.pg):
                return node.name
        return None

    def writable(self) -> List[str]:
        with self.lock:
            return [pg.name for pg in self.pgs.values() if self.accepts_writes(pg)]

    # ------------------------------------------------------------------ the model asks

    def note(self, text: str) -> None:
        self.events.append(f"{time.strftime('%H:%M:%S')} {self.scope}: {text}")

    def _check_promotion(self, pg: Pg) -> None:
        self.promotions += 1

    def _check_one_writer(self) -> None:
        writers = [pg.name for pg in self.pgs.values() if self.accepts_writes(pg)]
        if len(writers) > 1:
            self.violations.append(f"{self.scope}: two writable servers {writers}")

    def _fence_stop(self, node: Node) -> Optional[int]:
        with self.lock:
            return super()._fence_stop(node)
