"""Stopping governor: a clean stop hands the lock over; a restart for a package upgrade leaves
PostgreSQL and the lock to the next governor process."""
from __future__ import annotations

import logging
import os
from dataclasses import replace
from typing import TYPE_CHECKING, Optional

from governor import clock
from governor.cluster import Cluster
from governor.dcs import DCSError
from governor.postgres.controller import ControllerError
from governor.supervisor import parent_died

if TYPE_CHECKING:
    from governor.ports import ActionHost, NodeHost

log = logging.getLogger("governor")

RESTART_MARKER = "restart-keep-postgres"
RESTART_MARKER_MAX_AGE = 120.0
HANDOVER_WAIT = 5.0    # seconds a clean stop waits for a standby to stream when it must hand over


def before_stop(g: ActionHost, role: Optional[str]) -> None:
    """The before_stop callback, waited for within its timeout and, while this member holds the
    lock (PostgreSQL may be a writable primary), within what the lock leaves before the fence
    would act: nothing renews the lock meanwhile. Its exit status changes nothing."""
    left = g.lock.left()
    limit = g.config.callbacks.timeout if left is None else left - g.fence.margin - g.config.retry_timeout
    if limit >= 0.5:
        g.callbacks.wait(g.config.callbacks, "before_stop", role or "replica", limit)


def consume_restart_marker(max_age: float) -> bool:
    """The package's postinst drops RESTART_MARKER into the unit's RuntimeDirectory before it
    restarts governor. True when a marker younger than `max_age` seconds was there; it is
    removed either way."""
    runtime = os.environ.get("RUNTIME_DIRECTORY", "").split(":")[0]
    if not runtime:
        return False
    path = os.path.join(runtime, RESTART_MARKER)
    try:
        age = clock.wall() - os.stat(path).st_mtime
        os.unlink(path)
    except OSError:
        return False
    return age <= max_age


def shutdown(g: NodeHost) -> None:
    """Clean stop: PostgreSQL first, then the lock, so a replica can take over at once."""
    g.notify.stopping()
    if parent_died(g.supervisor):
        log.error("its supervising parent process died (PID %s was killed): stopping governor as on SIGTERM, "
                  "PostgreSQL first, so it does not outlive governor", g.supervisor)
    if consume_restart_marker(max_age=RESTART_MARKER_MAX_AGE):
        stop_for_restart(g, )
        return
    # Health checks fail from now on, so load balancers stop sending new sessions here.
    g.board.set(replace(g.board.get(), state="stopping", holds_lock=False, lock_deadline=None))
    log.info("shutting down: stopping PostgreSQL")
    # Right after a promotion the standbys may still be re-pointing: wait briefly for them, so
    # the hand-over below can name them (HANDOVER_WAIT).
    cluster = fresh_cluster(g) if g.mem.holds_lock else None
    streamed = g.syncrep.streaming_standbys(cluster, HANDOVER_WAIT) if g.mem.holds_lock else []
    role = g.mem.pg_seen if g.mem.pg_seen in ("primary", "replica") else None
    if role is not None:
        before_stop(g, role)
    try:
        g.controller.stop("fast", timeout=max(30.0, g.pg.start_timeout))
    except ControllerError as exc:
        log.error("could not stop PostgreSQL cleanly (%s); stopping it immediately", exc)
        try:
            g.controller.stop("immediate")
        except ControllerError as exc2:
            log.error("PostgreSQL did not stop: %s; keeping the lock so no second primary appears", exc2)
            return
    g.server.close()
    if g.mem.holds_lock:
        try:
            g.syncrep.hand_over(cluster, streamed)
        except DCSError as exc:
            log.warning("could not update the sync key: %s", exc)
        g.lock.give_up()
    try:
        if g.mem.name_is_ours:     # never the key of another governor that uses our name
            g.dcs.delete_member(g.name)
    except DCSError as exc:
        log.warning("could not remove the member key (%s); it expires after ttl", exc)
    if role is not None:    # waited for: governor exits next (the lock is already handed over)
        g.callbacks.wait(g.config.callbacks, "on_stop", role, g.config.callbacks.timeout)
    g.dcs.close()
    if g.api:
        g.api.stop()
    if g.metrics:
        g.metrics.stop()
    log.info("governor stopped")


def fresh_cluster(g: NodeHost) -> Optional[Cluster]:
    """The cluster as etcd holds it now: a stop may come right after a promotion, whose own
    promise the last pass's snapshot does not show yet."""
    try:
        return g.dcs.get_cluster()
    except DCSError as exc:
        log.warning("could not read etcd before stopping (%s); using the last pass's view", exc)
        return g.cluster


def stop_for_restart(g: NodeHost) -> None:
    """A package upgrade restarts governor: exit leaving PostgreSQL running and the lock and
    member key in place, for the new governor to pick up within seconds. Should it not come
    up, systemd's ExecStopPost fence (start failure) or watchdog (hang) stops PostgreSQL."""
    log.warning("restarting for a package upgrade: leaving PostgreSQL running%s; the new governor "
                "takes over", " and the leader lock held" if g.mem.holds_lock else "")
    g.server.close()
    g.dcs.close()
    if g.api:
        g.api.stop()
    if g.metrics:
        g.metrics.stop()
