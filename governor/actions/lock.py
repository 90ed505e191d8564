"""The leader lock: take it, renew it, give it up."""
from __future__ import annotations

import logging
from typing import TYPE_CHECKING

from governor import clock, standby, vouch
from governor.actions.base import ActionFailed
from governor.cluster import Cluster
from governor.ha import Action, Decision, LocalState

if TYPE_CHECKING:
    from governor.ports import ActionHost

log = logging.getLogger("governor")


def acquire_lock(g: ActionHost, decision: Decision, local: LocalState) -> None:
    promised = vouch.start_racing(g)
    if promised is not None:
        raise ActionFailed(f"this member vouched for {promised} (failsafe) after deciding to race: not taking the lock")
    sent = clock.monotonic()
    if not g.dcs.acquire_leader(g.name):
        raise ActionFailed("another member took the leader lock first")
    g.mem.published_lsn = None     # publish our position as the new leader's, even if unchanged
    g.lock.taken(sent, fence=decision.remote is None)
    log.info("acquired the leader lock%s", " (standby leader)" if decision.remote is not None else "")
    if Action.PROMOTE in decision.actions and g.cluster is not None:
        _still_eligible(g, g.cluster)


def _still_eligible(g: ActionHost, seen: Cluster) -> None:
    """The promotion was decided on a snapshot read before the lock was taken; on a slow host
    another member may have led and written meanwhile (its position, a promotion in `history`).
    Holding the lock now, nothing else can change that: read again, and if the positions the
    decision rested on moved, give the lock back instead of promoting on stale knowledge."""
    fresh = g.dcs.get_cluster()
    if (fresh.leader_lsn, fresh.history, fresh.sync) != (seen.leader_lsn, seen.history, seen.sync) \
            or standby.of(fresh) != standby.of(seen):
        g.lock.give_up()
        raise ActionFailed("the leader position, history or standby_cluster setting changed between the decision "
                           "and taking the lock; released it to decide again")


def renew_lock(g: ActionHost, decision: Decision, local: LocalState) -> None:
    sent = clock.monotonic()
    if not g.dcs.renew_leader(g.name):
        # PostgreSQL is still primary: its fence keeps the deadline it has (the lock's, or the
        # failsafe promises'), so it cannot outlive what binds the others if this member is slow
        # to take the lock back or to demote.
        g.lock.lost(keep_fence=local.role == "primary")
        raise ActionFailed("the leader lock is no longer ours")
    g.lock.taken(sent, fence=decision.remote is None)


def release_lock(g: ActionHost, decision: Decision, local: LocalState) -> None:
    log.error("%s", decision.message)
    try:
        g.controller.stop("immediate")
    finally:
        g.lock.give_up()
        g.mem.leader_start_since = None
