"""governorctl list and history: the cluster as a table, JSON or YAML."""
from __future__ import annotations

import json
import time
from typing import List, Optional

import yaml

from governor import standby
from governor.cluster import Cluster
from governor.sync import describe as describe_sync


def rows(cluster: Cluster) -> List[dict]:
    leader = cluster.leader.name if cluster.leader else None
    out = []
    for m in cluster.members:
        lag = None
        if m.name != leader and cluster.leader_lsn is not None and m.lsn is not None:
            lag = max(0, cluster.leader_lsn - m.lsn)
        host = m.conn_url.split("://", 1)[-1].split("/", 1)[0] if m.conn_url else ""
        sync = cluster.sync
        synchronous = bool(sync and sync.synchronous and m.name in sync.members and m.name != leader)
        role = "leader" if m.name == leader else ("sync replica" if synchronous and m.role == "replica" else m.role)
        if m.name == leader and standby.KEY in cluster.config:
            role = "standby leader"
        out.append({"member": m.name, "host": host, "role": role, "sync_standby": synchronous,
                    "state": m.state, "timeline": m.timeline, "lag_bytes": lag, "tags": m.tags,
                    "pending_restart": m.pending_restart, "failsafe": m.failsafe,
                    "version": m.version, "pg_version": _pg_version(m.pg_version),
                    "pg_majors": list(m.pg_majors), "scheduled_restart": m.scheduled_restart})
    return out


def tree_order(cluster: Cluster, data: List[dict]) -> List[dict]:
    """The rows leader first, each member under the one it streams from (replicatefrom), indented
    with "+ " per level; members outside the tree (no leader) at the top level after it."""
    by_name = {r["member"]: r for r in data}
    leader = cluster.leader.name if cluster.leader and cluster.leader.name in by_name else None
    children: dict = {}
    roots = []
    for r in data:
        if r["member"] == leader:
            continue
        upstream = cluster.upstream_of(r["member"]) if leader else None
        parent = upstream if upstream in by_name else leader
        if parent is None:
            roots.append(r["member"])
        else:
            children.setdefault(parent, []).append(r["member"])
    out: List[dict] = []
    seen: set = set()

    def walk(name: str, depth: int) -> None:
        if name in seen:     # a loop in etcd's values: each member is shown once
            return
        seen.add(name)
        out.append({**by_name[name], "member": "  " * max(0, depth - 1) + ("+ " if depth else "") + name})
        for child in sorted(children.get(name, [])):
            walk(child, depth + 1)
    for name in ([leader] if leader else []) + sorted(roots):
        walk(name, 0)
    return out


def format_table(scope: str, cluster: Cluster, tree: bool = False) -> str:
    data = rows(cluster)
    if tree:
        data = tree_order(cluster, data)
    header = ["Member", "Host", "Role", "State", "TL", "Lag in MB", "Tags", "Versions"]
    optional = [(title, cell) for title, cell in (
        ("Pending restart", lambda r: "*" if r["pending_restart"] else ""),
        ("Scheduled restart", lambda r: _when(r["scheduled_restart"])),
        ("Failsafe", lambda r: r["failsafe"] or "")) if any(cell(r) for r in data)]
    header += [title for title, _cell in optional]
    table = [header]
    for r in data:
        lag = "" if r["lag_bytes"] is None else f"{r['lag_bytes'] / 1048576:.1f}"
        tags = ",".join(_tag(k, v) for k, v in sorted(r["tags"].items()) if v is not False and v is not None)
        versions = f"{r['version'] or '?'} / PG {r['pg_version'] or '?'}"[:40]
        row = [r["member"], r["host"], r["role"], r["state"], str(r["timeline"] or ""), lag, tags, versions]
        table.append(row + [cell(r) for _title, cell in optional])
    widths = [max(len(row[i]) for row in table) for i in range(len(header))]
    lines = [f"Cluster: {scope} (initialized: {cluster.initialize or 'no'}) at {_when(time.time())}"]
    sep = "+" + "+".join("-" * (w + 2) for w in widths) + "+"
    lines.append(sep)
    for i, row in enumerate(table):
        lines.append("| " + " | ".join(cell.ljust(w) for cell, w in zip(row, widths)) + " |")
        if i == 0:
            lines.append(sep)
    lines.append(sep)
    if not cluster.leader:
        lines.append("No member holds the leader lock.")
    if cluster.paused:
        lines.append("Maintenance mode: on (governorctl resume to end it)")
    if standby.KEY in cluster.config:
        value = cluster.config[standby.KEY]
        parsed = standby.parse(value)
        lines.append(f"Standby cluster: follows the primary cluster at {parsed.describe()}" if parsed else
                     "Standby cluster: the standby_cluster setting does not parse; nothing is promoted")
    if cluster.sync is not None:
        lines.append(f"Replication: {describe_sync(cluster.sync)}")
    if cluster.upgrade is not None and (cluster.upgrade.active or cluster.upgrade_unreadable):
        u = cluster.upgrade
        lines.append(f"Upgrade: PostgreSQL {u.source} to {u.to} by {u.leader}, step {u.step} (failover held)")
    elif cluster.upgrade_unreadable:
        lines.append("Upgrade: the upgrade key does not parse; failover held (governorctl upgrade --abort)")
    return "\n".join(lines)


def format_history(cluster: Cluster) -> str:
    header = ["TL", "LSN", "Time", "New leader", "Reason"]
    table = [header] + [[str(h.get("timeline", "")), _lsn(h.get("lsn")), str(h.get("time", "")),
                         str(h.get("leader", "")), str(h.get("reason", ""))[:70]] for h in cluster.history]
    widths = [max(len(row[i]) for row in table) for i in range(len(header))]
    lines = ["  ".join(cell.ljust(w) for cell, w in zip(row, widths)).rstrip() for row in table]
    return "\n".join(lines) if cluster.history else "No promotion recorded."


def format_actions(cluster: Cluster) -> str:
    """The promotions and the audit trail (control requests, governorctl's own writes), by time."""
    events = [(_sortable(h.get("time")), _when(_sortable(h.get("time")) or None) or _clean(h.get("time")),
               "promotion", _clean(h.get("leader")),
               f"timeline {h.get('timeline', '?')}: {str(h.get('reason', ''))[:70]}", "") for h in cluster.history]
    for a in cluster.audit:
        moment = a.get("time") if isinstance(a.get("time"), (int, float)) else None
        events.append((moment or 0.0, _when(moment), _clean(a.get("action")), _clean(a.get("member")),
                       f"{_clean(a.get('request'))} -> {_clean(a.get('result'))} {_clean(a.get('outcome'))}".strip(),
                       f"{_clean(a.get('by'))} from {_clean(a.get('from'))}"))
    if not events:
        return "Nothing recorded."
    table = [["Time", "Action", "Member", "What", "Who"]] + [list(e[1:]) for e in sorted(events, key=lambda e: e[0])]
    widths = [max(len(row[i]) for row in table) for i in range(5)]
    return "\n".join("  ".join(cell.ljust(w) for cell, w in zip(row, widths)).rstrip() for row in table)


def _clean(value: object, limit: int = 120) -> str:
    """A value from etcd as one printable line, cut short: the audit key is anyone's to write."""
    text = "" if value is None else str(value)
    return "".join(c if c.isprintable() else "?" for c in text)[:limit]


def _sortable(text: object) -> float:
    try:
        return time.mktime(time.strptime(str(text)[:19], "%Y-%m-%dT%H:%M:%S"))
    except (ValueError, OverflowError):
        return 0.0


def _when(moment: Optional[float]) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S %Z", time.localtime(moment)) if moment is not None else ""


def _lsn(value: object) -> str:
    """Bytes as PostgreSQL's X/X notation."""
    if not isinstance(value, int):
        return ""
    return f"{value >> 32:X}/{value & 0xFFFFFFFF:X}"


def print_list(fmt: str, scope: str, cluster: Cluster) -> None:
    data = {"scope": scope, "leader": cluster.leader.name if cluster.leader else None,
            "paused": cluster.paused, "sync": cluster.sync.as_dict() if cluster.sync else None,
            "members": rows(cluster)}
    if fmt == "json":
        print(json.dumps(data, indent=2))
    elif fmt == "yaml":
        print(yaml.safe_dump(data, sort_keys=False), end="")
    else:
        print(format_table(scope, cluster))


def _tag(key: str, value: object) -> str:
    """A tag as `list` shows it: a set flag by its name, anything else as name=value (from etcd:
    printable and short)."""
    text = str(key) if value is True else f"{key}={value}"
    return "".join(ch if ch.isprintable() and ch != "," else "?" for ch in text)[:60]


def _pg_version(number: object) -> Optional[str]:
    """server_version_num as PostgreSQL prints it: 170002 -> 17.2 (10 and later)."""
    if not isinstance(number, int) or isinstance(number, bool) or not 100000 <= number < 10**7:
        return None
    return f"{number // 10000}.{number % 10000}"
