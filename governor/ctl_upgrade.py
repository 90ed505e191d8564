"""governorctl upgrade: a major-version upgrade of the whole cluster, carried out by the leader's
governor (upgrade_plan.py). `--check` only asks whether it could start now (each problem names
the member and the reason; nothing changes); without it the checks run and, none failing, the
leader starts the upgrade and governorctl follows its steps in etcd until it is done or rolled
back (it may be interrupted: the cluster carries on). `--abort` rolls it back, only before the
new version starts."""
from __future__ import annotations

import argparse
import sys
import time
from typing import Callable

from governor import upgrade
from governor.cluster import Cluster
from governor.ctl_common import EXIT_FAILED, EXIT_OK, EXIT_USAGE, http_json, refuse
from governor.dcs import DCS, DCSError


def add_parser(sub: argparse._SubParsersAction) -> None:
    up = sub.add_parser(
        "upgrade", help="upgrade the cluster to a new PostgreSQL major version (e.g. 15 to 17), or check it may",
        description="With --check, asks the leader's governor whether the cluster can be upgraded to MAJOR now: "
                    "every member has the target's binaries installed, runs and streams with little lag; no "
                    "maintenance mode or pending switchover; on the leader no prepared transaction, no "
                    f"transaction open longer than {upgrade.LONG_TRANSACTION} s, every extension installed for "
                    "the target, enough free space, and pg_upgrade --check passing against the running cluster "
                    "(with a scratch cluster of the target version, removed afterwards). Exit status 0 when "
                    "every check passes, 1 with each problem listed. Without --check, the same checks, then the "
                    "upgrade: failover held, the leader stops cleanly, pg_upgrade --link, the new version starts "
                    "under the lock in the old data directory's place (the old one kept as DATA_DIR.pgOLD), each "
                    "replica sets its old directory aside and clones the leader. A failure before the new version "
                    "starts rolls back to the old one.")
    up.add_argument("--to", type=int, metavar="MAJOR", help="the target major version, e.g. 17")
    up.add_argument("--check", action="store_true", help="only check; change nothing")
    up.add_argument("--abort", action="store_true", help="roll back an upgrade that has not started the new "
                                                         "version yet")
    up.add_argument("--cleanup", action="store_true", help="after an upgrade: every member removes the old data "
                                                           "directory it kept (DATA_DIR.pgOLD)")
    up.add_argument("--timeout", type=float, default=1800, metavar="SECONDS",
                    help="how long to follow it (default 1800; the cluster carries on after)")


def upgrade_cluster(args: argparse.Namespace, dcs: DCS, cluster: Cluster, auth: tuple) -> int:
    if args.abort:
        return _abort(cluster, auth)
    if args.cleanup:
        return _cleanup(cluster, auth)
    problem = upgrade.target_problem(args.to)
    if problem:
        print(f"governorctl: upgrade --{problem}", file=sys.stderr)
        return EXIT_USAGE
    if not args.check:
        return _upgrade(args, dcs, cluster, auth)
    leader = cluster.leader_member
    if leader is None or not leader.api_url:
        return refuse("no leader (or it publishes no API address): the leader carries out the checks")
    try:
        code, answer = http_json(f"{leader.api_url}/upgrade/check", "POST", {"to": args.to}, auth,
                                 timeout=args.timeout)
    except OSError as exc:
        return refuse(f"the leader's API at {leader.api_url} does not answer: {exc}")
    if code == 401:
        return refuse(f"{leader.name}'s API refused the credentials")
    if code != 200 or not isinstance(answer.get("problems"), list):
        return refuse(answer.get("error") or f"{leader.name} answered HTTP {code}")
    if answer["problems"]:
        print(f"upgrade to PostgreSQL {args.to}: not possible now ({len(answer['problems'])} problem(s)):")
        for line in answer["problems"]:
            print(f"  - {line}")
        return EXIT_FAILED
    print(f"upgrade to PostgreSQL {args.to}: every check passed (checked by {answer.get('leader')})")
    return EXIT_OK


def _upgrade(args: argparse.Namespace, dcs: DCS, cluster: Cluster, auth: tuple) -> int:
    leader = cluster.leader_member
    if leader is None or not leader.api_url:
        return refuse("no leader (or it publishes no API address): the leader carries out the upgrade")
    try:
        code, answer = http_json(f"{leader.api_url}/upgrade", "POST", {"to": args.to}, auth, timeout=args.timeout)
    except OSError as exc:
        return refuse(f"the leader's API at {leader.api_url} does not answer: {exc}")
    if code == 412 and isinstance(answer.get("problems"), list):
        print(f"upgrade to PostgreSQL {args.to}: not possible now ({len(answer['problems'])} problem(s)):")
        for line in answer["problems"]:
            print(f"  - {line}")
        return EXIT_FAILED
    if code != 202:
        return refuse(answer.get("error") or f"{leader.name} answered HTTP {code}")
    print(f"{answer.get('message')}; following it (Ctrl-C leaves it running) ...", flush=True)
    return _follow(dcs.get_cluster, args.timeout)


def _follow(read: Callable[[], Cluster], timeout: float) -> int:
    started, seen = time.monotonic(), None
    while time.monotonic() - started < timeout:
        try:
            record = read().upgrade
        except DCSError as exc:
            print(f"governorctl: {exc}", file=sys.stderr)
            time.sleep(1)
            continue
        step = record.step if record else None
        if step != seen:
            seen = step
            said = f": {record.message}" if record and record.message else ""
            print(f"{time.monotonic() - started:6.1f}s  {step}{said}", flush=True)
        if step == "done":
            return EXIT_OK
        if step in ("rolled_back", None):
            return EXIT_FAILED
        time.sleep(0.5)
    print(f"governorctl: still {seen} after {timeout:.0f}s; the cluster carries on (governorctl list)", file=sys.stderr)
    return EXIT_FAILED


def _abort(cluster: Cluster, auth: tuple) -> int:
    """Asked of the member carrying the upgrade out, else of any other (its leader may be gone)."""
    first = cluster.upgrade.leader if cluster.upgrade else None
    members = sorted(cluster.members, key=lambda m: m.name != first)
    said = "no member publishes an API address"
    for member in (m for m in members if m.api_url):
        try:
            code, answer = http_json(f"{member.api_url}/upgrade", "DELETE", {}, auth, timeout=30)
        except OSError as exc:
            said = f"{member.name}'s API at {member.api_url} does not answer: {exc}"
            continue
        if code != 202:
            return refuse(answer.get("error") or f"{member.name} answered HTTP {code}")
        print(answer.get("message"))
        return EXIT_OK
    return refuse(said)


def _cleanup(cluster: Cluster, auth: tuple) -> int:
    failed = False
    for member in cluster.members:
        try:
            code, answer = http_json(f"{member.api_url}/upgrade/cleanup", "POST", {}, auth, timeout=600) \
                if member.api_url else (0, {"error": "publishes no API address"})
        except OSError as exc:
            code, answer = 0, {"error": f"its API does not answer: {exc}"}
        if code == 200:
            print(f"{member.name}: removed {', '.join(answer.get('removed') or []) or 'nothing (none left)'}")
        else:
            failed = True
            print(f"governorctl: {member.name}: {answer.get('error') or f'HTTP {code}'}", file=sys.stderr)
    return EXIT_FAILED if failed else EXIT_OK
