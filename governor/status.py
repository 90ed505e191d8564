"""What the HA loop last saw, published for the HTTP API and the metrics exporter.

The loop builds one immutable NodeStatus per pass; readers never touch PostgreSQL or etcd, so a
health check costs nothing but a lock and a dictionary.
"""
from __future__ import annotations

import threading
from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional, Tuple

from governor import clock, standby
from governor.cluster import Cluster
from governor.sync import describe as describe_sync


@dataclass(frozen=True)
class ReplicaLag:
    """One row of pg_stat_replication as the primary sees it."""
    name: str
    state: str
    sync_state: str
    lag_bytes: Optional[int]        # primary's current position - replica's replayed position
    flush_lsn: Optional[int] = None


@dataclass(frozen=True)
class Archiver:
    """pg_stat_archiver, and the segments waiting for archive_command (archive_mode on)."""
    archived_count: int
    last_archived_wal: Optional[str]
    last_archived_time: Optional[float]     # Unix time
    failed_count: int
    last_failed_wal: Optional[str]
    last_failed_time: Optional[float]
    pending: Optional[int] = None           # .ready files in pg_wal/archive_status

    @property
    def failing(self) -> bool:
        """Its last attempt failed: nothing archived since the last failure."""
        return self.last_failed_time is not None and (self.last_archived_time or 0) < self.last_failed_time

    def as_dict(self) -> Dict[str, Any]:
        return {"archived_count": self.archived_count, "last_archived_wal": self.last_archived_wal,
                "last_archived_time": self.last_archived_time, "failed_count": self.failed_count,
                "last_failed_wal": self.last_failed_wal, "last_failed_time": self.last_failed_time,
                "pending_segments": self.pending, "failing": self.failing}


@dataclass(frozen=True)
class NodeStatus:
    name: str
    scope: str
    role: str = "unknown"           # primary | replica | stopped | uninitialized | unknown
    state: str = "starting"
    running: bool = False
    timeline: Optional[int] = None
    lsn: Optional[int] = None           # primary: current position; replica: received
    replay_lsn: Optional[int] = None
    streaming: bool = False             # replica: its WAL receiver is streaming
    upstream: Optional[str] = None
    holds_lock: bool = False
    lock_deadline: Optional[float] = None  # monotonic time the lock expires, as this node knows it
    leader: Optional[str] = None
    dcs_reachable: bool = False
    dcs_error: Optional[str] = None     # why etcd could not be used in the last loop
    etcd_split: bool = False            # its etcd endpoints belong to different etcd clusters
    etcd_cluster_id: Optional[str] = None  # the etcd cluster its endpoints answered from (v3)
    tags: Dict[str, Any] = field(default_factory=dict)
    decision: str = ""
    message: str = ""
    loop_finished: float = 0.0          # monotonic time of the last completed loop
    loop_finished_wall: float = 0.0
    cluster: Optional[Cluster] = None
    replicas: Tuple[ReplicaLag, ...] = ()
    pg_version: Optional[int] = None
    paused: bool = False
    pending_restart: bool = False       # a changed PostgreSQL setting needs a restart
    synchronous_mode: str = "off"
    started_at: Optional[float] = None  # postmaster start, Unix time
    api_url: Optional[str] = None
    conn_url: Optional[str] = None
    failsafe: Optional[str] = None      # "primary on its members' promises" / "vouched for NAME" (failsafe)
    pre_promote_refused: bool = False   # the pre_promote callback refused a promotion less than ttl ago
    recovering_standby: bool = False    # PostgreSQL runs in standby mode but does not answer yet
    scheduled_restart: Optional[float] = None  # an operator's scheduled restart (Unix time)
    archiver: Optional[Archiver] = None  # when archive_mode is on (or always)

    def lock_valid(self, now: Optional[float] = None) -> bool:
        if not self.holds_lock or self.lock_deadline is None:
            return False
        return (now if now is not None else clock.monotonic()) < self.lock_deadline

    @property
    def is_primary(self) -> bool:
        """A running primary that holds a lock that has not expired as far as this node knows:
        a frozen or cut-off leader drops out of the load balancer on its own."""
        return self.running and self.role == "primary" and self.lock_valid()

    @property
    def is_replica(self) -> bool:
        return self.running and self.role == "replica"

    @property
    def sync_standby(self) -> bool:
        """Named by the leader's synchronous promise (it has every acknowledged commit)."""
        sync = self.cluster.sync if self.cluster is not None else None
        return bool(sync and sync.synchronous and self.name in sync.members and sync.leader != self.name)

    @property
    def sync_degraded(self) -> Optional[bool]:
        """Leader in synchronous mode: True while commits are acknowledged without a standby."""
        if not self.is_primary or self.synchronous_mode == "off":
            return None
        sync = self.cluster.sync if self.cluster is not None else None
        return not (sync and sync.synchronous and sync.leader == self.name)

    def lag_bytes(self) -> Optional[int]:
        """This replica's distance behind the leader's last published position."""
        if self.cluster is None or self.cluster.leader_lsn is None or self.lsn is None:
            return None
        return max(0, self.cluster.leader_lsn - self.lsn)

    def as_dict(self) -> Dict[str, Any]:
        now = clock.monotonic()
        return {
            "name": self.name,
            "scope": self.scope,
            "role": self.role,
            "state": self.state,
            "running": self.running,
            "timeline": self.timeline,
            "lsn": self.lsn,
            "replay_lsn": self.replay_lsn,
            "streaming": self.streaming,
            "upstream": self.upstream,
            "leader": self.leader,
            "holds_lock": self.holds_lock,
            "lock_expires_in": round(self.lock_deadline - now, 3) if self.holds_lock and self.lock_deadline else None,
            "lag_bytes": self.lag_bytes() if self.role == "replica" else None,
            "dcs_reachable": self.dcs_reachable,
            "dcs_error": self.dcs_error,
            "tags": self.tags,
            "decision": self.decision,
            "message": self.message,
            "last_loop_age": round(now - self.loop_finished, 3) if self.loop_finished else None,
            "pg_version": self.pg_version,
            "paused": self.paused,
            "pending_restart": self.pending_restart,
            "synchronous_mode": self.synchronous_mode,
            "sync_standby": self.sync_standby,
            "sync_degraded": self.sync_degraded,
            "postmaster_start_time": self.started_at,
            "conn_url": self.conn_url,
            "api_url": self.api_url,
            "failsafe": self.failsafe,
            "pre_promote_refused": self.pre_promote_refused,
            "recovering_standby": self.recovering_standby,
            "scheduled_restart": self.scheduled_restart,
            "archiver": self.archiver.as_dict() if self.archiver else None,
            "standby_cluster": standby.public(self.cluster),
        }

    def cluster_dict(self) -> Dict[str, Any]:
        cluster = self.cluster
        members: List[Dict[str, Any]] = []
        if cluster is not None:
            leader = cluster.leader.name if cluster.leader else None
            for m in cluster.members:
                lag = None
                if m.name != leader and cluster.leader_lsn is not None and m.lsn is not None:
                    lag = max(0, cluster.leader_lsn - m.lsn)
                sync = cluster.sync
                lead = "standby leader" if standby.KEY in cluster.config else "leader"
                members.append({"name": m.name, "role": lead if m.name == leader else m.role,
                                "sync_standby": bool(sync and sync.synchronous and m.name in sync.members
                                                     and m.name != leader),
                                "state": m.state, "timeline": m.timeline, "lsn": m.lsn, "lag_bytes": lag,
                                "conn_url": m.conn_url, "api_url": m.api_url, "tags": m.tags,
                                "pending_restart": m.pending_restart, "failsafe": m.failsafe,
                                "scheduled_restart": m.scheduled_restart})
        return {"scope": self.scope, "leader": self.leader, "paused": bool(cluster and cluster.paused),
                "initialized": bool(cluster and cluster.initialized),
                "leader_lsn": cluster.leader_lsn if cluster else None, "members": members,
                "history": list(cluster.history) if cluster else [], "dcs_reachable": self.dcs_reachable,
                "sync": cluster.sync.as_dict() if cluster and cluster.sync else None,
                "synchronous": describe_sync(cluster.sync if cluster else None),
                "standby_cluster": standby.public(cluster)}


class StatusBoard:
    """Thread-safe holder of the latest NodeStatus."""

    def __init__(self, initial: NodeStatus):
        self._lock = threading.Lock()
        self._status = initial

    def get(self) -> NodeStatus:
        with self._lock:
            return self._status

    def set(self, status: NodeStatus) -> None:
        with self._lock:
            self._status = status
