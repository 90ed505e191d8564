"""PostgreSQL settings checked before they reach postgresql.conf.

A bad value in postgresql.conf does not fail at once: the running server keeps its old value on
reload and refuses to start at the next restart. So every name and value from a file, a reload,
`PATCH /config`, `edit-config` or the DCS is checked here first, against the server binary's own
catalogue (`postgres --describe-config`: every setting with its type and bounds, no running server
needed; governor/postgres/catalogue.py reads it, this module checks without I/O). Names with a
dot (`auto_explain.log_min_duration`) belong to extensions the catalogue does not know: only
their form is checked.
"""
from __future__ import annotations

import math
import re
from dataclasses import dataclass
from typing import Any, Dict, List, Optional, Tuple

from governor import pgvalue

NAME_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_$]*(\.[A-Za-z_][A-Za-z0-9_$]*)?$")
INTEGER_RE = re.compile(r"^\s*[-+]?\d+\s*$")
ENUM_RE = re.compile(r"^[A-Za-z0-9_.-]+( [A-Za-z0-9_.-]+)*$")    # 'repeatable read': one space between words
VALUE_CONTROL_RE = re.compile(r"[\x00-\x08\x0a-\x1f\x7f]")      # a tab is only a space to PostgreSQL
MAX_VALUE_LENGTH = 4096
WAL_SEGMENT_MB = 16


RUNS = "runs a program"
LOADS = "loads code"
WRITES = "chooses where the server writes files"
# Settings with which the server runs a program, loads code or chooses where it writes files. They
# come only from each member's own files (postgresql.parameters), never from etcd or the API:
# whoever can write there would otherwise run programs as postgres on every member.
FILE_ONLY: Dict[str, str] = {
    "archive_command": RUNS, "restore_command": RUNS, "archive_cleanup_command": RUNS,
    "recovery_end_command": RUNS, "ssl_passphrase_command": RUNS,
    "archive_library": LOADS, "shared_preload_libraries": LOADS, "session_preload_libraries": LOADS,
    "local_preload_libraries": LOADS, "dynamic_library_path": LOADS, "jit_provider": LOADS,
    "oauth_validator_libraries": LOADS,
    "plperl.on_init": RUNS, "plperl.on_plperl_init": RUNS, "plperl.on_plperlu_init": RUNS,
    "pltcl.start_proc": RUNS, "pltclu.start_proc": RUNS, "plv8.start_proc": RUNS,
    "log_directory": WRITES, "log_filename": WRITES, "external_pid_file": WRITES,
}


def file_only(name: Any) -> Optional[str]:
    """What a setting that only the files may set does ("runs a program"), or None."""
    return FILE_ONLY.get(name.lower()) if isinstance(name, str) else None


@dataclass(frozen=True)
class Setting:
    name: str
    type: str            # BOOLEAN | INTEGER | REAL | STRING | ENUM
    minimum: Optional[float] = None
    maximum: Optional[float] = None


Catalogue = Dict[str, Setting]


def _float(text: str) -> Optional[float]:
    try:
        return float(text)
    except ValueError:
        return None


def translate_renamed(params: Dict[str, Any], cat: Optional[Catalogue]) -> Tuple[Dict[str, Any], List[str]]:
    """Settings renamed by PostgreSQL that the 2015 template's files still use, translated for the
    installed server: wal_keep_segments (gone in 13) becomes wal_keep_size. Returns the
    parameters and one warning per translation."""
    if cat is None or "wal_keep_segments" not in params or "wal_keep_segments" in cat or "wal_keep_size" not in cat:
        return params, []
    out = dict(params)
    segments = out.pop("wal_keep_segments")
    if "wal_keep_size" in out:
        return out, ["postgresql.parameters.wal_keep_segments: ignored, PostgreSQL 13+ has only wal_keep_size, "
                     "which is also set"]
    if not isinstance(segments, bool) and (isinstance(segments, int) or INTEGER_RE.match(str(segments))):
        size = int(str(segments).strip()) * WAL_SEGMENT_MB
        out["wal_keep_size"] = f"{size}MB"
        return out, [f"postgresql.parameters.wal_keep_segments: {segments} translated to wal_keep_size: "
                     f"{size}MB (PostgreSQL 13 replaced the setting)"]
    out["wal_keep_segments"] = segments   # not a number: the check reports it
    return out, []


def check(name: Any, value: Any, cat: Optional[Catalogue]) -> Optional[str]:
    """What is wrong with `name: value` as a PostgreSQL setting, or None."""
    if not isinstance(name, str) or not NAME_RE.fullmatch(name):
        return "expected a PostgreSQL setting name (letters, digits and '_', optionally extension.name)"
    if isinstance(value, bool):
        text = "on" if value else "off"
    elif isinstance(value, int):
        text = str(value)
    elif isinstance(value, float):
        if not math.isfinite(value):
            return f"expected a finite number, got {value!r}"
        text = repr(value)
    elif isinstance(value, str):
        text = value
    else:
        return f"expected a string, number or boolean, got {type(value).__name__}"
    if VALUE_CONTROL_RE.search(text):
        return "control characters (such as a newline) are not allowed in a value"
    if len(text) > MAX_VALUE_LENGTH:
        return f"longer than {MAX_VALUE_LENGTH} characters"
    if "." in name or cat is None:
        return None
    setting = cat.get(name.lower())
    if setting is None:
        return "unknown to this PostgreSQL server (postgres --describe-config does not list it)"
    return _check_type(setting, value, text)


def _check_type(setting: Setting, value: Any, text: str) -> Optional[str]:
    """As the server reads `text` (governor writes it to postgresql.conf as it is)."""
    kind = setting.type
    if kind == "BOOLEAN":
        if isinstance(value, bool) or pgvalue.parse_bool(text) is not None:
            return None
        return f"expected on or off (or true, false, yes, no, 1, 0), got {value!r}"
    if kind in ("INTEGER", "REAL"):
        if isinstance(value, bool):
            return f"expected a number, got {value!r}"
        unit = pgvalue.UNITS.get(setting.name.lower())
        number, why = pgvalue.parse_number(text, kind == "INTEGER", unit)
        if number is None:
            return f"expected {'an integer' if kind == 'INTEGER' else 'a number'}" + \
                (" (optionally with a unit such as MB or s)" if unit else "") + f": {why}, got {value!r}"
        if setting.minimum is not None and number < setting.minimum or \
                setting.maximum is not None and number > setting.maximum:
            shown = f" {unit}" if unit else ""
            return f"expected a value from {_plain(setting.minimum)} to {_plain(setting.maximum)}{shown}, got {value!r}"
        return None
    if kind == "ENUM":
        if isinstance(value, (bool, int)) or ENUM_RE.fullmatch(text):
            return None
        return f"expected one of the setting's words, got {value!r}"
    return None   # STRING: any text without control characters


def _plain(number: Optional[float]) -> str:
    if number is None:
        return "?"
    return str(int(number)) if number == int(number) else str(number)
