"""governorctl switchover and failover: checked here, carried out by the leader (switchover)
or by the candidate's race for the lock (failover)."""
from __future__ import annotations

import argparse
import sys
import time
from typing import Optional

from governor import config as config_mod
from governor.cluster import Cluster
from governor.ctl_common import (
    EXIT_FAILED,
    EXIT_OK,
    EXIT_USAGE,
    dcs_call,
    http_json,
    local_time,
    refuse,
    scheduled_time,
)
from governor.dcs import DCS, DCSError


def switchover(args: argparse.Namespace, dcs: DCS, cluster: Cluster, auth: tuple) -> int:
    if args.cancel:
        return cancel_switchover(dcs, cluster, auth)
    if not args.candidate:
        print("governorctl: switchover: --candidate is required", file=sys.stderr)
        return EXIT_USAGE
    scheduled = scheduled_time(args.scheduled) if args.scheduled else None
    if cluster.leader is None:
        return refuse("no member holds the leader lock; a switchover needs a leader")
    leader = cluster.leader.name
    if args.leader and args.leader != leader:
        return refuse(f"{args.leader} is not the leader; {leader} is")
    candidate = cluster.member(args.candidate)
    if candidate is None or args.candidate == leader:
        return refuse(f"{args.candidate} is not a replica of this cluster "
                       f"(members: {', '.join(m.name for m in cluster.members)})")
    max_lag = config_mod.parse_size(args.max_lag)
    if max_lag is None:
        print(f"governorctl: --max-lag: expected a size such as 1MB, got {args.max_lag!r}", file=sys.stderr)
        return EXIT_USAGE
    if not args.force and scheduled is None:   # a scheduled one is checked by the leader when due
        if not candidate.api_url:
            return refuse(f"{args.candidate} publishes no API address to check its health")
        try:
            code, status = http_json(f"{candidate.api_url}/status", timeout=3)
        except OSError as exc:
            return refuse(f"{args.candidate} does not answer on {candidate.api_url}: {exc}")
        if code != 200 or not status.get("running") or status.get("role") != "replica":
            return refuse(f"{args.candidate} is not a running replica (role {status.get('role')}, "
                           f"state {status.get('state')})")
        if not status.get("streaming"):
            return refuse(f"{args.candidate} is not streaming from the leader")
        lag = status.get("lag_bytes")
        if lag is None or lag > max_lag:
            return refuse(f"{args.candidate} lags {lag} bytes behind the leader, more than --max-lag {max_lag}")
    leader_member = cluster.member(leader)
    if leader_member is None or not leader_member.api_url:
        return refuse(f"the leader {leader} publishes no API address")
    body = {"leader": leader, "candidate": args.candidate}
    if scheduled is not None:
        body["scheduled_at"] = scheduled
    refused = _ask_leader(leader_member.api_url, "POST", body, auth, 202)
    if refused is not None:
        return refused
    if scheduled is not None:
        print(f"switchover from {leader} to {args.candidate} scheduled for "
              f"{local_time(scheduled)}; "
              "`governorctl switchover --cancel` cancels it")
        return EXIT_OK
    print(f"switchover from {leader} to {args.candidate} requested; waiting ...")
    return _wait_for_leader(dcs, args.candidate, args.wait, "switchover")


def _ask_leader(api_url: str, method: str, body: dict, auth: tuple, expected: int) -> Optional[int]:
    """The leader's /switchover endpoint asked; None when it answered `expected`, else the exit
    code after saying why."""
    try:
        code, answer = http_json(f"{api_url}/switchover", method, body, auth)
    except OSError as exc:
        return refuse(f"the leader's API at {api_url} does not answer: {exc}")
    if code == 401:
        return refuse("the leader's API refused the credentials (restapi.username/password in the config)")
    if code != expected:
        return refuse(answer.get("error") or f"the leader answered HTTP {code}")
    return None


def cancel_switchover(dcs: DCS, cluster: Cluster, auth: tuple) -> int:
    if cluster.switchover is None:
        return refuse("no switchover is pending")
    leader = cluster.leader_member
    if leader is not None and leader.api_url:
        refused = _ask_leader(leader.api_url, "DELETE", {}, auth, 200)
        if refused is not None:
            return refused
    elif not dcs_call(dcs.clear_switchover):
        return EXIT_FAILED
    print(f"switchover to {cluster.switchover.candidate} cancelled")
    return EXIT_OK


def failover(args: argparse.Namespace, dcs: DCS, cluster: Cluster) -> int:
    if cluster.leader is not None:
        return refuse(f"{cluster.leader.name} holds the leader lock; use switchover")
    candidate = cluster.member(args.candidate)
    if candidate is None:
        return refuse(f"{args.candidate} is not a member of this cluster "
                       f"(members: {', '.join(m.name for m in cluster.members) or 'none'})")
    status: dict = {}
    if candidate.api_url:
        try:
            _code, status = http_json(f"{candidate.api_url}/status", timeout=3)
        except OSError:
            status = {}
    if not args.force:
        if not status.get("running") or status.get("role") != "replica":
            return refuse(f"{args.candidate} is not a running replica as far as its API tells; --force to try")
        lag = status.get("lag_bytes")
        if lag:
            return refuse(f"{args.candidate} is {lag} bytes behind the last leader position: promoting it "
                           "loses those transactions; --force to accept that")
    try:
        if not dcs.request_switchover({"leader": None, "candidate": args.candidate, "requested_at": time.time()}):
            return refuse("another switchover or failover is pending")
    except DCSError as exc:
        print(f"governorctl: {exc}", file=sys.stderr)
        return EXIT_FAILED
    print(f"failover to {args.candidate} requested; waiting ...")
    return _wait_for_leader(dcs, args.candidate, args.wait, "failover")


def _wait_for_leader(dcs: DCS, candidate: str, wait: float, what: str) -> int:
    started = time.monotonic()
    while time.monotonic() - started < wait:
        time.sleep(0.2)
        try:
            now = dcs.get_cluster()
        except DCSError:
            continue
        member = now.member(candidate)
        # Holding the lock is not enough: its pre_promote callback may still refuse (and give
        # the lock back). Done when its own key says it runs as the primary.
        if now.leader and now.leader.name == candidate and member is not None and member.role == "primary":
            print(f"{what} done: {candidate} is the leader ({time.monotonic() - started:.1f}s)")
            return EXIT_OK
        if member is not None and member.pre_promote_refused and now.switchover is None:
            leader = now.leader.name if now.leader else "nobody yet"
            print(f"governorctl: {what} cancelled: {candidate}'s pre_promote callback refused the promotion (see its "
                  f"log); the leader is {leader}", file=sys.stderr)
            return EXIT_FAILED
    print(f"governorctl: {candidate} did not take the lock within {wait:.0f}s; see governor's log",
          file=sys.stderr)
    return EXIT_FAILED
