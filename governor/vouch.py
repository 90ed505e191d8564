"""Failsafe's conversation between members (failsafe.py has the rules): a leader that cannot use
etcd asks every member on its failsafe list to vouch for it (`POST /failsafe`), and a member
answers, promising not to race for the lock for `ttl` seconds.

A promise and a race exclude each other: the member's loop takes `promise_lock` when it is about
to take the leader lock (and refuses if it promised meanwhile), and a member that is racing, or
whose PostgreSQL is not a running replica, promises nothing.
"""
from __future__ import annotations

import base64
import concurrent.futures
import http.client
import json
import logging
import ssl
import threading
import urllib.error
import urllib.request
from typing import TYPE_CHECKING, Dict, Optional, Tuple

from governor import clock, failsafe
from governor.dcs.keys import valid_member_name
from governor.settings import RestApiConfig

if TYPE_CHECKING:
    from governor.cluster import Cluster
    from governor.daemon import Governor

log = logging.getLogger("governor")
promise_lock = threading.Lock()
ANSWER_MAX = 4096


def remember(g: Governor, cluster: Cluster) -> None:
    """After each etcd read: the leader it names, and (as the lock holder) the list etcd holds."""
    if cluster.leader is not None:
        g.mem.last_leader = cluster.leader.name
    elif cluster.failsafe is not None:
        g.mem.last_leader = cluster.failsafe.leader
    listed = cluster.failsafe
    g.mem.failsafe_list = listed if listed is not None and listed.leader == g.name else None


def promised_to(g: Governor) -> Optional[str]:
    """The leader this member vouched for, while that promise holds."""
    promise = g.mem.failsafe_promise
    if promise is None or promise[1] <= clock.monotonic():
        return None
    return promise[0]


def fresh(g: Governor) -> bool:
    """Whether governor started less than ttl ago (a promise from before would be forgotten)."""
    return clock.monotonic() - g.mem.started < g.config.etcd.ttl


def start_racing(g: Governor) -> Optional[str]:
    """Called before this member takes the leader lock: from now until its next pass it promises
    nothing. Returns the leader it promised meanwhile, if any (then it must not take the lock)."""
    with promise_lock:
        promised = promised_to(g)
        if promised is None:
            g.mem.racing = True
        return promised


# --------------------------------------------------------------------------- the leader's round


def ask_members(g: Governor) -> Optional[float]:
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
    body = json.dumps({"leader": g.name, "sysid": g.mem.sysid}).encode()
    headers = {"Content-Type": "application/json"}
    if g.config.restapi.username:
        token = f"{g.config.restapi.username}:{g.config.restapi.password or ''}".encode()
        headers["Authorization"] = "Basic " + base64.b64encode(token).decode()
    refused = _round(listed.members, body, headers, client_tls(g.config.restapi), times[0], g.name)
    if refused:
        g.once("failsafe-round", f"failsafe: not every member vouched for this primary ({'; '.join(refused)})",
               logging.WARNING)
        return None
    g.once("failsafe-round", None)
    return sent


def client_tls(api: RestApiConfig) -> ssl.SSLContext:
    """How a member calls another's API over TLS: verifying it against restapi.cafile (the system's
    CAs without one), presenting its own certificate where control needs one (verify_client)."""
    context = ssl.create_default_context(cafile=api.cafile)
    if api.verify_client == "required" and api.certfile:
        context.load_cert_chain(api.certfile, api.keyfile)
    return context


def _round(members: Dict[str, str], body: bytes, headers: Dict[str, str], tls: ssl.SSLContext,
           timeout: float, leader: str) -> list:
    """Who did not vouch, with why; every request within `timeout` in all."""
    if not members:
        return []
    pool = concurrent.futures.ThreadPoolExecutor(max_workers=min(8, len(members)))
    try:
        futures = {pool.submit(_vouches, url, body, headers, tls, timeout, name, leader): name
                   for name, url in members.items()}
        done, late = concurrent.futures.wait(futures, timeout=timeout)
        refused = [f"{futures[f]}: no answer within {timeout:g}s" for f in late]
        refused += [f"{futures[f]}: {f.result()}" for f in done if f.result()]
        return refused
    finally:
        pool.shutdown(wait=False)


def _vouches(url: str, body: bytes, headers: Dict[str, str], tls: ssl.SSLContext, timeout: float, name: str,
             leader: str) -> Optional[str]:
    """None when member `name` vouched for `leader`; otherwise why not."""
    context = tls if url.startswith("https") else None
    request = urllib.request.Request(f"{url}/failsafe", data=body, headers=headers, method="POST")
    try:
        with urllib.request.urlopen(request, timeout=timeout, context=context) as resp:
            raw = resp.read(ANSWER_MAX + 1)
        answer = json.loads(raw.decode("utf-8")) if len(raw) <= ANSWER_MAX else None
    except urllib.error.HTTPError as exc:
        return f"answered {exc.code}{_why(exc)}"
    except (OSError, ValueError, http.client.HTTPException) as exc:
        return f"{type(exc).__name__}: {str(exc)[:100]}"
    if not isinstance(answer, dict) or answer.get("name") != name or answer.get("vouched_for") != leader:
        return "an answer that is not its promise"
    return None


def _why(refusal: urllib.error.HTTPError) -> str:
    """The member's own reason from a refusal's body, bounded and printable, for the log."""
    try:
        error = json.loads(refusal.read(ANSWER_MAX + 1).decode("utf-8")).get("error")
    except (OSError, ValueError, AttributeError, http.client.HTTPException):
        return ""
    if not isinstance(error, str):
        return ""
    return ": " + "".join(c if c.isprintable() else "?" for c in error[:200])


# --------------------------------------------------------------------------- a member's answer


def answer(g: Governor, body: dict) -> Tuple[int, dict]:
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


def _doubt(g: Governor, leader: str, sysid: Optional[str]) -> Optional[str]:
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
