"""The leader's side of managed synchronous replication: keeps synchronous_standby_names and the
DCS `sync` promise in step (the rules are in governor/sync.py; this module does the I/O)."""
from __future__ import annotations

import logging
from typing import List, Optional, Protocol

from governor import clock, sync
from governor.cluster import Cluster
from governor.config import Config
from governor.dcs import DCS
from governor.memory import NodeMemory
from governor.postgres.controller import ProcessController
from governor.postgres.server import Server
from governor.sync import Standby, SyncState

log = logging.getLogger("governor")


class SyncHost(Protocol):
    """What the leader's synchronous replication manager (syncrep.py) uses."""
    name: str
    config: Config
    dcs: DCS
    server: Server
    controller: ProcessController
    mem: NodeMemory

    def write_conf(self, standby_of: Optional[tuple]) -> bool: ...


class PromiseNotWritten(Exception):
    """The `sync` key could not be written (lost compare-and-swap); nothing else was changed."""


class SyncManager:
    def __init__(self, governor: SyncHost):
        self.gov = governor
        self.applied: Optional[SyncState] = None   # what synchronous_standby_names waits for now
        self.names: Optional[str] = None            # its value; None: not managed (mode off)
        self.switch_lsn: Optional[int] = None       # our position when PostgreSQL took `applied`
        self.promoted_at: Optional[float] = None    # monotonic time of our promotion
        self.lost: frozenset = frozenset()          # synchronous standbys seen not streaming

    @property
    def grace(self) -> float:
        """After a promotion, the standbys need a moment to reconnect: non-strict mode does not
        give up on them (and fall back to asynchronous) before this many seconds."""
        return max(5.0, 2 * self.gov.config.loop_wait)

    @property
    def mode(self) -> str:
        return self.gov.config.synchronous_mode

    def reset(self) -> None:
        """Leadership ended: the next leadership starts from what the DCS says."""
        self.applied = None
        self.switch_lsn = None
        self.promoted_at = None
        self.lost = frozenset()
        self.names = "" if self.mode != "off" else None

    def eligible(self, cluster: Cluster, standbys: List[Standby]) -> List[Standby]:
        members = {m.name: m for m in cluster.members}
        return [s for s in standbys if s.name in members and s.name != self.gov.name
                and not members[s.name].tags.get("nosync")]

    def connected(self) -> List[Standby]:
        return [Standby(name, state == "streaming", flush) for name, state, _sync, _lag, flush
                in self.gov.server.replication()]

    def _write_promise(self, cluster: Cluster, promise: SyncState) -> None:
        current = cluster.sync
        if not self.gov.dcs.set_sync(promise, current.index if current else 0):
            raise PromiseNotWritten("the sync key changed meanwhile")

    def _apply(self, state: SyncState, standby: bool = False) -> None:
        self.names = sync.standby_names(self.mode, state)
        self.gov.write_conf(standby_of=self.gov.mem.conf_target if standby else None)
        self.gov.controller.reload()
        self.applied = state
        self.switch_lsn = None

    def before_promote(self, cluster: Cluster) -> None:
        """A replica about to be promoted in synchronous mode: promise, then configure, so that
        no commit after the promotion is acknowledged on this server alone. The promise names
        this member too: it alone may hold the last commits of the old leader until the
        others have caught up (non-strict mode drops to asynchronous later if nobody comes)."""
        if self.mode == "off":
            self.names = None
            return
        me, cfg = self.gov.name, self.gov.config
        others = tuple(sorted(m.name for m in cluster.members if m.name != me and not m.tags.get("nosync")))
        if others:
            state = SyncState(me, others, min(cfg.synchronous_node_count, len(others)))
            promise = SyncState(me, tuple(sorted(others + (me,))), 1)
        elif cfg.synchronous_mode_strict:
            state, promise = SyncState(me, (), 1), SyncState(me, (me,), 1)
        else:
            state = promise = SyncState(me, (), 0)
        self._write_promise(cluster, promise)
        self._apply(state, standby=True)    # still a standby: the setting counts once promoted
        self.promoted_at = clock.monotonic()
        log.info("synchronous replication from promotion on: %s", sync.describe(state))

    def manage(self, cluster: Cluster) -> None:
        """One step per loop towards the standby set the leader should wait for."""
        promise = cluster.sync
        ours = promise if promise is not None and promise.leader == self.gov.name else None
        if self.mode == "off":
            if self.names is not None:
                self.names = None
                self.gov.write_conf(standby_of=None)   # back to postgresql.parameters' own value
                self.gov.controller.reload()
                self.applied = None
                log.info("synchronous_mode off: synchronous_standby_names is no longer managed")
            if promise is not None and self.gov.dcs.delete_sync(promise.index):
                log.info("synchronous_mode off: removed the sync key; failover follows the asynchronous rules")
            return
        cfg = self.gov.config
        standbys = self.eligible(cluster, self.connected())
        # Unknown at the start of a process: PostgreSQL runs with what our promise covers.
        applied = self.applied or ours or SyncState(self.gov.name)
        target = sync.wanted(self.mode, cfg.synchronous_node_count, cfg.synchronous_mode_strict, self.gov.name,
                             standbys, applied)
        if not target.members and applied.members and self.promoted_at is not None \
                and clock.monotonic() - self.promoted_at < self.grace:
            target = applied    # just promoted: the standbys are still reconnecting
        if self.names is None or not _same(applied, target):
            needed = promise_for_change(ours, applied, target)
            if ours is None or not _same(ours, needed):
                self._write_promise(cluster, needed)      # step 1: the promise first
            self._apply(target)                           # step 2: then PostgreSQL
            if not _same(applied, target):
                log.info("synchronous replication: %s -> %s", sync.describe(applied), sync.describe(target))
            return
        if ours is not None and _same(ours, target):
            return
        if self.switch_lsn is None:
            # Walsenders take the reload within moments; from the next loop on, every commit
            # beyond this position waits for the new set.
            if self.gov.server.setting("synchronous_standby_names") == self.names:
                self.switch_lsn = self.gov.server.current_lsn()
            return
        if sync.caught_up(target, standbys, self.switch_lsn):
            self._write_promise(cluster, target)          # step 3: narrow the promise
            log.info("synchronous replication promise: %s", sync.describe(target))


    def hand_over(self, cluster: Optional[Cluster], streamed: List[str]) -> None:
        """After a clean shutdown of the leader: the standbys that were streaming have received
        every bit of WAL (PostgreSQL's fast shutdown waits for that), so each of them, and not
        this stopped member, holds every acknowledged commit. Say so before the lock is released:
        a promise naming this member would keep the others from taking over, and one naming
        only the synchronous standby would keep a switchover's other candidate from it."""
        promise = cluster.sync if cluster is not None else None
        if self.mode == "off" or promise is None or promise.leader != self.gov.name or not promise.synchronous:
            return
        members = {m.name for m in cluster.members if not m.tags.get("nosync")}
        names = tuple(sorted(n for n in streamed if n in members and n != self.gov.name))
        if not names:
            return
        handed = SyncState(self.gov.name, names, len(names))   # each of them has every commit
        if self.gov.dcs.set_sync(handed, promise.index):
            log.info("synchronous replication: %s received everything at shutdown; promise: %s",
                     ", ".join(names), sync.describe(handed))

    def needs_hand_over(self, cluster: Optional[Cluster]) -> bool:
        """Whether our promise names this member itself (just after a promotion): its clean stop
        must then hand over to standbys that streamed to the end, or nobody may take over."""
        promise = cluster.sync if cluster is not None else None
        return self.mode != "off" and promise is not None and promise.leader == self.gov.name \
            and promise.synchronous and self.gov.name in promise.members

    def streaming_standbys(self, cluster: Optional[Cluster], wait: float) -> List[str]:
        """The standbys streaming now; when a hand-over is needed and none streams yet (a stop
        right after a promotion, while they re-point), wait up to `wait` seconds for them."""
        deadline = clock.monotonic() + wait
        while True:
            names = self.streaming_names()
            if names or not self.needs_hand_over(cluster) or clock.monotonic() >= deadline:
                return names
            clock.sleep(0.1)

    def watches_standbys(self) -> bool:
        """Whether commits here wait for standbys: the leader then looks at them between passes."""
        return self.mode != "off" and self.applied is not None and bool(self.applied.members)

    def narrowing_pending(self) -> bool:
        """Our promise in etcd is wider than what PostgreSQL applies: a step of narrowing it
        (noting the switch position, then waiting for the standbys to pass it) is due, and
        nothing in etcd may change to wake the loop for it (an idle cluster writes no WAL)."""
        cluster = self.gov.cluster
        promise = cluster.sync if cluster is not None else None
        return self.applied is not None and promise is not None and promise.leader == self.gov.name \
            and not _same(promise, self.applied)

    def standby_lost(self) -> bool:
        """A standby that commits wait for stopped streaming (or replying) since the last look:
        the loop runs a pass at once instead of at the next loop_wait."""
        try:
            streaming = set(self.streaming_names(strict=True))
        except Exception:  # noqa: BLE001 - the pass that follows looks again
            return False
        lost = frozenset(m for m in (self.applied.members if self.applied else ()) if m not in streaming)
        changed = bool(lost) and lost != self.lost
        self.lost = lost
        return changed

    def streaming_names(self, strict: bool = False) -> List[str]:
        if strict:
            return [s.name for s in self.connected() if s.streaming]
        try:
            return [s.name for s in self.connected() if s.streaming]
        except Exception:  # noqa: BLE001 - best effort before a shutdown
            return []


def promise_for_change(ours: Optional[SyncState], applied: SyncState, target: SyncState) -> SyncState:
    """Step 1's promise for a change from `applied` to `target`. Towards a synchronous target, an
    asynchronous promise or setting (degraded mode) is left out: it promised nothing, and the
    commits PostgreSQL acknowledges once it waits for the target's standbys must be covered from
    the first one on (widening with quorum 0 would keep the promise asynchronous until step 3)."""
    states = [s for s in (ours, applied, target) if s is not None]
    if target.synchronous:
        states = [s for s in states if s.synchronous]
    return sync.widened(*states)


def _same(a: SyncState, b: SyncState) -> bool:
    return (a.members, a.quorum) == (b.members, b.quorum)
