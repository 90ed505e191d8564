"""One executor per Action, in one table.

Each executor carries out its action's I/O for the daemon (the `g` argument: its DCS client,
process controller, SQL connection, notifier, metrics, configuration and NodeMemory) and raises
ActionFailed, or an I/O error, when it could not; the policy of when to run it is decide()'s.
"""
from __future__ import annotations

from typing import TYPE_CHECKING, Callable, Dict

from governor.actions import failsafe, leader, lock, roles, run, setup, upgrade, upgrade_link
from governor.actions.base import ActionFailed
from governor.ha import Action, Decision, LocalState

if TYPE_CHECKING:
    from governor.ports import ActionHost

Executor = Callable[["ActionHost", Decision, LocalState], None]

EXECUTORS: Dict[Action, Executor] = {
    Action.BOOTSTRAP: setup.bootstrap,
    Action.CLAIM_INITIALIZE: setup.claim_initialize,
    Action.CLONE: setup.clone,
    Action.REPLICA_SLOTS: leader.replica_slots,
    Action.REINITIALIZE: setup.reinitialize,
    Action.START_AS_LEADER: run.start_as_leader,
    Action.START_AS_REPLICA: run.start_as_replica,
    Action.RESTART: run.restart,
    Action.FORGET_SCHEDULED_RESTART: run.forget_scheduled_restart,
    Action.FOLLOW: run.follow,
    Action.ACQUIRE_LOCK: lock.acquire_lock,
    Action.RENEW_LOCK: lock.renew_lock,
    Action.RELEASE_LOCK: lock.release_lock,
    Action.PROMOTE: roles.promote,
    Action.DEMOTE: roles.demote,
    Action.STEP_DOWN: roles.step_down,
    Action.REWIND: roles.rewind,
    Action.ENSURE_SLOTS: leader.ensure_slots,
    Action.MANAGE_SYNC: leader.manage_sync,
    Action.FAILSAFE_HOLD: failsafe.failsafe_hold,
    Action.FAILSAFE_LIST: failsafe.failsafe_list,
    Action.UPGRADE_STOP: upgrade.upgrade_stop,
    Action.UPGRADE_RUN: upgrade.upgrade_run,
    Action.UPGRADE_START: upgrade.upgrade_start,
    Action.UPGRADE_DONE: upgrade.upgrade_done,
    Action.UPGRADE_ROLLBACK: upgrade.upgrade_rollback,
    Action.UPGRADE_SET_ASIDE: upgrade.upgrade_set_aside,
    Action.UPGRADE_LINK: upgrade_link.upgrade_link,
}

__all__ = ["EXECUTORS", "ActionFailed", "Executor"]
