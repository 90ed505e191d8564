"""WAL archiving and the archive's other uses: the `postgresql.archive` section and
`postgresql.create_replica_methods`, and the pgBackRest command lines governor writes and runs.

Only the archive settings live here; when they apply (which role, which clone method first) is
decided by the executors' callers, and the commands run in `postgres/bootstrap.py`.
"""
from __future__ import annotations

import datetime
import os
import re
import shutil
from typing import Optional

from governor.checker import Checker
from governor.settings import ArchiveConfig, PgBackRest, RestoreSource

KEYS = ("mode", "command", "restore_command", "pgbackrest")
BOOTSTRAP_KEYS = ("method", "stanza", "config", "recovery_target_time")
PGBACKREST_KEYS = ("stanza", "config")
METHODS = ("pgbackrest", "basebackup")
MODES = ("off", "on", "always")
STANZA_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")


def check(c: Checker, parameters: dict, recovery_conf: dict) -> ArchiveConfig:
    """postgresql.archive and postgresql.create_replica_methods."""
    section = c.section("postgresql.archive")
    c.unknown("postgresql.archive", section, KEYS)
    raw_mode = c.get("postgresql.archive.mode")
    mode = {True: "on", False: "off"}.get(raw_mode, raw_mode) if isinstance(raw_mode, bool) else raw_mode
    if mode is not None and mode not in MODES:
        c.fail("postgresql.archive.mode", f"expected one of {', '.join(MODES)}, got {raw_mode!r}")
        mode = None
    command = c.value("postgresql.archive.command", "str", check=_one_line)
    restore = c.value("postgresql.archive.restore_command", "str", check=_one_line)
    backrest = _pgbackrest(c) if c.get("postgresql.archive.pgbackrest") is not None else None
    if backrest and (command or restore):
        c.fail("postgresql.archive.pgbackrest", "give either pgbackrest or command/restore_command, not both")
    mode = mode or ("on" if backrest or command else "off")
    if mode != "off" and not (backrest or command):
        c.fail("postgresql.archive.mode", f"archive_mode {mode} needs postgresql.archive.command or .pgbackrest")
    if section:
        for key in ("archive_mode", "archive_command"):
            if key in parameters:
                c.fail(f"postgresql.parameters.{key}", "set by governor from postgresql.archive; remove it here")
        if "restore_command" in recovery_conf and (backrest or restore):
            c.fail("postgresql.recovery_conf.restore_command",
                   "set by governor from postgresql.archive; remove it here")
    methods = c.value("postgresql.create_replica_methods", "strlist", ["basebackup"])
    if methods is not None:
        unknown = [m for m in methods if m not in METHODS]
        if unknown or not methods or len(set(methods)) != len(methods):
            c.fail("postgresql.create_replica_methods",
                   f"expected a list of distinct methods among {', '.join(METHODS)}, got {methods!r}")
            methods = ["basebackup"]
        elif "pgbackrest" in methods and backrest is None:
            c.fail("postgresql.create_replica_methods", "pgbackrest needs postgresql.archive.pgbackrest")
    return ArchiveConfig(mode=mode, command=command, restore_command=restore, pgbackrest=backrest,
                         create_replica_methods=tuple(methods or ["basebackup"]))


def _pgbackrest(c: Checker) -> Optional[PgBackRest]:
    key = "postgresql.archive.pgbackrest"
    c.unknown(key, c.section(key), PGBACKREST_KEYS)
    stanza = c.value(f"{key}.stanza", "str", required=True,
                     check=lambda v: None if STANZA_RE.match(v) else f"expected a stanza name, got {v!r}")
    config = c.value(f"{key}.config", "str", check=_absolute_file)
    if shutil.which("pgbackrest") is None:
        c.fail(key, "pgbackrest is not installed (apt install pgbackrest)")
    return PgBackRest(stanza, config) if stanza else None


def _one_line(value: str) -> Optional[str]:
    return None if value.strip() and "\n" not in value and "\r" not in value and len(value) <= 4096 \
        else "expected a one-line shell command"


def _absolute_file(value: str) -> Optional[str]:
    if not os.path.isabs(value):
        return f"expected an absolute path, got {value!r}"
    return None if os.path.isfile(value) else f"{value}: no such file"


def check_bootstrap(c: Checker, archive: ArchiveConfig) -> Optional[RestoreSource]:
    """postgresql.bootstrap: how the first member makes a new cluster's data: initdb (the
    default), or a pgBackRest restore of another cluster's backup (latest, or as of
    recovery_target_time), promoted as this cluster's first primary."""
    key = "postgresql.bootstrap"
    c.unknown(key, c.section(key), BOOTSTRAP_KEYS)
    method = c.value(f"{key}.method", "str", "initdb", check=lambda v: None if v in ("initdb", "pgbackrest")
                     else f"expected initdb or pgbackrest, got {v!r}")
    if method != "pgbackrest":
        for name in BOOTSTRAP_KEYS[1:]:
            if c.get(f"{key}.{name}") is not None:
                c.fail(f"{key}.{name}", "only with method: pgbackrest")
        return None
    stanza = c.value(f"{key}.stanza", "str", required=True,
                     check=lambda v: None if STANZA_RE.match(v) else f"expected a stanza name, got {v!r}")
    config = c.value(f"{key}.config", "str", archive.pgbackrest.config if archive.pgbackrest else None,
                     check=_absolute_file)
    target = c.value(f"{key}.recovery_target_time", "str", check=_time_with_zone)
    if shutil.which("pgbackrest") is None:
        c.fail(key, "pgbackrest is not installed (apt install pgbackrest)")
    if archive.pgbackrest is not None and archive.pgbackrest.stanza == stanza and \
            archive.pgbackrest.config == config:
        c.fail(f"{key}.stanza", f"the new cluster must archive to another stanza than {stanza!r}, the one it is "
                                "restored from: two clusters in one stanza mix their timelines")
    if not stanza:
        return None
    return RestoreSource(PgBackRest(stanza, config), _normal_time(target) if target else None)


def _time_with_zone(value: str) -> Optional[str]:
    try:
        moment = datetime.datetime.fromisoformat(value.strip().replace("Z", "+00:00"))
    except ValueError:
        return f"expected a date and time such as 2026-11-27 10:00:00+00:00, got {value!r}"
    return None if moment.tzinfo is not None else "expected a time zone too (e.g. +00:00): without one the " \
                                                  "target would depend on the server's setting"


def _normal_time(value: str) -> str:
    return datetime.datetime.fromisoformat(value.strip().replace("Z", "+00:00")).isoformat(" ")
