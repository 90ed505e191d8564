"""A standby cluster: a whole governor cluster that replicates another one (a second site).

The dynamic setting `standby_cluster` (in the scope's `config` key) names the primary cluster's
address. While it is set, this cluster has no primary: the member holding the leader lock, the
*standby leader*, runs as a standby of that remote address and never promotes; the other members
stream from the standby leader as from any leader. `governorctl promote-cluster` removes the
setting (the standby leader then promotes, as any lock holder running as a replica does);
`governorctl demote-cluster` sets it on a primary cluster (its leader stops, is checked with
pg_rewind against the remote and follows it).

    standby_cluster:
      host: site-a-haproxy       # the primary cluster's address (a haproxy in front of it
      port: 5000                 # follows its failovers); required
      primary_slot_name: site_b  # optional: a (permanent) slot on the primary cluster

A restore_command (WAL from the primary cluster's archive when streaming is not possible) runs a
program, so it never comes from etcd: each member's files give it (`standby_cluster.restore_command`,
postgresql.standby_restore_command once loaded), and it is written whenever the member follows
the primary cluster.

The decisions here are rows of ha.py's table (standby_*). Pure.
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any, List, Optional, Tuple

from governor.cluster import HOST_RE, Cluster
from governor.hatypes import Action, Decision, LocalState

KEY = "standby_cluster"
DIVERGED_AFTER = 5.0    # seconds a standby leader goes without streaming before it asks the remote's timeline
FIELDS = ("host", "port", "primary_slot_name")
FILE_FIELDS = FIELDS + ("restore_command",)    # the files' section: restore_command only from there
SLOT_RE = re.compile(r"[a-z0-9_]{1,63}")


class Upstream(tuple):
    """(host, port) of a server to stream from, with the slot to stream through (None: none): the
    primary cluster, followed with the files' standby restore_command. Indexes as (host, port)."""

    def __new__(cls, host: str, port: int, slot: Optional[str] = None) -> Upstream:
        return super().__new__(cls, (host, port, slot))

    @property
    def slot(self) -> Optional[str]:
        return self[2]


@dataclass(frozen=True)
class StandbyCluster:
    host: str
    port: int = 5432
    primary_slot_name: Optional[str] = None

    @property
    def upstream(self) -> Upstream:
        return Upstream(self.host, self.port, self.primary_slot_name)

    def describe(self) -> str:
        return f"{self.host}:{self.port}"


def problems(value: Any, fields: Tuple[str, ...] = FIELDS) -> List[str]:
    """What is wrong with a `standby_cluster` value, as 'KEY: expected ...' (empty: valid);
    `fields`: FILE_FIELDS for the files' section."""
    if not isinstance(value, dict):
        return [f"{KEY}: expected a mapping with host and port"]
    out = [f"{KEY}.{str(k)[:40]}: not a setting (expected one of {', '.join(fields)})"
           for k in value if k not in fields]
    host = value.get("host")
    if not isinstance(host, str) or not HOST_RE.fullmatch(host):
        out.append(f"{KEY}.host: expected a host name or address of the primary cluster, got {_short(host)}")
    port = value.get("port", 5432)
    if isinstance(port, bool) or not isinstance(port, int) or not 0 < port < 65536:
        out.append(f"{KEY}.port: expected a port number from 1 to 65535, got {_short(port)}")
    slot = value.get("primary_slot_name")
    if slot is not None and not (isinstance(slot, str) and SLOT_RE.fullmatch(slot)):
        out.append(f"{KEY}.primary_slot_name: expected a slot name (a-z, 0-9, _; at most 63), got {_short(slot)}")
    command = value.get("restore_command")
    if command is not None and not (isinstance(command, str) and 0 < len(command) <= 4096
                                    and command.isprintable()):
        out.append(f"{KEY}.restore_command: expected a shell command on one line, got {_short(command)}")
    return out


def parse(value: Any) -> Optional[StandbyCluster]:
    """The setting, or None when it is not a valid one (problems() says why)."""
    if problems(value):
        return None
    return StandbyCluster(host=value["host"], port=value.get("port", 5432),
                          primary_slot_name=value.get("primary_slot_name"))


def of(cluster: Cluster) -> Tuple[bool, Optional[StandbyCluster]]:
    """(set, parsed) for a cluster snapshot: set but None means a value that does not parse."""
    config = cluster.config if isinstance(cluster.config, dict) else {}
    if KEY not in config:
        return False, None
    return True, parse(config[KEY])


def public(cluster: Optional[Cluster]) -> Optional[dict]:
    """The setting as /status shows it: parsed (a value from etcd is not echoed as it is)."""
    is_set, parsed = of(cluster) if cluster is not None else (False, None)
    if not is_set:
        return None
    return {"valid": False} if parsed is None else {"valid": True, **parsed.__dict__}


def from_file(checker: Any) -> Tuple[Optional[dict], Optional[str]]:
    """The configuration file's `standby_cluster` section (checker.Checker), checked, as (the seed
    of the dynamic setting, written when this member is the first of a new scope
    (reconfigure.seed_standby); the restore_command this member follows the primary cluster
    with). A section with only restore_command seeds nothing (a cluster made a standby with
    governorctl demote-cluster)."""
    checker.declare(KEY, FILE_FIELDS)
    value = checker.get(KEY)
    if value is None:
        return None, None
    only_command = isinstance(value, dict) and set(value) == {"restore_command"}
    for problem in problems({"host": "placeholder", **value} if only_command else value, FILE_FIELDS):
        key, _, message = problem.partition(": ")
        checker.fail(key, message)
    if not isinstance(value, dict):
        return None, None
    command = value.get("restore_command")
    seed = None if only_command else {k: v for k, v in value.items() if k != "restore_command"}
    return seed, command if isinstance(command, str) else None


def _short(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 40 else text[:40] + "..."


def decide_unknown(cluster: Cluster, local: LocalState) -> Optional[Decision]:
    """A `standby_cluster` value that does not parse: whether this cluster may have a primary is
    unknown, so nothing is promoted or bootstrapped; everything else goes on as it is (None: the
    rest of the table decides; none of its other rows makes a primary)."""
    leader = cluster.leader.name if cluster.leader else None
    why = "the standby_cluster setting in etcd does not parse (see governorctl show-config)"
    if cluster.initialize is None:
        return Decision("standby_cluster_unknown", f"{why}: not bootstrapping a cluster")
    if leader == local.name and local.running and local.role == "replica":
        return Decision("standby_cluster_unknown", f"{why}: keeping the lock, not promoting",
                        (Action.RENEW_LOCK,))
    if leader is None and local.running and local.role == "replica":
        return Decision("standby_cluster_unknown", f"{why}: not racing for the lock")
    return None


def decide_leader(cluster: Cluster, local: LocalState, standby: StandbyCluster) -> Decision:
    """This member holds the lock of a standby cluster: it follows the remote primary cluster."""
    remote = standby.upstream
    there = standby.describe()
    if local.rewind_failed:
        return Decision("standby_leader_rewind_failed",
                        f"pg_rewind against the primary cluster at {there} failed; staying stopped. Remove "
                        f"{local.data_dir} and restart governor to clone it afresh", (Action.RENEW_LOCK,),
                        remote=remote)
    if local.running and local.role == "primary":
        return Decision("standby_leader_demote",
                        f"this cluster is now a standby of {there} (standby_cluster): stopping this primary, "
                        "checking it with pg_rewind against that, following it",
                        (Action.DEMOTE, Action.REWIND, Action.START_AS_REPLICA), remote=remote)
    if local.rewind_pending:
        return Decision("standby_leader_rewind",
                        f"former primary, now standby leader: checking it against {there} with pg_rewind, then "
                        "following it", (Action.RENEW_LOCK, Action.REWIND, Action.START_AS_REPLICA), remote=remote)
    if not local.running:
        return Decision("standby_leader_start", f"standby leader: starting PostgreSQL as a standby of {there}",
                        (Action.RENEW_LOCK, Action.START_AS_REPLICA), remote=remote)
    waited = local.not_streaming_for
    if waited is not None and waited >= max(DIVERGED_AFTER, 2 * local.loop_wait) and local.remote_timeline \
            and local.timeline and local.remote_timeline > local.timeline:
        return Decision("standby_leader_diverged",
                        f"not streaming from {there} for {waited:.0f}s and on timeline {local.timeline} while it is "
                        f"on {local.remote_timeline}: this standby may have WAL the primary cluster never had; "
                        "checking it with pg_rewind", (Action.RENEW_LOCK, Action.REWIND, Action.START_AS_REPLICA),
                        remote=remote)
    if local.role is None:
        return Decision("standby_leader_starting", "standby leader: PostgreSQL is starting; keeping the lock",
                        (Action.RENEW_LOCK,), remote=remote)
    return Decision("standby_leader_follow_remote", f"standby leader: following the primary cluster at {there}",
                    (Action.RENEW_LOCK, Action.FOLLOW, Action.REPLICA_SLOTS), remote=remote)


def decide_race(cluster: Cluster, local: LocalState, standby: StandbyCluster) -> Decision:
    """Nobody holds the lock of a standby cluster: a running standby takes it without promoting."""
    if local.role == "primary":
        return Decision("standby_primary_take_lock",
                        "nobody holds the lock and this member runs a primary although the cluster is a standby "
                        "cluster: taking the lock, to stop it under the lock", (Action.ACQUIRE_LOCK,))
    if local.tags.get("nofailover"):
        return Decision("standby_race_not_eligible", "no standby leader; tagged nofailover: not taking the lock")
    return Decision("standby_leader_race",
                    f"no standby leader: taking the lock and following the primary cluster at {standby.describe()} "
                    "(a standby cluster never promotes)", (Action.ACQUIRE_LOCK, Action.FOLLOW),
                    remote=standby.upstream)


def bootstrap(standby: StandbyCluster) -> Decision:
    return Decision("standby_bootstrap_race",
                    f"standby cluster not initialized: racing to clone the primary cluster at {standby.describe()}",
                    (Action.BOOTSTRAP,), remote=standby.upstream)
