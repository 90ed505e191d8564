"""The key layout under /service/<scope>/, shared by the etcd adapters: turning the keys of
one read into a Cluster snapshot."""
from __future__ import annotations

from typing import Iterable, NamedTuple, Optional

from governor.cluster import Cluster, Leader, Member, Switchover, UpgradeRecord, loads
from governor.dynamic import without_file_only
from governor.failsafelist import FailsafeList
from governor.settings import NAME_MAX, NAME_RE
from governor.sync import SyncState


class Entry(NamedTuple):
    key: str                 # relative to the scope prefix, e.g. "leader", "members/node1"
    value: Optional[str]
    index: int               # modification index (v2) or mod_revision (v3)
    ttl: Optional[float] = None


LSN_MAX = 2**64 - 1
# Keys whose change another member acts on at once: a watching member wakes for these; for a
# member key, when it appears or goes (the leader makes or drops a replication slot) or when what
# others act on changes (member_facts) — not for the refresh of a member key or of the leader's
# position, which every member writes each loop.
WAKE_KEYS = frozenset(("leader", "initialize", "failover", "pause", "config", "sync", "upgrade"))


def member_facts(text: Optional[str]) -> tuple:
    """What other members act on in a member key: its role and state (a switchover candidate must
    be a running replica, a synchronous standby a streaming one), addresses, timeline and tags.
    Not its WAL position, which changes every loop."""
    m = Member.from_json("", text or "")
    return (m.role, m.state, m.conn_url, m.api_url, m.timeline, m.pending_restart, m.pre_promote_refused,
            m.scheduled_restart, sorted(m.tags.items(), key=repr))


def wakes(key: str, before: Optional[str], after: Optional[str]) -> bool:
    """Whether a change of `key` (relative to the scope prefix) from value `before` to `after`
    (None: the key did not exist / was deleted) wakes a watching member."""
    if key in WAKE_KEYS:
        return True
    if not key.startswith("members/"):
        return False
    return before is None or after is None or member_facts(before) != member_facts(after)

UNKNOWN_HOLDER = "?unreadable"   # no member can have this name (see NAME_RE)


def parse_lsn(text: Optional[str]) -> Optional[int]:
    """A WAL position as governor writes it (decimal); anything else is unknown (None)."""
    text = (text or "").strip()
    if not text.isdigit() or len(text) > 20:
        return None
    value = int(text)
    return value if value <= LSN_MAX else None


def build_cluster(entries: Iterable[Entry], index: int, problems: Iterable[str] = ()) -> Cluster:
    """The snapshot of one read. Every value is parsed defensively: one that does not parse is
    unknown (None / left out), and the reason is kept in Cluster.problems for the log."""
    problems = list(problems)
    initialize = None
    leader = None
    leader_lsn = None
    leader_lsn_unreadable = False
    members = []
    history: tuple = ()
    audit: tuple = ()
    switchover = None
    paused = False
    config: dict = {}
    config_index = 0
    ignored: list = []
    sync = None
    failsafe, failsafe_unreadable = None, False
    upgrade, upgrade_unreadable = None, False
    for e in entries:
        if e.key == "initialize":
            initialize = e.value or ""
        elif e.key == "leader":
            name = e.value or ""
            if not valid_member_name(name):
                # Held, by someone we cannot name: still held. Nobody races for it, and a member
                # whose own name is not in it does not count as its holder.
                problems.append(f"leader: not a member name ({_snippet(e.value)}); the lock counts as held by "
                                "an unknown member")
                name = UNKNOWN_HOLDER
            leader = Leader(name=name, index=e.index, ttl=e.ttl)
        elif e.key == "optime/leader":
            leader_lsn = parse_lsn(e.value)
            leader_lsn_unreadable = leader_lsn is None
            if leader_lsn is None:
                problems.append(f"optime/leader: expected a WAL position, got {_snippet(e.value)}: "
                                "the leader's position is unknown")
        elif e.key == "pause":
            paused = e.value == "true"
        elif e.key == "failover":
            switchover = Switchover.from_json(e.value or "")
        elif e.key == "sync":
            sync = SyncState.from_json(e.value, e.index)
            if sync is None:
                sync = SyncState.unknown(e.index)
                problems.append(f"sync: not a synchronous replication promise ({_snippet(e.value)}): no "
                                "automatic failover until the leader rewrites it")
        elif e.key == "failsafe":
            failsafe = FailsafeList.from_json(e.value, valid_member_name)
            failsafe_unreadable = failsafe is None
            if failsafe is None:
                problems.append(f"failsafe: not a failsafe member list ({_snippet(e.value)}): no member races for "
                                "the lock until a leader rewrites it (or an operator deletes it)")
        elif e.key == "config":
            config, ignored = without_file_only(json_dict(e.value))
            config_index = e.index
            if ignored:
                problems.append(f"config: {', '.join(ignored)}: only each member's files may set these (they run "
                                "a program, load code or choose where files are written); ignored")
        elif e.key == "upgrade":
            upgrade = UpgradeRecord.from_json(e.value, e.index)
            upgrade_unreadable = upgrade is None
            if upgrade is None:
                problems.append(f"upgrade: not an upgrade record ({_snippet(e.value)}): every member holds (no "
                                "failover) until it is rewritten or removed (governorctl upgrade --abort)")
        elif e.key == "history":
            history = history_list(e.value)
        elif e.key == "audit":
            audit = history_list(e.value)
        elif e.key.startswith("members/"):
            name = e.key[len("members/"):]
            if not valid_member_name(name):
                problems.append(f"members/{_snippet(name)}: not a valid member name; ignored")
                continue
            member = Member.from_json(name, e.value or "")
            if member.role == "unknown" and member.conn_url is None:
                problems.append(f"members/{name}: not a member record ({_snippet(e.value)}); its state is unknown")
            members.append(member)
    return Cluster(initialize=initialize, leader=leader, members=tuple(sorted(members, key=lambda m: m.name)),
                   leader_lsn=leader_lsn, index=index, history=history, switchover=switchover, paused=paused,
                   config=config, config_index=config_index, sync=sync, problems=tuple(problems),
                   ignored_settings=tuple(ignored), audit=audit,
                   leader_lsn_unreadable=leader_lsn_unreadable, failsafe=failsafe,
                   failsafe_unreadable=failsafe_unreadable, upgrade=upgrade,
                   upgrade_unreadable=upgrade_unreadable)


def valid_member_name(name: str) -> bool:
    return bool(NAME_RE.fullmatch(name)) and len(name) <= NAME_MAX


def _snippet(value: Optional[str]) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:60] + "..."


def history_list(text: Optional[str]) -> tuple:
    try:
        data = loads(text or "[]")
    except ValueError:
        return ()
    return tuple(item for item in data if isinstance(item, dict)) if isinstance(data, list) else ()


def json_dict(text: Optional[str]) -> dict:
    try:
        data = loads(text or "{}")
    except ValueError:
        return {"": text}   # not JSON: reported as an invalid dynamic configuration
    return data if isinstance(data, dict) else {"": data}
