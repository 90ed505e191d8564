"""An immutable snapshot of what the DCS says about one cluster."""
from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from typing import Any, Dict, Optional, Tuple

from governor.failsafelist import FailsafeList
from governor.sync import SyncState


@dataclass(frozen=True)
class Member:
    name: str
    role: str = "unknown"          # primary | replica | uninitialized | stopped
    state: str = "unknown"         # running | stopped | starting | creating replica | ...
    conn_url: Optional[str] = None
    api_url: Optional[str] = None
    timeline: Optional[int] = None
    lsn: Optional[int] = None      # primary: current WAL position; replica: received position
    replay_lsn: Optional[int] = None
    tags: Dict[str, Any] = field(default_factory=dict)
    pending_restart: bool = False  # a changed PostgreSQL setting waits for a restart
    failsafe: Optional[str] = None  # what failsafe has this member do ("vouched for pg1: ...")
    pre_promote_refused: bool = False  # its pre_promote callback refused a promotion less than ttl ago
    slots: Dict[str, int] = field(default_factory=dict)  # the leader's permanent slots: name -> restart_lsn
    version: Optional[str] = None     # its governor's version
    pg_version: Optional[int] = None  # its PostgreSQL's server_version_num
    scheduled_restart: Optional[float] = None  # when an operator scheduled its restart (Unix time)
    pg_majors: Tuple[int, ...] = ()   # the PostgreSQL major versions installed on its host
    upgrade_blockers: Tuple[str, ...] = ()   # what in its configuration keeps a major upgrade from running
    disk_free: Optional[int] = None   # bytes free beside its data directory (an upgrade's re-clone needs them)
    recovering_standby: bool = False  # from its /status only: in standby mode, not answering yet

    @classmethod
    def from_json(cls, name: str, text: str) -> Member:
        try:
            data = loads(text)
        except ValueError:
            return cls(name=name)
        if not isinstance(data, dict):
            return cls(name=name)
        return cls(
            name=name,
            role=str(data.get("role", "unknown")),
            state=str(data.get("state", "unknown")),
            conn_url=_str_or_none(data.get("conn_url")),
            api_url=_str_or_none(data.get("api_url")),
            timeline=_int_or_none(data.get("timeline")),
            lsn=_int_or_none(data.get("lsn")),
            replay_lsn=_int_or_none(data.get("replay_lsn")),
            tags=data.get("tags") if isinstance(data.get("tags"), dict) else {},
            pending_restart=data.get("pending_restart") is True,
            failsafe=_printable(data.get("failsafe")),
            pre_promote_refused=data.get("pre_promote_refused") is True,
            slots=_slot_positions(data.get("slots")),
            version=_printable(data.get("version")),
            pg_version=_int_or_none(data.get("pg_version")),
            scheduled_restart=_time_or_none(data.get("scheduled_restart")),
            pg_majors=_majors(data.get("pg_majors")),
            disk_free=_int_or_none(data.get("disk_free")),
            upgrade_blockers=tuple(t for t in (_printable(b) for b in data.get("upgrade_blockers", [])[:4]) if t)
            if isinstance(data.get("upgrade_blockers"), list) else (),
        )

    @property
    def can_lead(self) -> bool:
        """Whether it would take the lock in a race (as far as its published state says)."""
        return not self.tags.get("nofailover") and failover_priority(self.tags) > 0 and not self.pre_promote_refused


def failover_priority(tags: Dict[str, Any]) -> int:
    """A member's failover_priority tag; 1 when absent, and when it is not a valid one (a value
    from etcd: only a tie-break among equally advanced members rests on it)."""
    value = tags.get("failover_priority", 1)
    return value if isinstance(value, int) and not isinstance(value, bool) and 0 <= value <= 10000 else 1


def loads(text: Optional[str]) -> Any:
    """JSON from etcd; ValueError for anything that is not (nesting that exhausts the parser too)."""
    if not isinstance(text, str) or len(text) > 1024 * 1024:
        raise ValueError("not a JSON text of reasonable size")
    try:
        return json.loads(text)
    except RecursionError as exc:
        raise ValueError("nested too deeply") from exc


def _time_or_none(value: Any) -> Optional[float]:
    """A Unix time from etcd: a finite, non-negative number of seconds, else unknown."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 <= value < 1e11:
        return None
    return float(value)


def _majors(value: Any) -> Tuple[int, ...]:
    """Installed PostgreSQL major versions from a member key: small integers, at most 32."""
    if not isinstance(value, list) or len(value) > 32:
        return ()
    return tuple(sorted({v for v in value if isinstance(v, int) and not isinstance(v, bool) and 0 < v < 1000}))


def _slot_positions(value: Any) -> Dict[str, int]:
    """Slot positions from a member key: only valid slot names and WAL positions, at most 64."""
    if not isinstance(value, dict) or len(value) > 64:
        return {}
    return {k: v for k, v in value.items() if isinstance(k, str) and re.fullmatch(r"[a-z0-9_]{1,63}", k)
            and isinstance(v, int) and not isinstance(v, bool) and 0 <= v < 2**64}


def _int_or_none(value: Any) -> Optional[int]:
    """A non-negative 64-bit integer (an LSN, a timeline), or None for anything else."""
    if isinstance(value, bool) or not isinstance(value, (int, str)):
        return None
    try:
        number = int(value)
    except (TypeError, ValueError):
        return None
    return number if 0 <= number < 2**64 else None


def _printable(value: Any) -> Optional[str]:
    """Text shown to operators as it is (governorctl list): printable characters only, short."""
    if not isinstance(value, str):
        return None
    value = value[:200]
    return value if value.isprintable() else "".join(c for c in value if c.isprintable())


def _str_or_none(value: Any) -> Optional[str]:
    return value if isinstance(value, str) and len(value) < 1024 else None


@dataclass(frozen=True)
class Leader:
    name: str
    index: int = 0                 # the DCS modification index, for watches
    ttl: Optional[float] = None    # seconds left as the DCS reported them


@dataclass(frozen=True)
class Switchover:
    """A planned change of leader requested by an operator (the `failover` key)."""
    leader: Optional[str]
    candidate: str
    requested_at: float            # Unix time of the request
    scheduled_at: Optional[float] = None   # Unix time it is due; None: at once

    @classmethod
    def from_json(cls, text: str) -> Optional[Switchover]:
        try:
            data = loads(text)
            scheduled = data.get("scheduled_at")
            leader = data.get("leader")
            if not isinstance(data["candidate"], str) or not (leader is None or isinstance(leader, str)):
                return None
            return cls(leader=leader, candidate=data["candidate"],
                       requested_at=float(data.get("requested_at", 0)),
                       scheduled_at=float(scheduled) if scheduled is not None else None)
        except (TypeError, ValueError, KeyError, AttributeError, OverflowError):
            return None

    def due(self, now: float) -> bool:
        return self.scheduled_at is None or self.scheduled_at <= now


# The initdb options an upgrade record may carry: the ones the leader writes (install user, locale,
# checksums), nothing that chooses where files go or what runs: the record comes from etcd.
INITDB_OPTION = re.compile(r"-U|-A|trust|[A-Za-z0-9_]{1,63}|--(encoding|lc-collate|lc-ctype|locale-provider|"
                           r"icu-locale|builtin-locale)=[A-Za-z0-9_.@-]{1,64}|--(no-)?data-checksums")
UPGRADE_BEFORE_START = BEFORE_START = ("requested", "stopped", "upgraded")
UPGRADE_ACTIVE = BEFORE_START + ("starting", "started", "rollback")
UPGRADE_STEPS = UPGRADE_ACTIVE + ("done", "rolled_back")


@dataclass(frozen=True)
class UpgradeRecord:
    to: int
    source: int                       # the major upgraded from ("from" in etcd)
    leader: str
    sysid: str                        # the old cluster's system identifier
    step: str
    index: int = 0                    # the key's modification index, for compare-and-swap
    message: str = ""
    initdb: Tuple[str, ...] = ()      # initdb's options for the new cluster (install user, locale, checksums)
    started_at: float = 0.0           # Unix time of the request
    facts: Dict[str, Any] = field(default_factory=dict)

    @property
    def active(self) -> bool:
        return self.step in UPGRADE_ACTIVE

    def as_dict(self) -> dict:
        return {"to": self.to, "from": self.source, "leader": self.leader, "sysid": self.sysid, "step": self.step,
                "message": self.message, "initdb": list(self.initdb), "started_at": self.started_at,
                "facts": self.facts}

    @classmethod
    def from_json(cls, text: Optional[str], index: int) -> Optional[UpgradeRecord]:
        """The record as etcd holds it; None when it does not parse (taken as unknown: hold)."""
        try:
            data = loads(text)
        except ValueError:
            return None
        if not isinstance(data, dict):
            return None
        to, source, step = data.get("to"), data.get("from"), data.get("step")
        leader, sysid, initdb = data.get("leader"), data.get("sysid"), data.get("initdb", [])
        if not all(isinstance(v, int) and not isinstance(v, bool) and 0 < v < 1000 for v in (to, source)) \
                or step not in UPGRADE_STEPS or not isinstance(leader, str) or not isinstance(sysid, str) \
                or not sysid.isdigit() or not isinstance(initdb, list) \
                or not all(isinstance(a, str) and INITDB_OPTION.fullmatch(a) for a in initdb):
            return None
        message, started = data.get("message", ""), data.get("started_at", 0)
        facts = data.get("facts", {})
        return cls(to=to, source=source, leader=leader, sysid=sysid, step=step, index=index,
                   message=message[:2000] if isinstance(message, str) else "", initdb=tuple(initdb),
                   started_at=float(started) if isinstance(started, (int, float)) and not isinstance(started, bool)
                   else 0.0, facts=facts if isinstance(facts, dict) else {})



@dataclass(frozen=True)
class Cluster:
    initialize: Optional[str]      # None: key absent; "": bootstrap claimed, no system id yet
    leader: Optional[Leader]
    members: Tuple[Member, ...] = ()
    leader_lsn: Optional[int] = None
    index: int = 0                 # the DCS index this snapshot was read at
    history: Tuple[Dict[str, Any], ...] = ()  # one record per promotion, oldest first
    audit: Tuple[Dict[str, Any], ...] = ()    # the newest control requests (audit.py), oldest first
    switchover: Optional[Switchover] = None
    paused: bool = False           # maintenance mode: no automatic action (governorctl pause)
    config: Dict[str, Any] = field(default_factory=dict)  # dynamic settings (governorctl edit-config)
    config_index: int = 0          # modification index of the `config` key; 0: no such key
    ignored_settings: Tuple[str, ...] = ()  # in the `config` key, but only the files may set them: left out
    sync: Optional[SyncState] = None   # the leader's synchronous replication promise (`sync` key)
    problems: Tuple[str, ...] = ()     # keys that did not parse and were taken as unknown/absent
    leader_lsn_unreadable: bool = False  # optime/leader exists but does not parse: the position is unknown
    failsafe: Optional[FailsafeList] = None   # the leader's failsafe member list (failsafe.py)
    failsafe_unreadable: bool = False         # a `failsafe` key that does not parse: unknown
    upgrade: Optional[UpgradeRecord] = None   # a major-version upgrade under way (upgrade_plan.py)
    upgrade_unreadable: bool = False          # an `upgrade` key that does not parse: hold

    @property
    def initialized(self) -> bool:
        return bool(self.initialize)

    def member(self, name: str) -> Optional[Member]:
        for m in self.members:
            if m.name == name:
                return m
        return None

    def upstream_of(self, name: str) -> Optional[str]:
        """The replica member `name` streams from instead of the leader (its replicatefrom tag),
        when that one runs as a replica on the leader's timeline, publishes an address, and
        does not lead back to `name` through the others' tags; None: it follows the leader."""
        me = self.member(name)
        target = me.tags.get("replicatefrom") if me is not None else None
        if not isinstance(target, str) or target == name or self.leader is None or target == self.leader.name:
            return None
        upstream, leader = self.member(target), self.member(self.leader.name)
        if upstream is None or upstream.role != "replica" or upstream.state != "running" or not upstream.conn_url:
            return None
        if leader is not None and leader.timeline and upstream.timeline and leader.timeline != upstream.timeline:
            return None
        seen, step = {name}, target
        while isinstance(step, str) and step not in seen and len(seen) <= len(self.members):
            seen.add(step)
            above = self.member(step)
            step = above.tags.get("replicatefrom") if above is not None else None
        return None if step == name else target

    @property
    def leader_member(self) -> Optional[Member]:
        return self.member(self.leader.name) if self.leader else None


def clone_source(cluster: Cluster, me: str, failed: Optional[str]) -> Optional[str]:
    """The most advanced running replica tagged clonefrom (True, not merely truthy: a tag from
    etcd), other than the one the last clone failed from (then the leader, or another)."""
    tagged = [m for m in cluster.members if m.name not in (me, failed) and m.tags.get("clonefrom") is True
              and m.conn_url
              and m.role == "replica" and m.state == "running" and m.lsn is not None]
    return max(tagged, key=lambda m: (m.lsn, m.name)).name if tagged else None


HOST_RE = re.compile(r"[A-Za-z0-9_.:%-]{1,253}")


def parse_conn_url(url: str) -> Optional[Tuple[str, int]]:
    """postgres://host:port/db -> (host, port); None when it is not that shape. The host ends up in
    primary_conninfo and pg_rewind's command line, so only host-name and address characters pass."""
    if not isinstance(url, str):
        return None
    rest = url.split("://", 1)[-1].split("/", 1)[0].rsplit("@", 1)[-1]
    if rest.startswith("["):
        host, _, port = rest[1:].partition("]:")
    else:
        host, _, port = rest.rpartition(":") if ":" in rest else (rest, "", "")
    if not HOST_RE.fullmatch(host) or not (port == "" or port.isdigit() and 0 < int(port) < 65536):
        return None
    return host, int(port or 5432)
