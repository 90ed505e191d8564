"""governorctl upgrade: a major-version upgrade of the whole cluster. This version carries out the
checks (`--check`): the leader's governor judges, from etcd and from its own host, whether the
upgrade could start now, and names each member and reason when not. Nothing changes."""
from __future__ import annotations

import argparse
import sys

from governor import upgrade
from governor.cluster import Cluster
from governor.ctl_common import EXIT_FAILED, EXIT_OK, EXIT_USAGE, http_json, refuse


def add_parser(sub: argparse._SubParsersAction) -> None:
    up = sub.add_parser(
        "upgrade", help="check a major-version upgrade of the cluster (e.g. PostgreSQL 15 to 17)",
        description="With --check, asks the leader's governor whether the cluster can be upgraded to MAJOR now: "
                    "every member has the target's binaries installed, runs and streams with little lag; no "
                    "maintenance mode or pending switchover; on the leader no prepared transaction, no "
                    f"transaction open longer than {upgrade.LONG_TRANSACTION} s, every extension installed for "
                    "the target, enough free space, and pg_upgrade --check passing against the running cluster "
                    "(with a scratch cluster of the target version, removed afterwards). Exit status 0 when "
                    "every check passes, 1 with each problem listed. The upgrade itself is not carried out by "
                    "this version of governor.")
    up.add_argument("--to", type=int, required=True, metavar="MAJOR", help="the target major version, e.g. 17")
    up.add_argument("--check", action="store_true", help="only check (required in this version)")
    up.add_argument("--timeout", type=float, default=600, metavar="SECONDS",
                    help="how long to wait for the leader's answer (default 600)")


def upgrade_cluster(args: argparse.Namespace, cluster: Cluster, auth: tuple) -> int:
    problem = upgrade.target_problem(args.to)
    if problem:
        print(f"governorctl: upgrade --{problem}", file=sys.stderr)
        return EXIT_USAGE
    if not args.check:
        print("governorctl: this version of governor checks an upgrade (--check) but does not carry it out yet",
              file=sys.stderr)
        return EXIT_USAGE
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
