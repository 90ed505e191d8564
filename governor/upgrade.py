"""A major-version upgrade of the cluster (`governorctl upgrade --to MAJOR`): what must hold before
anything stops. Pure: the facts come from the cluster as etcd shows it and from what the
leader's governor found on its own host (upgrade_probe.py); each problem names the member and
the reason, and any problem refuses the upgrade before it changes anything."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Dict, List, Optional, Tuple

from governor.cluster import Cluster

LAG_MAX = 16 * 1024 * 1024        # bytes a replica may be behind the leader when the upgrade starts
LONG_TRANSACTION = 60             # seconds: an older open transaction would be cut by the upgrade's stop
MAJOR_MIN, MAJOR_MAX = 10, 99


@dataclass(frozen=True)
class LeaderFacts:
    """What the leader's governor found on its host (upgrade_probe.probe)."""
    data_major: Optional[int]                 # PG_VERSION of the running cluster
    target_bin: Optional[str]                 # the target's binaries there (None: not installed)
    prepared: int = 0                         # prepared transactions (pg_prepared_xacts)
    long_transactions: Tuple[str, ...] = ()   # "pid 4242 (app on db shop, open 75 s)"
    missing_extensions: Tuple[str, ...] = ()  # "postgis (database shop)"
    free_bytes: Optional[int] = None          # free space beside the data directory
    needed_bytes: int = 0
    pg_upgrade: Optional[str] = None          # pg_upgrade --check's complaint (None: it passed)
    parameters: Tuple[str, ...] = ()          # "name: why" for settings the target refuses
    database_bytes: int = 0                   # the cluster's size (each replica clones it again)
    replay_behind: Tuple[Tuple[str, Optional[int]], ...] = ()  # (standby's name, bytes its replay is behind)
    errors: Tuple[str, ...] = ()              # a probe that could not run, and why


def cluster_problems(cluster: Optional[Cluster], target: int, leader_name: str, database_bytes: int = 0,
                     replay_behind: Optional[Dict[str, Optional[int]]] = None) -> List[str]:
    """Problems visible in etcd: maintenance mode, members not running or behind, the target
    major not installed somewhere. `replay_behind`: how far each replica streaming from the
    leader has replayed, as the leader's pg_stat_replication says (None: unknown)."""
    replay_behind = replay_behind or {}
    if cluster is None:
        return ["etcd is not reachable from the leader"]
    problems = []
    if cluster.paused:
        problems.append("maintenance mode is on: resume first (governorctl resume)")
    if cluster.upgrade is not None and cluster.upgrade.active or cluster.upgrade_unreadable:
        problems.append("an upgrade is under way already (governorctl list shows its step)")
    if cluster.switchover is not None:
        problems.append("a switchover is pending: let it finish or cancel it first")
    leader = cluster.member(leader_name)
    for m in cluster.members:
        if not m.pg_majors:
            problems.append(f"{m.name}: does not report which PostgreSQL versions are installed (its governor is "
                            "older than this one): upgrade governor there first")
        elif target not in m.pg_majors:
            found = ", ".join(str(v) for v in m.pg_majors)
            problems.append(f"{m.name}: PostgreSQL {target} is not installed (found {found}): install the "
                            f"postgresql-{target} package there")
        problems.extend(f"{m.name}: {blocker}" for blocker in m.upgrade_blockers)
        if m.name == leader_name:
            continue
        need = database_bytes + database_bytes // 5 + 256 * 2**20
        if database_bytes and m.disk_free is not None and m.disk_free < need:
            problems.append(f"{m.name}: {m.disk_free // 2**20} MB free beside its data directory; it clones the "
                            f"upgraded leader there while keeping its old directory: about {need // 2**20} MB needed")
        if m.role != "replica" or m.state != "running":
            problems.append(f"{m.name}: not a running replica ({m.role}, {m.state})")
        elif leader is None or leader.lsn is None or m.lsn is None:
            problems.append(f"{m.name}: its position or the leader's is unknown")
        elif leader.lsn - m.lsn > LAG_MAX:
            problems.append(f"{m.name}: {leader.lsn - m.lsn} bytes behind the leader (at most {LAG_MAX} when the "
                            "upgrade starts)")
        elif m.name in replay_behind and replay_behind[m.name] is None:
            problems.append(f"{m.name}: the leader does not know how far it has replayed")
        elif (replay_behind.get(m.name) or 0) > LAG_MAX:
            problems.append(f"{m.name}: replays {replay_behind[m.name]} bytes behind the leader (at most {LAG_MAX} "
                            "when the upgrade starts: it would stop short of the leader's last checkpoint and be "
                            "cloned instead of linked)")
    return problems


def leader_problems(facts: LeaderFacts, target: int, leader_name: str) -> List[str]:
    """Problems the leader's governor found on its own host."""
    at = f"{leader_name} (leader)"
    problems = [f"{at}: {error}" for error in facts.errors]
    if facts.data_major is None:
        problems.append(f"{at}: the data directory's PG_VERSION does not say its major version")
    elif target <= facts.data_major:
        problems.append(f"the cluster runs PostgreSQL {facts.data_major}: --to must name a later major version")
    if facts.target_bin is None:
        problems.append(f"{at}: no binaries of PostgreSQL {target} found (/usr/lib/postgresql/{target}/bin or "
                        f"/usr/pgsql-{target}/bin)")
    if facts.prepared:
        problems.append(f"{at}: {facts.prepared} prepared transaction(s) (pg_prepared_xacts): commit or roll "
                        "them back first; pg_upgrade refuses them")
    for open_xact in facts.long_transactions:
        problems.append(f"{at}: a transaction open for more than {LONG_TRANSACTION} s: {open_xact}")
    for extension in facts.missing_extensions:
        problems.append(f"{at}: extension {extension} is not installed for PostgreSQL {target}")
    if facts.free_bytes is not None and facts.free_bytes < facts.needed_bytes:
        problems.append(f"{at}: {facts.free_bytes // 2**20} MB free beside the data directory, "
                        f"{facts.needed_bytes // 2**20} MB needed")
    for problem in facts.parameters:
        problems.append(f"{at}: postgresql.parameters.{problem} (PostgreSQL {target}): change it in the files and "
                        "the dynamic configuration first; the new version would not start with it")
    if facts.pg_upgrade:
        problems.append(f"{at}: pg_upgrade --check: {facts.pg_upgrade}")
    return problems


def target_problem(value: object) -> Optional[str]:
    """What is wrong with a requested target major (None: a plausible one)."""
    if isinstance(value, bool) or not isinstance(value, int) or not MAJOR_MIN <= value <= MAJOR_MAX:
        return f"to: expected a PostgreSQL major version such as 17 ({MAJOR_MIN} to {MAJOR_MAX})"
    return None
