"""governorctl promote-cluster and demote-cluster: move the primary site between two clusters.

Both write the dynamic `standby_cluster` setting with compare-and-swap (standby.py says what the
members do with it). The order that keeps timelines straight when both sites are up:

    site A (primary):  governorctl demote-cluster --host SITE-B --port 5432 --wait
    site B (standby):  governorctl promote-cluster --wait

A's leader stops with a clean shutdown (its standbys, B's leader among them, receive all of its
WAL), then follows B; B's leader promotes to a new timeline, which A follows. When site A is lost,
promote B alone; once A is back, demote it before anything else (its leader is then checked with
pg_rewind against B).
"""
from __future__ import annotations

import argparse
import sys
import time
from typing import Callable, Optional

from governor import dynamic, standby
from governor.cluster import Cluster, Member
from governor.ctl_common import EXIT_FAILED, EXIT_OK, audit_own_write, confirm, http_json, refuse
from governor.dcs import DCS, DCSError


def add_parsers(sub: argparse._SubParsersAction) -> None:
    pc = sub.add_parser("promote-cluster", help="make a standby cluster a primary cluster (its leader promotes)",
                        description="Removes standby_cluster from the dynamic configuration: the standby "
                                    "leader promotes to a new timeline and accepts writes; the other members "
                                    "follow it. Demote the other site first when it is up (demote-cluster "
                                    "there), or both accept writes.")
    pc.add_argument("--force", action="store_true", help="do not ask")
    pc.add_argument("--wait", type=float, metavar="SECONDS", nargs="?", const=120.0,
                    help="until the leader runs as primary (default 120 s)")
    dc = sub.add_parser("demote-cluster", help="make this cluster a standby of another (its primary stops and "
                                               "follows it)",
                        description="Sets standby_cluster in the dynamic configuration: the leader stops "
                                    "accepting writes (clean shutdown), is checked with pg_rewind against "
                                    "HOST:PORT and follows it; the other members follow the leader. Also "
                                    "changes the address a standby cluster follows. The two clusters share "
                                    "the replication and superuser credentials (pg_rewind connects as the "
                                    "superuser).")
    dc.add_argument("--host", required=True, help="the primary cluster's address (its haproxy, to follow its "
                                                  "failovers)")
    dc.add_argument("--port", type=int, default=5432, help="default 5432")
    dc.add_argument("--primary-slot-name", metavar="SLOT",
                    help="a (permanent) slot on the primary cluster to stream through")
    dc.add_argument("--restore-command", metavar="COMMAND", help=argparse.SUPPRESS)   # refused: see below
    dc.add_argument("--force", action="store_true", help="do not ask")
    dc.add_argument("--wait", type=float, metavar="SECONDS", nargs="?", const=120.0,
                    help="until the leader runs as a standby of HOST:PORT (default 120 s)")


def promote_cluster(args: argparse.Namespace, dcs: DCS, cluster: Cluster) -> int:
    current = cluster.config.get(standby.KEY)
    if current is None:
        return refuse(f"cluster {dcs.cfg.scope} is not a standby cluster (no standby_cluster setting)")
    leader = cluster.leader.name if cluster.leader else None
    print(f"Cluster {dcs.cfg.scope} follows {_describe(current)}. Promoting it makes "
          f"{leader or 'its next leader'} a writable primary on a new timeline. If the primary cluster is up, "
          "demote it first (governorctl demote-cluster there), or both sites accept writes.")
    if not args.force and not confirm("Promote this cluster? [y/N] ", "y"):
        return refuse("not confirmed")
    if not _write(dcs, cluster, dynamic.patch(cluster.config, {standby.KEY: None})):
        return EXIT_FAILED
    print("standby_cluster removed: the leader promotes")
    return _wait(dcs, args.wait, lambda m: m.role == "primary", "runs as primary") if args.wait else EXIT_OK


def demote_cluster(args: argparse.Namespace, dcs: DCS, cluster: Cluster) -> int:
    value = {"host": args.host, "port": args.port}
    if args.primary_slot_name:
        value["primary_slot_name"] = args.primary_slot_name
    if args.restore_command:
        print("governorctl: refused, nothing written: --restore-command is gone: a restore_command runs a "
              "program, so it never goes through etcd. Give each member of this cluster "
              "standby_cluster.restore_command in its files (e.g. /etc/governor/local.yml), reload, then "
              "demote without it", file=sys.stderr)
        return 2
    problems = standby.problems(value)
    if problems:
        print("governorctl: refused, nothing written:\n  " + "\n  ".join(problems), file=sys.stderr)
        return EXIT_FAILED
    new = dynamic.patch(cluster.config, {standby.KEY: None})
    new[standby.KEY] = value
    if new == cluster.config:
        print("no change")
        return EXIT_OK
    leader = cluster.leader.name if cluster.leader else None
    if standby.KEY in cluster.config:
        print(f"Cluster {dcs.cfg.scope} is a standby cluster: it will follow {_describe(value)} instead of "
              f"{_describe(cluster.config[standby.KEY])}.")
    else:
        print(f"Cluster {dcs.cfg.scope} becomes a standby cluster of {_describe(value)}: "
              f"{leader or 'its primary'} stops accepting writes, is checked with pg_rewind against it and "
              "follows it.")
    if not args.force and not confirm("Demote this cluster? [y/N] ", "y"):
        return refuse("not confirmed")
    if not _write(dcs, cluster, new):
        return EXIT_FAILED
    print(f"standby_cluster set: the leader follows {_describe(value)}")
    return _wait(dcs, args.wait, _demoted, f"runs as a standby of {_describe(value)}") if args.wait else EXIT_OK


def _demoted(leader: Member) -> bool:
    """The leader runs as a replica and its /status shows it decided so under standby_cluster:
    its loop runs one decision at a time, so no promotion decided before the setting is still to
    come (the others cannot promote without its lock)."""
    if leader.role != "replica" or not leader.api_url:
        return False
    try:
        _code, status = http_json(f"{leader.api_url}/status", timeout=3)
    except OSError:
        return False
    return decided_standby(status)


def decided_standby(status: dict) -> bool:
    """A leader's /status: it runs as a replica, by a decision made under standby_cluster."""
    return str(status.get("decision", "")).startswith("standby_") and status.get("role") == "replica"


def _write(dcs: DCS, cluster: Cluster, new: dict) -> bool:
    try:
        if dcs.set_config(new, cluster.config_index):
            audit_own_write(dcs, "standby_cluster", new.get(standby.KEY))
            return True
        refuse("the dynamic configuration was changed by someone else meanwhile; run the command again")
    except DCSError as exc:
        print(f"governorctl: {exc}", file=sys.stderr)
    return False


def _wait(dcs: DCS, wait: float, done: Callable[[Member], bool], what: str) -> int:
    started = time.monotonic()
    while time.monotonic() - started < wait:
        try:
            cluster = dcs.get_cluster()
        except DCSError:
            cluster = None
        leader: Optional[Member] = cluster.leader_member if cluster is not None else None
        if leader is not None and leader.state == "running" and done(leader):
            print(f"{leader.name} {what} (timeline {leader.timeline}; {time.monotonic() - started:.1f}s)")
            return EXIT_OK
        time.sleep(0.2)
    print(f"governorctl: the leader did not report that it {what} within {wait:.0f}s; see governorctl list",
          file=sys.stderr)
    return EXIT_FAILED


def _describe(value: object) -> str:
    if isinstance(value, dict):
        return f"{value.get('host')}:{value.get('port', 5432)}"
    return repr(value)[:60]
