"""governorctl restart, reload and reinit: asked of each member's control endpoint, one at a time."""
from __future__ import annotations

import argparse
import sys
import time
from typing import List, Optional

from governor.cluster import Cluster, Member
from governor.ctl_common import EXIT_FAILED, EXIT_OK, confirm, http_json, local_time, refuse, scheduled_time

ROLES = ("leader", "replica", "any")


def add_parsers(sub: argparse._SubParsersAction) -> None:
    rs = sub.add_parser("restart", help="restart PostgreSQL on members, replicas first, the leader last",
                        description="Restarts PostgreSQL one member at a time, waiting for each to run again "
                                    "before the next; the leader last and in place (it keeps the lock, writes "
                                    "pause for the restart). To avoid that pause, switch over first and restart "
                                    "the old leader as a replica. With --scheduled each member restarts at that "
                                    "time on its own (the leader still last: it waits, up to 10 minutes, for "
                                    "the replicas scheduled no later); a scheduled restart lives in the member's "
                                    "governor, so restarting governor forgets it (`list` shows what is scheduled).")
    _members_and_role(rs, "restart")
    rs.add_argument("--pending", action="store_true",
                    help="only members whose PostgreSQL has a setting waiting for a restart (scheduled: "
                         "checked when the time comes)")
    rs.add_argument("--scheduled", metavar="ISO-8601",
                    help="restart at this time, e.g. 2026-11-27T03:00:00+00:00 (no zone: local time)")
    rs.add_argument("--pg-version", metavar="VERSION", type=pg_version_number,
                    help="only members whose PostgreSQL runs a version older than this, e.g. 17.2 (after the "
                         "packages were upgraded: the ones still running the old binaries)")
    rs.add_argument("--cancel", action="store_true", help="cancel the members' scheduled restarts")
    rs.add_argument("--force", action="store_true", help="do not ask before restarting the leader")
    rl = sub.add_parser("reload", help="make members re-read their configuration files (as systemctl reload)",
                        description="Asks each member's governor to re-read its configuration files, as "
                                    "`systemctl reload governor` on its host does: a file that does not validate "
                                    "changes nothing (the member's log says why). The dynamic configuration in "
                                    "etcd needs no reload: edit-config applies everywhere.")
    _members_and_role(rl, "reload")
    ri = sub.add_parser("reinit", help="re-clone a replica from the leader (its data directory is removed)",
                        description="Removes the replica's data directory and clones the leader afresh with "
                                    "pg_basebackup. Asks you to type the member name unless --force.")
    ri.add_argument("member", metavar="MEMBER")
    ri.add_argument("--force", action="store_true", help="do not ask for confirmation")
    ri.add_argument("--wait", type=float, default=300, help="seconds to wait for it to stream (default 300)")


def _members_and_role(command: argparse.ArgumentParser, verb: str) -> None:
    command.add_argument("members", nargs="*", metavar="MEMBER", help=f"members to {verb} (default: all)")
    command.add_argument("--role", choices=ROLES, default="any",
                         help="only the leader, or only the replicas, of those members (default: any)")


def _targets(args: argparse.Namespace, cluster: Cluster) -> List[Member]:
    """The members named (default: all) of the role asked, replicas first and the leader last."""
    leader = cluster.leader.name if cluster.leader else None
    names = args.members or [m.name for m in cluster.members]
    targets = [m for m in (cluster.member(n) for n in dict.fromkeys(names)) if m is not None]
    if args.role != "any":
        targets = [m for m in targets if (m.name == leader) == (args.role == "leader")]
    return sorted(targets, key=lambda m: m.name == leader)


def pg_version_number(text: str) -> int:
    """'17.2' or '17' as server_version_num (170002, 170000); argparse's type for --pg-version."""
    major, _, minor = text.strip().partition(".")
    if not major.isdigit() or not 10 <= int(major) < 1000 or (minor and not minor.isdigit()):
        raise argparse.ArgumentTypeError(f"expected a PostgreSQL version such as 17.2, got {text!r}")
    return int(major) * 10000 + int(minor or 0)


def reload(args: argparse.Namespace, cluster: Cluster, auth: tuple) -> int:
    unknown = [n for n in args.members if cluster.member(n) is None]
    if unknown:
        return refuse(f"not members of this cluster: {', '.join(unknown)}")
    targets = _targets(args, cluster)
    if not targets:
        return refuse(f"no member of the role {args.role} among those named")
    return _ask_each(targets, "/reload", "POST", auth, ok=(200, 202), default="reload requested")


def restart(args: argparse.Namespace, cluster: Cluster, auth: tuple) -> int:
    unknown = [n for n in args.members if cluster.member(n) is None]
    if unknown:
        return refuse(f"not members of this cluster: {', '.join(unknown)}")
    leader = cluster.leader.name if cluster.leader else None
    targets = _targets(args, cluster)
    if args.cancel:
        return _cancel(targets, auth)
    scheduled = scheduled_time(args.scheduled) if args.scheduled else None
    if args.pending and scheduled is None:
        targets = [m for m in targets if m.pending_restart]
        if not targets:
            print("no member has a restart pending")
            return EXIT_OK
    if args.pg_version is not None:
        unknown_version = [m.name for m in targets if not isinstance(m.pg_version, int)]
        if unknown_version:
            print(f"governorctl: left out, their PostgreSQL version is not known: {', '.join(unknown_version)}",
                  file=sys.stderr)
        targets = [m for m in targets if isinstance(m.pg_version, int) and m.pg_version < args.pg_version]
        if not targets:
            print("no member runs an older PostgreSQL version")
            return EXIT_OK
    if not targets:
        return refuse(f"no member of the role {args.role} among those named")
    when = f" at {local_time(scheduled)}" if scheduled is not None else ""
    if any(m.name == leader for m in targets) and not args.force and \
            not confirm(f"Restart the leader {leader} in place{when}? Writes stop while it restarts. [y/N] ", "y"):
        return refuse("not confirmed")
    for member in targets:
        code = _restart_one(member, args.pending, scheduled, auth)
        if code != EXIT_OK:
            return code
    return EXIT_OK


def _restart_one(member: Member, pending: bool, scheduled: Optional[float], auth: tuple) -> int:
    if not member.api_url:
        return refuse(f"{member.name} publishes no API address")
    body: dict = {"pending": pending}
    if scheduled is None:
        print(f"restarting {member.name} ...", flush=True)
    else:
        body["scheduled_at"] = scheduled
    try:
        code, answer = http_json(f"{member.api_url}/restart", "POST", body, auth,
                                 timeout=300 if scheduled is None else 10)
    except OSError as exc:
        return refuse(f"{member.name}'s API at {member.api_url} does not answer: {exc}")
    if code == 401:
        return refuse(f"{member.name}'s API refused the credentials")
    if code not in (200, 202):
        what = "scheduling a restart" if scheduled is not None else "restart"
        print(f"governorctl: {what} of {member.name} failed: {answer.get('error') or f'HTTP {code}'}; "
              "stopping here", file=sys.stderr)
        return EXIT_FAILED
    print(f"{member.name}: {answer.get('message', 'restarted')}")
    return EXIT_OK


def _cancel(targets: List[Member], auth: tuple) -> int:
    scheduled = [m for m in targets if m.scheduled_restart is not None]
    if not scheduled:
        return refuse("no restart is scheduled on those members")
    # 404: already done or cancelled meanwhile
    return _ask_each(scheduled, "/restart", "DELETE", auth, ok=(200,), default="cancelled", fine=(404,))


def _ask_each(members: List[Member], path: str, method: str, auth: tuple, ok: tuple, default: str,
              fine: tuple = ()) -> int:
    """Send the same request to each member's API, saying each answer; failed if any failed."""
    failed = False
    for member in members:
        try:
            code, answer = http_json(f"{member.api_url}{path}", method, {}, auth) if member.api_url \
                else (0, {"error": "it publishes no API address"})
        except OSError as exc:
            code, answer = 0, {"error": f"its API does not answer: {exc}"}
        if code in ok:
            print(f"{member.name}: {answer.get('message', default)}")
        elif code not in fine:
            failed = True
            print(f"governorctl: {member.name}: {answer.get('error') or f'HTTP {code}'}", file=sys.stderr)
    return EXIT_FAILED if failed else EXIT_OK


def reinit(args: argparse.Namespace, cluster: Cluster, auth: tuple) -> int:
    member = cluster.member(args.member)
    if member is None:
        return refuse(f"{args.member} is not a member of this cluster")
    if cluster.leader and cluster.leader.name == args.member:
        return refuse(f"{args.member} is the leader; switch over first")
    if not member.api_url:
        return refuse(f"{args.member} publishes no API address")
    if not args.force and not confirm(
            f"This removes {args.member}'s data directory and clones the leader again.\n"
            f"Type the member name to confirm: ", args.member):
        return refuse("not confirmed")
    try:
        code, answer = http_json(f"{member.api_url}/reinitialize", "POST", {}, auth, timeout=90)
    except OSError as exc:
        return refuse(f"{args.member}'s API at {member.api_url} does not answer: {exc}")
    if code == 401:
        return refuse(f"{args.member}'s API refused the credentials")
    if code not in (200, 202):
        return refuse(answer.get("error") or f"{args.member} answered HTTP {code}")
    print(f"{args.member}: {answer.get('message')}; waiting for it to stream ...", flush=True)
    started = time.monotonic()
    while time.monotonic() - started < args.wait:
        time.sleep(1)
        try:
            _code, status = http_json(f"{member.api_url}/status", timeout=3)
        except OSError:
            continue
        if status.get("role") == "replica" and status.get("running") and status.get("streaming"):
            print(f"reinit done: {args.member} streams from {status.get('upstream')} "
                  f"({time.monotonic() - started:.0f}s)")
            return EXIT_OK
    print(f"governorctl: {args.member} is not streaming after {args.wait:.0f}s; see its log", file=sys.stderr)
    return EXIT_FAILED
