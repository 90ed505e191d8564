"""Dynamic configuration: cluster-wide settings kept in the DCS `config` key.

`governorctl edit-config` writes them (validated, compare-and-swap); every member lays them over
its own file configuration each loop. They win over the files, because their point is that all
members agree. Only these can be dynamic: the scalar settings declared in cluster_settings.DYNAMIC
(timing, maximum_lag_on_failover, the synchronous and failsafe modes), postgresql.parameters.<name>
(PostgreSQL settings for every member) and standby_cluster ({host, port, primary_slot_name}: this
cluster replicates another and has no primary, standby.py). Identity, addresses and credentials
stay in the files.

Settings that run a program, load code or choose where files are written (pgparams.FILE_ONLY,
standby_cluster.restore_command) are never dynamic: validate() refuses them, and found in the
`config` key in etcd they are left out (without_file_only) and the rest applies.
"""
from __future__ import annotations

from dataclasses import replace
from typing import Any, Dict, List, Optional, Tuple

from governor import cluster_settings, pgparams, standby
from governor.settings import MANAGED_PARAMETERS, Config, parse_sync_mode

# Per-member PostgreSQL settings a cluster-wide value would break.
MEMBER_PARAMETERS = dict(MANAGED_PARAMETERS, unix_socket_directories="each member's file configuration",
                         data_directory="postgresql.data_dir", hba_file="governor",
                         config_file="governor", ident_file="each member's file configuration")
TOP_KEYS = (*cluster_settings.BY_NAME, "postgresql", standby.KEY)


timing = cluster_settings.timing
DEFAULT_TIMING = cluster_settings.DEFAULT_TIMING


def validate(data: Any, base: Tuple[float, float, float] = DEFAULT_TIMING,
             catalogue: Optional[pgparams.Catalogue] = None) -> List[str]:
    """Every problem with `data` as dynamic configuration, as 'config: KEY: expected ...'; the timing
    rule is checked with `base` (ttl, loop_wait, retry_timeout) for the keys `data` does not set,
    PostgreSQL settings against `catalogue` (pgparams) when there is one."""
    if not isinstance(data, dict):
        return ["config: expected a mapping of settings"]
    problems = []

    def fail(key: str, message: str) -> None:
        problems.append(f"config: {key}: {message}")

    for key in data:
        if key not in TOP_KEYS:
            fail(_label(key), f"not a dynamic setting (expected one of {', '.join(TOP_KEYS)})")
    for key, raw in data.items():
        setting = cluster_settings.BY_NAME.get(key)
        if setting and setting.parse(raw) is None:
            fail(key, setting.wrong(_short(raw)))
    if isinstance(data.get(standby.KEY), dict) and "restore_command" in data[standby.KEY]:
        fail(f"{standby.KEY}.restore_command", "runs a program: only each member's files may set it "
                                               "(standby_cluster.restore_command), never etcd or the API")
    elif standby.KEY in data:
        problems.extend(f"config: {problem}" for problem in standby.problems(data[standby.KEY]))
    pg = data.get("postgresql", {})
    if not isinstance(pg, dict):
        fail("postgresql", "expected a mapping with 'parameters'")
        pg = {}
    for key in pg:
        if key != "parameters":
            fail(f"postgresql.{key}", "not a dynamic setting (only postgresql.parameters is)")
    params = pg.get("parameters", {})
    if not isinstance(params, dict):
        fail("postgresql.parameters", "expected a mapping of PostgreSQL settings")
        params = {}
    for name, value in params.items():
        key = f"postgresql.parameters.{_label(name)}"
        lower = str(name).lower()
        if value is None:
            continue      # a removal (JSON merge patch)
        problem = pgparams.check(name, value, catalogue)
        does = pgparams.file_only(name)
        if does:
            fail(key, f"{does}: only each member's files may set it (postgresql.parameters), never etcd or the "
                      "API, so that nobody who can write there runs programs on the members")
        elif problem:
            fail(key, problem)
        elif lower in MEMBER_PARAMETERS or lower == "synchronous_standby_names" and \
                parse_sync_mode(data.get("synchronous_mode")) in ("on", "quorum"):
            fail(key, f"set by {MEMBER_PARAMETERS.get(lower, 'governor in synchronous mode')}, not cluster-wide")
        elif lower == "wal_level" and str(value) == "minimal":
            fail(key, "expected 'replica' or 'logical': streaming replication needs it")
    if not problems:
        values = {**dict(zip(cluster_settings.TIMING, base)),
                  **{k: cluster_settings.BY_NAME[k].parse(v) for k, v in data.items() if k in cluster_settings.BY_NAME}}
        problems.extend(f"config: {key}: {problem}" for key, problem in cluster_settings.rule_problems(values))
    return problems


def without_file_only(data: Any) -> Tuple[Any, List[str]]:
    """The `config` key as read from etcd, without what only the files may set (settings that run
    a program, load code or choose where files are written; standby_cluster.restore_command):
    those are ignored, never applied, and named in the second value; the rest still applies."""
    if not isinstance(data, dict):
        return data, []
    dropped: List[str] = []
    out = dict(data)
    pg = out.get("postgresql")
    params = pg.get("parameters") if isinstance(pg, dict) else None
    if isinstance(params, dict):
        bad = [name for name in params if pgparams.file_only(name)]
        if bad:
            dropped.extend(f"postgresql.parameters.{_label(name)}" for name in bad)
            out["postgresql"] = {**pg, "parameters": {k: v for k, v in params.items() if k not in bad}}
    remote = out.get(standby.KEY)
    if isinstance(remote, dict) and "restore_command" in remote:
        dropped.append(f"{standby.KEY}.restore_command")
        out[standby.KEY] = {k: v for k, v in remote.items() if k != "restore_command"}
    return out, dropped


def _short(value: Any, limit: int = 40) -> str:
    """repr() of a value for a message, cut short: an error must not echo a megabyte back."""
    text = repr(value)
    return text if len(text) <= limit else text[:limit] + "..."


def _label(key: Any) -> str:
    """A key as it may appear in a message: control characters escaped, cut short."""
    text = str(key).encode("unicode_escape").decode("ascii")
    return text if len(text) <= 80 else text[:80] + "..."


def apply(base: Config, data: Dict[str, Any]) -> Config:
    """`base` (the file configuration) with the dynamic settings laid over it."""
    if not data:
        return base
    config = cluster_settings.apply(base, data)
    pg = config.postgresql
    params = (data.get("postgresql") or {}).get("parameters") or {}
    if params:
        pg = replace(pg, parameters={**pg.parameters, **{k: v for k, v in params.items() if v is not None}})
    return replace(config, postgresql=pg)


def nested(dotted: str, value: Any) -> Dict[str, Any]:
    """'a.b.c', v -> {'a': {'b': {'c': v}}}; PostgreSQL names after postgresql.parameters may hold
    dots themselves (auto_explain.log_min_duration)."""
    parts = dotted.split(".")
    if parts[:2] == ["postgresql", "parameters"] and len(parts) > 3:
        parts = parts[:2] + [".".join(parts[2:])]
    out: Dict[str, Any] = {parts[-1]: value}
    for part in reversed(parts[:-1]):
        out = {part: out}
    return out


def combine(first: Dict[str, Any], second: Dict[str, Any]) -> Dict[str, Any]:
    """Two patches as one: `second` wins, None values are kept (they mean 'remove')."""
    out = _copy(first)
    for key, value in second.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = combine(out[key], value)
        else:
            out[key] = value
    return out


def _copy(data: Dict[str, Any]) -> Dict[str, Any]:
    return {k: _copy(v) if isinstance(v, dict) else v for k, v in data.items()}


def _prune(data: Dict[str, Any]) -> Dict[str, Any]:
    return {k: _prune(v) if isinstance(v, dict) else v for k, v in data.items() if v != {}}


def diff(old: Dict[str, Any], new: Dict[str, Any], prefix: str = "") -> List[Tuple[str, Any, Any]]:
    """(dotted key, old, new) for every leaf that differs."""
    out = []
    for key in sorted(set(old) | set(new)):
        a, b = old.get(key), new.get(key)
        if isinstance(a, dict) or isinstance(b, dict):
            out.extend(diff(a if isinstance(a, dict) else {}, b if isinstance(b, dict) else {}, f"{prefix}{key}."))
        elif a != b:
            out.append((f"{prefix}{key}", a, b))
    return out


def patch(data: Dict[str, Any], changes: Dict[str, Any]) -> Dict[str, Any]:
    """`data` with `changes` merged in, recursively; a None value removes the key (JSON merge patch)."""
    out = _copy(data)
    for key, value in changes.items():
        if value is None:
            out.pop(key, None)
        elif isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = patch(out[key], value)
        else:
            out[key] = _copy(value) if isinstance(value, dict) else value
    return _prune(out)
