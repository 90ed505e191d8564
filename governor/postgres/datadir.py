"""The data directory on disk: what it holds, and the configuration files governor writes in it."""
from __future__ import annotations

import os
import pwd
import shutil
import subprocess
from dataclasses import dataclass
from typing import Dict, Optional

from governor.config import PostgresConfig
from governor.postgres.controller import child_environment

EMPTY = "empty"            # missing or empty: may be bootstrapped or cloned into
POSTGRES = "postgres"      # a PostgreSQL data directory
NOT_POSTGRES = "invalid"   # holds files, but not a PostgreSQL data directory: never touched

GOVERNOR_CONF_HEADER = "# Written by governor; set postgresql.parameters in /etc/governor/*.yml instead.\n"
BASE_CONF = "postgresql.base.conf"

# Settings governor needs for streaming replication and pg_rewind; user parameters override.
REPLICATION_DEFAULTS: Dict[str, object] = {
    "wal_level": "replica",
    "wal_log_hints": "on",
    "max_wal_senders": 10,
    "max_replication_slots": 10,
    "wal_keep_size": "128MB",
    "hot_standby_feedback": "on",
    "wal_receiver_status_interval": "1s",
    # A standby whose upstream went away retries this often; a promotion request that arrives
    # while it sleeps can wait out the rest of the interval.
    "wal_retrieve_retry_interval": "200ms",
}


@dataclass(frozen=True)
class ControlData:
    sysid: Optional[str]
    state: Optional[str]        # "in production", "shut down", "shut down in recovery", ...
    timeline: Optional[int]
    checkpoint: Optional[str] = None    # "Latest checkpoint location", e.g. 0/3000028


def classify(data_dir: str) -> str:
    try:
        entries = [e for e in os.listdir(data_dir) if e != "lost+found"]
    except FileNotFoundError:
        return EMPTY
    if not entries:
        return EMPTY
    if os.path.exists(os.path.join(data_dir, "PG_VERSION")) and \
            os.path.exists(os.path.join(data_dir, "global", "pg_control")):
        return POSTGRES
    return NOT_POSTGRES


def empty_directory(data_dir: str) -> None:
    """Remove everything inside `data_dir` (an operator's reinitialize) but keep the directory
    itself, its owner and mode, and a mount point's lost+found."""
    for entry in os.listdir(data_dir):
        if entry == "lost+found":
            continue
        path = os.path.join(data_dir, entry)
        if os.path.isdir(path) and not os.path.islink(path):
            shutil.rmtree(path)
        else:
            os.unlink(path)


def read_controldata(bin_dir: str, data_dir: str) -> ControlData:
    try:
        out = subprocess.run([os.path.join(bin_dir, "pg_controldata"), "-D", data_dir],
                             env=child_environment({"LC_ALL": "C", "LANG": "C"}), capture_output=True,
                             text=True, timeout=30, check=False).stdout
    except (OSError, subprocess.TimeoutExpired):
        return ControlData(None, None, None)
    fields = {}
    for line in out.splitlines():
        key, sep, value = line.partition(":")
        if sep:
            fields[key.strip()] = value.strip()
    timeline = fields.get("Latest checkpoint's TimeLineID")
    return ControlData(
        sysid=fields.get("Database system identifier"),
        state=fields.get("Database cluster state"),
        timeline=int(timeline) if timeline and timeline.isdigit() else None,
        checkpoint=fields.get("Latest checkpoint location"),
    )


def _quote(value: object) -> str:
    if isinstance(value, bool):
        value = "on" if value else "off"
    return "'" + str(value).replace("\\", "\\\\").replace("'", "''") + "'"


def conninfo_quote(value: object) -> str:
    return "'" + str(value).replace("\\", "\\\\").replace("'", "\\'") + "'"


def primary_conninfo(cfg: PostgresConfig, host: str, port: int, dbname: Optional[str] = None) -> str:
    """libpq connection string to the leader; the password stays in the passfile. A database
    name only for the slot sync worker (sync_replication_slots), which needs one."""
    parts = {
        "host": host, "port": port, "user": cfg.replication.username, "passfile": cfg.pgpass,
        "application_name": cfg.name, **cfg.replication_ssl, "connect_timeout": 3,
    }
    if dbname is not None:
        parts["dbname"] = dbname
    return " ".join(f"{k}={conninfo_quote(v)}" for k, v in parts.items())


def conf_path(cfg: PostgresConfig) -> str:
    """The file governor owns: postgresql.conf in the data directory, or, with a distribution's
    config_dir (Debian: /etc/postgresql/15/main), conf.d/governor.conf there, which its
    postgresql.conf includes last."""
    if cfg.config_dir:
        return os.path.join(cfg.config_dir, "conf.d", "governor.conf")
    return os.path.join(cfg.data_dir, "postgresql.conf")


def hba_path(cfg: PostgresConfig) -> str:
    return os.path.join(cfg.config_dir or cfg.data_dir, "pg_hba.conf")


def write_postgresql_conf(cfg: PostgresConfig, standby_of: Optional[tuple] = None,
                          synchronous_standby_names: Optional[str] = None, slot_sync: Optional[str] = None,
                          standby_slots: Optional[str] = None) -> bool:
    """(Re)write governor's configuration file; returns True when its content changed.

    In the data directory, initdb's own postgresql.conf is kept as postgresql.base.conf and
    included first. With `standby_of` = (host, port) the standby settings point at that leader;
    with an empty tuple the server is a standby that follows nobody yet. `slot_sync` (a database
    name; PostgreSQL 17 with logical_slots): a standby copies the leader's failover slots; on the
    primary, `standby_slots` names the standbys' slots logical decoding waits for.
    """
    path = conf_path(cfg)
    lines = [GOVERNOR_CONF_HEADER]
    if cfg.config_dir:
        os.makedirs(os.path.dirname(path), exist_ok=True)
    else:
        base = os.path.join(cfg.data_dir, BASE_CONF)
        if not os.path.exists(base) and os.path.exists(path):
            with open(path, encoding="utf-8") as fh:
                first = fh.readline()
            if first != GOVERNOR_CONF_HEADER:
                os.rename(path, base)
        lines.append(f"include_if_exists {_quote(BASE_CONF)}\n")
    settings: Dict[str, object] = {
        "listen_addresses": cfg.listen_host if cfg.listen_host not in ("", "*") else "*",
        "port": cfg.port,
        "hot_standby": "on",
    }
    settings.update(REPLICATION_DEFAULTS)
    if cfg.logical_slots:
        settings["wal_level"] = "logical"       # logical slots need it (parameters may still say so)
    settings.update(cfg.archive.settings(cfg.data_dir))
    settings.update(cfg.parameters)
    if synchronous_standby_names is not None:   # managed: synchronous_mode is on
        settings["synchronous_standby_names"] = synchronous_standby_names
    if standby_of is None and slot_sync is not None and standby_slots is not None:
        settings["synchronized_standby_slots"] = standby_slots
    if standby_of is not None:
        if standby_of:
            settings["primary_conninfo"] = primary_conninfo(cfg, standby_of[0], standby_of[1], slot_sync)
            # A standby.Upstream (the primary cluster) carries its own slot, or none; its archive
            # is read with the files' standby restore_command.
            slot = standby_of[2] if len(standby_of) > 2 else cfg.slot_name
            if slot:
                settings["primary_slot_name"] = slot
            if len(standby_of) > 2 and cfg.standby_restore_command:
                settings["restore_command"] = cfg.standby_restore_command
            if slot_sync is not None:
                settings.update(sync_replication_slots="on", hot_standby_feedback="on")
        settings["recovery_target_timeline"] = "latest"
        settings.update(cfg.recovery_conf)
    lines += [f"{key} = {_quote(value)}\n" for key, value in settings.items()]
    return _write_if_changed(path, "".join(lines))


def set_standby_signal(data_dir: str, standby: bool) -> None:
    path = os.path.join(data_dir, "standby.signal")
    if standby:
        _write_private(path, "")
    elif os.path.exists(path):
        os.unlink(path)


def is_standby(data_dir: str) -> bool:
    return os.path.exists(os.path.join(data_dir, "standby.signal"))


def write_pg_hba(cfg: PostgresConfig) -> bool:
    """Write pg_hba.conf (before every start); returns True when its content changed.

    The superuser connects locally by peer authentication when governor runs as the OS user of
    the same name (so governor can always administer its server, even one it adopted whose
    superuser has no password yet), otherwise with its password."""
    su, repl = cfg.superuser.username, cfg.replication.username
    local_su = "peer" if _os_user() == su or not cfg.superuser.password else "scram-sha-256"
    rules = ["# Written by governor; add lines with postgresql.pg_hba. Those come first.",
             *cfg.pg_hba,
             f"local   all          {su:<12} {'':<18} {local_su}",
             f"local   all          all          {'':<18} peer",
             f"host    replication  {repl:<12} 127.0.0.1/32       scram-sha-256",
             f"host    replication  {repl:<12} ::1/128            scram-sha-256"]
    remote = "hostssl" if cfg.hostssl else "host   "     # postgresql.replication.hostssl
    for network in cfg.replication_network.split():
        rules.append(f"{remote} replication  {repl:<12} {network:<18} scram-sha-256")
    rules += ["host    all          all          127.0.0.1/32       scram-sha-256",
              "host    all          all          ::1/128            scram-sha-256"]
    for network in cfg.replication_network.split():
        rules.append(f"{remote} all          all          {network:<18} scram-sha-256")
    return _write_if_changed(hba_path(cfg), "\n".join(rules) + "\n")


def _os_user() -> str:
    try:
        return pwd.getpwuid(os.geteuid()).pw_name
    except KeyError:
        return ""


def _pgpass_escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace(":", "\\:")


def write_pgpass(cfg: PostgresConfig) -> None:
    """The passfile libpq uses to reach any leader as the replication user, and as the superuser
    for pg_rewind when it has a password (mode 0600)."""
    lines = []
    for creds in (cfg.replication, cfg.superuser):
        if creds.password:
            lines.append(f"*:*:*:{_pgpass_escape(creds.username)}:{_pgpass_escape(creds.password)}\n")
    _write_if_changed(cfg.pgpass, "".join(lines))


def was_primary(control: ControlData) -> bool:
    """A data directory last run as a primary (crashed or shut down), not as a standby."""
    return control.state in ("in production", "shut down")


def _write_if_changed(path: str, content: str) -> bool:
    """Write `content` privately unless the file already holds it; True when written."""
    try:
        with open(path, encoding="utf-8") as fh:
            if fh.read() == content:
                return False
    except FileNotFoundError:
        pass
    _write_private(path, content)
    return True


def _write_private(path: str, content: str) -> None:
    tmp = f"{path}.tmp-governor"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as fh:
        fh.write(content)
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, path)
