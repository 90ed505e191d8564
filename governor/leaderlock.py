"""This member's hold on the leader lock, as it knows it: taken or renewed (the deadline the lock
fence and the watchdog then guard), lost, given up. One object, so the executors and the loop keep
the lock, the fence and the watchdog in step through it alone."""
from __future__ import annotations

import logging
from typing import Optional, Protocol

from governor import clock
from governor.actions.base import ActionFailed
from governor.config import Config, PostgresConfig
from governor.dcs import DCS, DCSError
from governor.lockfence import LockFence, stop_postmaster_now
from governor.memory import NodeMemory
from governor.postgres.server import ServerState
from governor.syncrep import SyncManager
from governor.watchdog import Watchdog

log = logging.getLogger("governor")


class LockHost(Protocol):
    """What the lock bookkeeping reads of the daemon (its etcd client and configuration may be
    replaced by a reload)."""
    name: str
    pg: PostgresConfig
    config: Config
    dcs: DCS
    mem: NodeMemory
    fence: LockFence
    watchdog: Watchdog
    syncrep: SyncManager
    server_state: Optional[ServerState]


class LeaderLock:
    def __init__(self, host: LockHost):
        self.host = host

    def left(self) -> Optional[float]:
        """Seconds before our lock expires, as this member knows it; None when it holds none."""
        mem = self.host.mem
        if not mem.holds_lock or mem.lock_deadline is None:
            return None
        return mem.lock_deadline - clock.monotonic()

    def too_close_to_expiry(self) -> bool:
        """After a failed etcd call, no new call is started that could outlast our lock: the pass
        goes on without a snapshot and decide() demotes (lock_expiring_demote)."""
        left = self.left()
        return self.host.mem.dcs_failed and left is not None and left <= self.host.config.retry_timeout + 1

    def taken(self, sent: float, fence: bool = True) -> None:
        """Taken or renewed by a request sent at `sent`. `fence` False: a standby cluster's lock, which
        guards no writable server; the lock fence and watchdog stand down rather than stop a standby
        when the lock lapses."""
        h = self.host
        # etcd starts the TTL when it applies the write, which is after we sent it: counting from
        # the send time errs on the safe side.
        h.mem.holds_lock = True
        h.mem.lock_deadline = h.dcs.lock_expires(sent, h.config.etcd.ttl)
        if not fence:
            self.stand_down()
            return
        h.fence.arm(h.mem.lock_deadline)
        if not h.watchdog.keepalive(h.mem.lock_deadline, max(0.5, h.fence.margin / 4)):
            # watchdog.mode required and the device cannot be armed: no leading without it.
            if h.server_state is not None and h.server_state.role == "primary":
                stop_postmaster_now(h.pg.data_dir)
                log.error("stopped PostgreSQL: it must not stay primary without the watchdog")
            self.give_up()
            raise ActionFailed(f"watchdog.mode is required and {h.config.watchdog.device} cannot be armed")

    def lost(self, keep_fence: bool = False) -> None:
        """The lock is no longer ours. `keep_fence`: PostgreSQL may still be primary (a demotion is
        about to stop it), so the lock fence stays armed with the old deadline until it has."""
        h = self.host
        h.mem.holds_lock = False
        h.mem.roles_checked = False
        h.syncrep.reset()
        if not keep_fence:
            self.stand_down()

    def stand_down(self) -> None:
        """PostgreSQL is no longer primary under our lock: the lock fence and watchdog stand down."""
        self.host.fence.disarm()
        self.host.watchdog.disarm()

    def give_up(self) -> None:
        """Release the lock in etcd (it expires after ttl if that fails) and count it lost."""
        try:
            if self.host.dcs.release_leader(self.host.name):
                log.info("released the leader lock")
        except DCSError as exc:
            log.warning("could not release the leader lock (%s); it expires after ttl", exc)
        self.lost()
