"""What a member remembers between passes of its loop, in one place.

decide() is a pure function of the etcd snapshot and LocalState; whatever it needs from earlier
passes (how long PostgreSQL has not been up, since when a replica has not streamed, failed
bootstraps...) is kept here by the shell and handed over through LocalState. A new governor
process starts with a fresh NodeMemory: what must survive a restart lives on disk or in etcd.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Dict, Optional, Tuple

from governor import clock
from governor.failsafelist import FailsafeList


def timer(started: Optional[float], active: bool, now: float) -> Tuple[Optional[float], Optional[float]]:
    """A condition that holds since `started` (None: it did not): the new start and the seconds it
    has held, or (None, None) when it no longer holds."""
    if not active:
        return None, None
    started = now if started is None else started
    return started, now - started


@dataclass
class NodeMemory:
    holds_lock: bool = False
    lock_deadline: Optional[float] = None       # monotonic expiry of the lock as we last set it
    dcs_failed: bool = False                     # an etcd call failed in the current (or last) pass
    dcs_error: Optional[str] = None              # why the last read of etcd failed (/status)
    rewind_pending: bool = False                 # this data directory ran as a primary since it last followed
    rewind_failed: bool = False
    bootstrap_failures: int = 0                  # in a row; decide() stops after ha.BOOTSTRAP_ATTEMPTS
    not_streaming_since: Optional[float] = None  # replica: since when it has not streamed from the leader
    not_streaming_from: Optional[str] = None     # ... that leader
    refusing_sessions: bool = False               # PostgreSQL answered but started no new session
    recovering_standby: bool = False              # running, not answering yet, in archive recovery
    streamed_tli: Optional[int] = None           # replica: highest timeline seen streaming
    leader_start_since: Optional[float] = None   # holding the lock: since when PostgreSQL has not been up
    orphan_slots: Dict[str, float] = field(default_factory=dict)  # slot -> when first seen without a member
    published_lsn: Optional[int] = None          # the leader position last written to etcd
    roles_checked: bool = False                  # replication role and superuser password ensured as leader
    conf_target: Optional[tuple] = None          # what postgresql.conf was last written for
    activity: Optional[str] = None               # "bootstrapping" / "creating replica" while it runs
    last_error: Optional[str] = None             # why the last failed action failed
    name_is_ours: bool = False                   # no other governor uses our member name
    sysid_cache: Optional[tuple] = None          # (pg_control stat, ControlData) of the stopped data directory
    settling_since: Optional[float] = None       # PostgreSQL was just started, promoted or re-pointed (monotonic)
    pg_version_of: Optional[float] = None        # the postmaster start time pg_version was read for
    # failsafe (failsafe.py, vouch.py)
    started: float = field(default_factory=clock.monotonic)   # this governor's start
    sysid: Optional[str] = None                  # the data directory's system identifier, last seen
    last_leader: Optional[str] = None            # the leader of the last etcd snapshot that named one
    last_leader_at: Optional[Tuple[str, Tuple[str, int]]] = None  # (name, PostgreSQL host and port) of the
    # last other member seen leading: asked in a leader race whether it still takes writes
    failsafe_list: Optional[FailsafeList] = None  # leader: the failsafe list etcd holds, as far as it knows
    failsafe_since: Optional[float] = None       # leader: kept primary by its members' promises since
    failsafe_promise: Optional[Tuple[str, float]] = None  # replica: (leader vouched for, until), monotonic
    racing: bool = False                         # taking the lock this pass: no promise until the next
    # callbacks (callbacks.py)
    pg_seen: Optional[str] = None                # "primary" / "replica" / "down" at the end of the last pass
    pg_last_role: Optional[str] = None           # the role it last ran as ("primary" / "replica")
    pre_promote_veto_until: float = 0.0          # monotonic: pre_promote refused; not racing until then
    clone_failed_from: Optional[str] = None      # a clonefrom replica a clone failed from: the next uses another
    upgrade_link_failed: Optional[str] = None    # the upgrade (old system id) this replica could not link for
    permanent_positions: Dict[str, int] = field(default_factory=dict)  # leader: its permanent slots' restart_lsn
    standby_slots: str = ""                      # leader: synchronized_standby_slots as written (logical_slots)
    # an operator's scheduled restart (POST /restart with scheduled_at): (wall time, only when a
    # setting waits for it); forgotten when governor stops, as `list` and the docs say
    scheduled_restart: Optional[Tuple[float, bool]] = None

    def pre_promote_refused(self) -> bool:
        """The pre_promote callback refused a promotion less than ttl ago."""
        return self.pre_promote_veto_until > clock.monotonic()

    def settle(self, now: float) -> None:
        """Look at PostgreSQL often until it streams (or is primary): see Governor.sleep."""
        self.settling_since = now
