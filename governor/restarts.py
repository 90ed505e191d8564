"""An operator's scheduled restart (`governorctl restart --scheduled`) as the decision sees it:
due or not, skipped, and the leader's wait for its replicas to go first. Pure, like ha.py."""
from __future__ import annotations

from typing import Optional

from governor.cluster import Cluster
from governor.hatypes import Action, Decision, LocalState

LEADER_RESTART_WAIT = 600.0   # seconds a due scheduled restart of the leader waits for its replicas'


def scheduled_restart(cluster: Cluster, local: LocalState, leader_name: Optional[str]) -> Optional[Decision]:
    """The operator's scheduled restart, when it is due (None: not due, or the leader waits)."""
    at = local.scheduled_restart
    if at is None or local.now < at:
        return None
    if not (local.running and local.role):
        return Decision("scheduled_restart_skipped", "the scheduled restart is due but PostgreSQL is not running: "
                        "its next start applies every setting anyway", (Action.FORGET_SCHEDULED_RESTART,))
    if local.scheduled_pending_only and not local.pending_restart:
        return Decision("scheduled_restart_skipped", "the scheduled restart is due but no changed setting waits "
                        "for one: PostgreSQL left running", (Action.FORGET_SCHEDULED_RESTART,))
    if leader_name == local.name:
        if local.now < at + LEADER_RESTART_WAIT and any(
                m.name != local.name and m.state == "running" and m.scheduled_restart is not None
                and m.scheduled_restart <= at for m in cluster.members):
            return None
        return Decision("scheduled_restart_due", "scheduled restart: restarting PostgreSQL in place, keeping the "
                        "leader lock", (Action.RENEW_LOCK, Action.FORGET_SCHEDULED_RESTART, Action.RESTART),
                        leader=leader_name)
    return Decision("scheduled_restart_due", "scheduled restart: restarting PostgreSQL",
                    (Action.FORGET_SCHEDULED_RESTART, Action.RESTART), leader=leader_name)
