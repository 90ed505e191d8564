"""A Patroni cluster's keys in etcd as governor's, for the takeover's last step
(`governorctl migrate --takeover finish`, ctl_patroni.py): its `config` key in dynamic.py's
format, its `history` in governor's. Pure."""
from __future__ import annotations

from typing import Any, Dict, List, Tuple

from governor import dynamic, pgparams
from governor.patroni_config import DYNAMIC_TOP


def dynamic_config(patroni: Any) -> Tuple[Dict[str, Any], List[str]]:
    """Patroni's `config` key as governor's (dynamic.py's format), with what was left out."""
    data = patroni if isinstance(patroni, dict) else {}
    out: Dict[str, Any] = {name: data[name] for name in DYNAMIC_TOP if name in data}
    left = [f"{name}: not a cluster-wide setting in governor" for name in data
            if name not in DYNAMIC_TOP and name not in ("postgresql", "standby_cluster")]
    pg = data.get("postgresql") if isinstance(data.get("postgresql"), dict) else {}
    parameters = {}
    for name, value in (pg.get("parameters") or {}).items() if isinstance(pg.get("parameters"), dict) else ():
        if pgparams.file_only(name) or name in dynamic.MEMBER_PARAMETERS:
            left.append(f"postgresql.parameters.{name}: each member's files (the translation put it there)")
        else:
            parameters[name] = value
    if parameters:
        out["postgresql"] = {"parameters": parameters}
    left += [f"postgresql.{name}: not a cluster-wide setting in governor" for name in pg if name != "parameters"]
    standby = data.get("standby_cluster")
    if isinstance(standby, dict):
        out["standby_cluster"] = {k: standby[k] for k in ("host", "port", "primary_slot_name") if k in standby}
    for problem in dynamic.validate(out):
        left.append(f"{problem}: left out")
        key = problem.split(": ")[1] if problem.count(": ") >= 2 else ""
        if key.startswith("postgresql.parameters."):
            out.get("postgresql", {}).get("parameters", {}).pop(key[len("postgresql.parameters."):], None)
        else:
            out.pop(key, None)
    return out, left


def history(patroni: Any) -> List[Dict[str, Any]]:
    """Patroni's `history` key ([[timeline, lsn, reason, time, new leader], ...]: the timeline that
    ended at lsn) as governor's entries (the timeline that began there); rows that do not parse
    are left out."""
    entries = []
    for row in patroni if isinstance(patroni, list) else ():
        if not isinstance(row, list) or len(row) < 3 or not isinstance(row[0], int) or not isinstance(row[1], int) \
                or isinstance(row[0], bool) or isinstance(row[1], bool):
            continue
        entries.append({"timeline": row[0] + 1, "lsn": row[1], "reason": str(row[2])[:500],
                        "time": str(row[3])[:64] if len(row) > 3 else None,
                        "leader": str(row[4])[:64] if len(row) > 4 and row[4] else None, "from": "patroni"})
    return entries
