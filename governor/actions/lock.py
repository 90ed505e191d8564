"""The leader lock: take it, renew it, give it up."""
from __future__ import annotations

import logging
import time
from typing import TYPE_CHECKING

from governor.actions.base import ActionFailed
from governor.ha import Decision, LocalState

if TYPE_CHECKING:
    from governor.daemon import Governor

log = logging.getLogger("governor")


def acquire_lock(g: Governor, decision: Decision, local: LocalState) -> None:
    sent = time.monotonic()
    if not g.dcs.acquire_leader(g.name):
        raise ActionFailed("another member took the leader lock first")
    g.mem.published_lsn = None     # publish our position as the new leader's, even if unchanged
    g._lock_taken(sent)
    log.info("acquired the leader lock")


def renew_lock(g: Governor, decision: Decision, local: LocalState) -> None:
    sent = time.monotonic()
    if not g.dcs.renew_leader(g.name):
        g._lock_lost()
        raise ActionFailed("the leader lock is no longer ours")
    g._lock_taken(sent)


def release_lock(g: Governor, decision: Decision, local: LocalState) -> None:
    log.error("%s", decision.message)
    try:
        g.controller.stop("immediate")
    finally:
        g._release_lock()
        g.mem.leader_start_since = None
