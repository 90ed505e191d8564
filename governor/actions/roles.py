"""Changing role: promotion, demotion, stepping down for a switchover, pg_rewind."""
from __future__ import annotations

import logging
import time
from dataclasses import replace
from typing import TYPE_CHECKING, Optional

from governor import clock, standby
from governor.actions.base import ActionFailed
from governor.actions.leader import create_member_slots
from governor.dcs import DCSError
from governor.ha import Action, Decision, LocalState
from governor.postgres import bootstrap as pgbootstrap
from governor.postgres.controller import ControllerError
from governor.shutdown import HANDOVER_WAIT, before_stop
from governor.syncrep import PromiseNotWritten

if TYPE_CHECKING:
    from governor.ports import ActionHost

log = logging.getLogger("governor")


def promote(g: ActionHost, decision: Decision, local: LocalState) -> None:
    if Action.ACQUIRE_LOCK not in decision.actions and standby.of(g.dcs.get_cluster())[0]:
        # Decided on a snapshot read before demote-cluster (acquire_lock re-reads for the race).
        raise ActionFailed("standby_cluster was set since the decision: not promoting")
    log.info("promoting: %s", decision.message)
    pre_promote(g)
    if g.cluster is not None:
        try:
            g.syncrep.before_promote(g.cluster)
        except PromiseNotWritten as exc:
            raise ActionFailed(f"not promoting: {exc}") from exc
    create_member_slots(g)
    if not g.server.promote():
        raise ActionFailed("pg_promote() did not finish in time")
    state = g.server.state()
    g.announce(replace(local, running=True, role="primary", timeline=state.timeline, lsn=state.lsn), decision, state)
    log.info("promoted: this member is now the primary on timeline %s", state.timeline)
    g.write_conf(standby_of=None)
    if g.cluster is not None and g.cluster.switchover and g.cluster.switchover.candidate == g.name:
        try:
            g.dcs.clear_switchover()
        except DCSError as exc:
            log.warning("could not clear the switchover request (it expires by itself): %s", exc)
    if g.metrics:
        g.metrics.promotions.inc()
        if decision.failover:
            g.metrics.failovers.inc()
    record_promotion(g, state.timeline, local.lsn, decision)
    # The control file only shows the new timeline after a checkpoint; pg_rewind on the old
    # primary reads it there and would otherwise think no rewind is needed.
    g.server.checkpoint()


def pre_promote(g: ActionHost) -> None:
    """The operator's pre_promote callback, under the lock, before anything changes: a non-zero
    exit (or none within its time) gives the lock back and keeps this member from racing for
    ttl; success renews the lock, so the promotion starts with all of it."""
    if g.config.callbacks.command("pre_promote") is None:
        return
    left = g.lock.left()
    limit = (left if left is not None else g.config.etcd.ttl) - g.config.retry_timeout - 1
    if limit < 1:
        raise ActionFailed("no time left under the lock for the pre_promote callback; renewing first")
    with g.notify.keep_alive_while("running the pre_promote callback"):     # PostgreSQL is a standby meanwhile
        code = g.callbacks.wait(g.config.callbacks, "pre_promote", "primary", limit)
    if code != 0:
        g.mem.pre_promote_veto_until = clock.monotonic() + g.config.etcd.ttl
        if g.cluster is not None and g.cluster.switchover and g.cluster.switchover.candidate == g.name:
            try:
                g.dcs.clear_switchover()
            except DCSError as exc:
                log.warning("could not clear the switchover request (it expires by itself): %s", exc)
        g.lock.give_up()
        raise ActionFailed(f"the pre_promote callback {'exited ' + str(code) if code else 'did not finish'}: not "
                           f"promoting; gave the lock back and will not race for {g.config.etcd.ttl}s")
    sent = clock.monotonic()
    if not g.dcs.renew_leader(g.name):
        g.lock.lost()
        raise ActionFailed("the leader lock was lost while the pre_promote callback ran")
    g.lock.taken(sent)


def record_promotion(g: ActionHost, timeline: Optional[int], lsn: Optional[int], decision: Decision) -> None:
    when = time.strftime("%Y-%m-%dT%H:%M:%S%z", time.localtime(clock.wall()))
    entry = {"timeline": timeline, "lsn": lsn, "time": when,
             "leader": g.name, "reason": decision.summary}
    try:
        g.dcs.append_history(entry)
    except DCSError as exc:
        log.warning("could not record the promotion in the history key: %s", exc)


def demote(g: ActionHost, decision: Decision, local: LocalState) -> None:
    """Stop a primary that must no longer be one. What follows (pg_rewind, starting as a standby)
    are decide()'s next actions, each its own executor."""
    log.warning("demoting: %s", decision.message)
    if g.metrics:
        g.metrics.demotions.inc()
    g.lock.lost(keep_fence=True)
    g.mem.rewind_pending = True
    # A fast shutdown waits until the standbys received all WAL: that may be what can no longer
    # be reached. It gets until the lock fence's moment at most, then stops hard.
    budget = g.config.retry_timeout
    if g.fence.deadline is not None:
        budget = min(budget, g.fence.deadline - g.fence.margin - clock.monotonic())
    g.server.close()
    try:
        if budget < 1:
            raise ControllerError("no time left for a fast shutdown before the lock expires")
        g.controller.stop("fast", timeout=budget)
    except ControllerError as exc:
        log.error("fast shutdown did not finish (%s); stopping PostgreSQL immediately", exc)
        g.controller.stop("immediate")
    g.lock.stand_down()
    g.announce(replace(local, running=False, role=None), decision, None)
    log.info("demoted: PostgreSQL stopped%s", f"; next: pg_rewind against {decision.leader}"
             if decision.leader else "")


def step_down(g: ActionHost, decision: Decision, local: LocalState) -> None:
    """Switchover, leader side: a fast shutdown waits until connected standbys received all
    WAL up to the shutdown checkpoint; only then is the lock released for the candidate."""
    log.warning("switchover: %s", decision.message)
    g.mem.rewind_pending = True
    streamed = g.syncrep.streaming_standbys(g.cluster, HANDOVER_WAIT)
    before_stop(g, local.role)
    g.controller.stop("fast", timeout=max(30.0, g.pg.start_timeout))
    g.server.close()
    try:
        g.syncrep.hand_over(g.cluster, streamed)
    except DCSError as exc:
        log.warning("switchover: could not update the sync key: %s", exc)
    g.lock.give_up()
    g.announce(replace(local, running=False, role=None), decision, None)
    log.info("switchover: PostgreSQL stopped and lock released for %s", decision.leader)


def rewind(g: ActionHost, decision: Decision, local: LocalState) -> None:
    target = g.upstream(decision)
    if target is None:
        raise ActionFailed(f"leader {decision.leader} has published no address")
    if g.controller.is_running():
        if not g.peers.reachable(target[0], target[1]):
            # pg_rewind needs the leader; stopping a running replica for a rewind that cannot
            # happen (the leader died and its lock has not expired yet) only makes it unreadable.
            raise ActionFailed(f"leader {decision.leader} at {target[0]}:{target[1]} does not answer; not "
                               "stopping PostgreSQL for pg_rewind")
        g.server.close()
        g.controller.stop("fast")
    run_rewind(g, decision.leader or "the primary cluster", tuple(target[:2]))


def run_rewind(g: ActionHost, leader: Optional[str], target: tuple) -> None:
    """Bring a stopped former primary onto the leader's timeline. When pg_rewind fails and the
    leader does not accept the superuser's connection either, nothing was learnt about this data
    directory: the attempt is retried (after the loop's back-off). Any other failure marks the
    rewind failed; decide() then re-clones (rewind_failed_reclone) if the operator allowed it,
    or waits for the operator (rewind_failed_wait)."""
    if not g.pg.use_pg_rewind or not g.pg.superuser.password:
        why = "use_pg_rewind is off" if not g.pg.use_pg_rewind else \
            "postgresql.superuser.password is not set, so pg_rewind cannot connect to the leader"
        log.warning("not checking this former primary with pg_rewind (%s); if its timeline diverged "
                    "it will not stream", why)
        g.mem.rewind_pending = False
        return
    log.info("pg_rewind from %s at %s:%s", leader, *target)
    try:
        with g.notify.keep_alive_while(f"pg_rewind from {leader}"):
            result = g.disk.rewind(*target)
    except pgbootstrap.BootstrapError as exc:
        refused = g.disk.source_refuses(*target)
        if refused:
            raise ActionFailed(f"{exc}; the leader does not accept pg_rewind's connection ({refused}): "
                               "trying again") from exc
        g.mem.rewind_failed = True
        raise ActionFailed(f"pg_rewind failed: {exc}") from exc
    g.data_replaced()
    log.info("pg_rewind: %s", result.replace("pg_rewind: ", ""))
