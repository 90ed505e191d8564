"""The HA decision's vocabulary: what a member observed of itself (LocalState), what it decides
(Decision, a named case with its Actions), and how far a position agrees with the newest timeline.
Pure: ha.py and race.py decide with these; the executors carry them out."""
from __future__ import annotations

from dataclasses import dataclass, field
from enum import Enum
from typing import Any, Dict, Optional, Tuple

from governor.cluster import Member
from governor.cluster_settings import DEFAULTS

EMPTY, POSTGRES, NOT_POSTGRES = "empty", "postgres", "invalid"
BOOTSTRAP_ATTEMPTS = 3   # failed bootstraps in a row before governor stops trying and waits


class Action(str, Enum):
    BOOTSTRAP = "bootstrap"
    CLAIM_INITIALIZE = "claim_initialize"
    CLONE = "clone"
    START_AS_LEADER = "start_as_leader"
    START_AS_REPLICA = "start_as_replica"
    ACQUIRE_LOCK = "acquire_lock"
    RENEW_LOCK = "renew_lock"
    PROMOTE = "promote"
    DEMOTE = "demote"
    REWIND = "rewind"
    RESTART = "restart"
    REINITIALIZE = "reinitialize"
    STEP_DOWN = "step_down"
    RELEASE_LOCK = "release_lock"
    FOLLOW = "follow"
    ENSURE_SLOTS = "ensure_slots"
    MANAGE_SYNC = "manage_sync"
    FAILSAFE_HOLD = "failsafe_hold"         # every listed member vouched: the deadline moves on
    FAILSAFE_LIST = "failsafe_list"         # write (or delete) the `failsafe` key to match
    REPLICA_SLOTS = "replica_slots"         # replica: slots of members streaming from it; permanent slots' copies
    FORGET_SCHEDULED_RESTART = "forget_scheduled_restart"   # the scheduled restart is due: it runs once
    UPGRADE_STOP = "upgrade_stop"           # major upgrade, leader: stop the old version cleanly
    UPGRADE_RUN = "upgrade_run"             # ... pg_upgrade --link into {data_dir}.upgrading
    UPGRADE_START = "upgrade_start"         # ... swap the directories, start the new version
    UPGRADE_DONE = "upgrade_done"           # ... every member runs it: the record says done
    UPGRADE_ROLLBACK = "upgrade_rollback"   # ... restore the old cluster (before `starting` only)
    UPGRADE_SET_ASIDE = "upgrade_set_aside"  # replica: move the old data directory aside, new binaries
    UPGRADE_LINK = "upgrade_link"           # replica: the new data directory from its own files + the seed


@dataclass(frozen=True)
class LocalState:
    """What the daemon observed of its own PostgreSQL this loop."""
    name: str
    data: str                       # EMPTY | POSTGRES | NOT_POSTGRES
    sysid: Optional[str] = None
    running: bool = False
    role: Optional[str] = None      # "primary" | "replica" when running and answering queries
    timeline: Optional[int] = None
    lsn: Optional[int] = None
    tags: Dict[str, Any] = field(default_factory=dict)
    maximum_lag_on_failover: int = DEFAULTS["maximum_lag_on_failover"]
    data_dir: str = ""
    rewind_pending: bool = False    # was a primary, or has not streamed from a leader on a newer timeline,
    # since its last check against the current leader
    rewind_failed: bool = False     # pg_rewind failed and re-cloning is not allowed
    # Other members as they answered this loop over the HTTP API (None: did not answer); used in
    # the leader race instead of the positions they last published in etcd.
    peers: Dict[str, Optional[Member]] = field(default_factory=dict)
    now: float = 0.0                # wall clock, for scheduled switchovers
    request: Optional[str] = None   # an operator's pending "restart" / "reinitialize" (HTTP API)
    not_streaming_for: Optional[float] = None  # replica: seconds without streaming while another leads
    loop_wait: float = DEFAULTS["loop_wait"]
    remove_data_directory_on_rewind_failure: bool = False
    retry_timeout: float = DEFAULTS["retry_timeout"]
    primary_start_timeout: float = DEFAULTS["primary_start_timeout"]
    lock_left: Optional[float] = None          # seconds before our lock expires, as we know it (None: not ours)
    starting_for: Optional[float] = None       # holding the lock: seconds PostgreSQL has not been up
    bootstrap_failures: int = 0     # failed bootstraps in a row since governor started
    failsafe_mode: bool = False
    failsafe_vouched: Optional[float] = None   # leader, etcd unusable: when the round every listed member
    # vouched in was sent (monotonic), this pass; None: no such round
    failsafe_promise: Optional[str] = None     # the leader this member vouched for less than ttl ago
    failsafe_fresh: bool = False    # governor started less than ttl ago: what it promised before is unknown
    pre_promote_vetoed: bool = False  # the pre_promote callback refused a promotion less than ttl ago
    clone_failed_from: Optional[str] = None  # the clonefrom replica the last failed clone copied from
    scheduled_restart: Optional[float] = None  # an operator's scheduled restart: when (wall clock)
    scheduled_pending_only: bool = False     # ... and only if a changed setting waits for a restart
    pending_restart: bool = False            # a changed PostgreSQL setting waits for a restart
    remote_timeline: Optional[int] = None    # standby leader not streaming: the primary cluster's timeline
    # (IDENTIFY_SYSTEM, same system identifier); None: not asked, or no answer
    # During a leader race, other servers of this cluster asked directly (the members, the last
    # leader, this replica's upstream): those that answered as writable primaries, and those that
    # answered but could not say ("node1 (10.0.0.11:5432)")
    writable_elsewhere: Tuple[str, ...] = ()
    unknown_elsewhere: Tuple[str, ...] = ()
    data_major: Optional[int] = None         # the data directory's PG_VERSION
    upgrade_link_failed: Optional[str] = None  # the old system identifier whose upgrade this replica
    # could not link its files for (upgrade_link.py): it clones instead


@dataclass(frozen=True)
class Decision:
    case: str
    message: str
    actions: Tuple[Action, ...] = ()
    leader: Optional[str] = None    # the member to follow or clone from; None = nobody
    source: Optional[str] = None    # clone: a replica tagged clonefrom to copy instead of the leader
    remote: Optional[Tuple[Any, ...]] = None  # standby cluster: the primary cluster's standby.Upstream,
    # followed (cloned, rewound against) instead of a member; its lock guards no writable server
    failover: bool = False          # a promotion won in a race for a lock nobody held (counted as failover)
    serves: Optional[str] = None    # the operator's request it carries out: "restart" or "reinitialize"

    @property
    def summary(self) -> str:
        return f"{self.case}: {self.message}"

    @property
    def holds_on_promises(self) -> bool:
        """Failsafe: this primary stays one on its members' promises."""
        return Action.FAILSAFE_HOLD in self.actions


def common_position(timeline: Optional[int], lsn: Optional[int], history: Tuple[Dict[str, Any], ...]) -> Optional[int]:
    """How far a member's WAL agrees with the newest timeline: its position, capped at the switch
    point where its own timeline was left for the next one (the `history` key records each
    promotion's timeline and position). Unknown timeline: the position as it is."""
    if lsn is None or timeline is None:
        return lsn
    ends = [entry.get("lsn") for entry in history
            if isinstance(entry.get("timeline"), int) and entry["timeline"] > timeline
            and isinstance(entry.get("lsn"), int) and not isinstance(entry.get("lsn"), bool)]
    return min([lsn] + ends)
