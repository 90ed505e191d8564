"""Failsafe's executors: keep the primary on its members' promises, keep the list in etcd."""
from __future__ import annotations

import logging
from typing import TYPE_CHECKING

from governor import clock, failsafe
from governor.actions.base import ActionFailed
from governor.ha import Decision, LocalState

if TYPE_CHECKING:
    from governor.ports import ActionHost

log = logging.getLogger("governor")


def failsafe_hold(g: ActionHost, decision: Decision, local: LocalState) -> None:
    """Every listed member vouched in a round sent at `local.failsafe_vouched`: each promised not
    to race for ttl from when it answered, so PostgreSQL may stay primary until that send time +
    ttl. The lock fence and the watchdog move to that deadline, as on a lock renewal."""
    if local.failsafe_vouched is None:
        raise ActionFailed("no round of promises to hold on")
    deadline = local.failsafe_vouched + g.config.etcd.ttl
    g.mem.lock_deadline = deadline
    g.fence.arm(deadline)
    if not g.watchdog.keepalive(deadline, max(0.5, g.fence.margin / 4)):
        raise ActionFailed(f"watchdog.mode is required and {g.config.watchdog.device} cannot be armed")
    if g.mem.failsafe_since is None:
        g.mem.failsafe_since = clock.monotonic()
        log.warning("failsafe: etcd cannot be used; every member vouched for this primary, which stays primary "
                    "while they do")


def failsafe_list(g: ActionHost, decision: Decision, local: LocalState) -> None:
    """Make the `failsafe` key name every other member (failsafe_mode on), or remove it (off).
    Whether a write that failed reached etcd is unknown: until a read shows what etcd holds, the
    leader asks the members of both lists."""
    if g.cluster is None:
        return
    wanted = failsafe.wanted(g.cluster, g.name, g.config.failsafe_mode)
    before = g.mem.failsafe_list
    g.mem.failsafe_list = wanted.union(before) if wanted else before
    if not g.dcs.set_failsafe(g.name, wanted.as_json() if wanted else None):
        raise ActionFailed("the leader lock is no longer ours: the failsafe list was not written")
    g.mem.failsafe_list = wanted
    log.info("failsafe list %s", f"now names {', '.join(sorted(wanted.members)) or 'no other member'}"
             if wanted else "removed (failsafe_mode is off)")
