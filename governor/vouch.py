"""Failsafe's conversation between members (failsafe.py has the rules): a leader that cannot use
etcd asks every member on its failsafe list to vouch for it (`POST /failsafe`), and a member
answers, promising not to race for the lock for `ttl` seconds.

A promise and a race exclude each other: the member's loop takes `promise_lock` when it is about
to take the leader lock (and refuses if it promised meanwhile), and a member that is racing, or
whose PostgreSQL is not a running replica, promises nothing.
"""
from __future__ import annotations

import logging
import threading
from typing import TYPE_CHECKING, Optional, Tuple

from governor import clock, failsafe
from governor.dcs.keys import valid_member_name

if TYPE_CHECKING:
    from governor.cluster import Cluster
    from governor.ports import NodeHost

log = logging.getLogger("governor")
promise_lock = threading.Lock()


def remember(g: NodeHost, cluster: Cluster) -> None:
    """After each etcd read: the leader it names, and (as the lock holder) the list etcd holds."""
    if cluster.leader is not None:
        g.mem.last_leader = cluster.leader.name
    elif cluster.failsafe is not None:
        g.mem.last_leader = cluster.failsafe.leader
    listed = cluster.failsafe
    g.mem.failsafe_list = listed if listed is not None and listed.leader == g.name else None


def promised_to(g: NodeHost) -> Optional[str]:
    """The leader this member vouched for, while that promise holds."""
    promise = g.mem.failsafe_promise
    if promise is None or promise[1] <= clock.monotonic():
        return None
    return promise[0]


def fresh(g: NodeHost) -> bool:
    """Whether governor started less than ttl ago (a promise from before would be forgotten)."""
    return clock.monotonic() - g.mem.started < g.config.etcd.ttl


def start_racing(g: NodeHost) -> Optional[str]:
    """Called before this member takes the leader lock: from now until its next pass it promises
    nothing. Returns the leader it promised meanwhile, if any (then it must not take the lock)."""
    with promise_lock:
        promised = promised_to(g)
        if promised is None:
            g.mem.racing = True
        return promised


# --------------------------------------------------------------------------- the leader's round


def ask_members(g: NodeHost) -> Optional[float]:
    """Ask every member on the failsafe list; the round's send time (monotonic) when every one of
    them vouched, None otherwise (the reasons logged once)."""
    times = failsafe.timing(g.config.etcd.ttl, g.config.loop_wait, g.config.retry_timeout)
    listed = g.mem.failsafe_list
    if times is None or listed is None:
        g.once("failsafe-round", "failsafe: " + ("the timing leaves no room for it" if times is None else
                                                  "no failsafe list was written while etcd answered"),
               logging.WARNING)
        return None
    sent = clock.monotonic()
    refused = g.peers.vouch(listed.members, g.name, g.mem.sysid, g.config.restapi, times[0])
    if refused:
        g.once("failsafe-round", f"failsafe: not every member vouched for this primary ({'; '.join(refused)})",
               logging.WARNING)
        return None
    g.once("failsafe-round", None)
    return sent


# --------------------------------------------------------------------------- a member's answer


def answer(g: NodeHost, body: dict) -> Tuple[int, dict]:
    """POST /failsafe: vouch for the leader asking, or say why not (409)."""
    leader, sysid = body.get("leader"), body.get("sysid")
    if not isinstance(leader, str) or not valid_member_name(leader) or not isinstance(sysid, (str, type(None))):
        return 400, {"error": 'expected {"leader": MEMBER, "sysid": SYSTEM_IDENTIFIER}'}
    with promise_lock:
        doubt = _doubt(g, leader, sysid)
        if doubt:
            return 409, {"error": f"not vouching for {leader}: {doubt}"}
        until = clock.monotonic() + g.config.etcd.ttl
        old = g.mem.failsafe_promise
        g.mem.failsafe_promise = (leader, max(until, old[1]) if old and old[0] == leader else until)
    g.once("failsafe-promise", f"failsafe: vouched for {leader}, which cannot use etcd: not racing for the lock "
                               f"while it asks", logging.WARNING)
    return 200, {"name": g.name, "vouched_for": leader, "seconds": g.config.etcd.ttl}


def _doubt(g: NodeHost, leader: str, sysid: Optional[str]) -> Optional[str]:
    state = g.server_state
    if not g.config.failsafe_mode:
        return "failsafe_mode is off on this member"
    if leader == g.name:
        return "that is this member's own name"
    if g.mem.racing:
        return "this member is taking the leader lock"
    if state is None or state.role != "replica":
        return "PostgreSQL here is not running as a replica"
    if g.mem.last_leader != leader:
        return f"the leader this member knows is {g.mem.last_leader or 'none'}"
    if sysid is None or g.mem.sysid is None or sysid != g.mem.sysid:
        return f"system identifier {sysid} is not this member's ({g.mem.sysid})"
    return None
