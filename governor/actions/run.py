"""Starting PostgreSQL in its role, restarting it, pointing a standby at its upstream."""
from __future__ import annotations

import logging
from typing import TYPE_CHECKING

from governor import clock
from governor.actions.base import ActionFailed
from governor.ha import Decision, LocalState
from governor.postgres.controller import ControllerError
from governor.shutdown import before_stop

if TYPE_CHECKING:
    from governor.ports import ActionHost

log = logging.getLogger("governor")


def start_as_leader(g: ActionHost, decision: Decision, local: LocalState) -> None:
    """Restart in place under the lock. The wait is bounded by the lock (the next pass renews it
    while PostgreSQL comes up: lock_holder_starting); decide() gives the lock up after
    primary_start_timeout (start_timeout_release)."""
    # A replica data directory starts as a standby; the next loop promotes it under the lock.
    standby_of = () if g.disk.is_standby() else None
    g.prepare_files(standby_of)
    wait = g.config.primary_start_timeout - (local.starting_for or 0)
    if g.fence.deadline is not None:
        wait = min(wait, g.fence.deadline - g.fence.margin - 1 - clock.monotonic())
    log.info("starting PostgreSQL in place (this member holds the lock); waiting up to %.0fs", max(wait, 1.0))
    g.mem.settle(clock.monotonic())
    try:
        g.controller.start(max(wait, 1.0))
    except ControllerError as exc:
        raise ActionFailed(f"PostgreSQL is not up yet ({exc}); renewing the lock and waiting") from exc


def start_as_replica(g: ActionHost, decision: Decision, local: LocalState) -> None:
    g.start_postgres(standby_of=g.upstream(decision) or ())


def restart(g: ActionHost, decision: Decision, local: LocalState) -> None:
    standby_of = None if local.role == "primary" else (g.upstream(decision) or ())
    before_stop(g, local.role)
    g.server.close()
    g.controller.stop("fast", timeout=max(30.0, g.pg.start_timeout))
    g.prepare_files(standby_of)
    g.mem.settle(clock.monotonic())
    g.controller.start(g.pg.start_timeout)
    log.info("restart: PostgreSQL is running again as %s", local.role)
    g.callbacks.fire(g.config.callbacks, "on_restart", local.role or "replica")


def forget_scheduled_restart(g: ActionHost, decision: Decision, local: LocalState) -> None:
    """A due scheduled restart is attempted once: forgotten before it runs, failed or not."""
    g.mem.scheduled_restart = None


def follow(g: ActionHost, decision: Decision, local: LocalState) -> None:
    target = g.upstream(decision) or ()
    if decision.leader and not target:
        return  # the leader has not published its address yet
    if g.write_conf(standby_of=target):
        g.controller.reload()
        g.mem.settle(clock.monotonic())
        who = "the primary cluster" if decision.remote is not None else decision.leader
        log.info("now following %s", f"{who} at {target[0]}:{target[1]}" if target else "nobody")
