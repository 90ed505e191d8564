"""governor's settings as values: the validated configuration (frozen dataclasses), the bounds
every setting is checked against, and the small parsers the file loader (config.py) and the
dynamic configuration (dynamic.py) share. Pure: no file, process or network access here, so
the decision code can import it (tests/test_architecture.py)."""
from __future__ import annotations

import re
import shlex
from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional, Tuple

UNIT_RE = re.compile(r"^[A-Za-z0-9@_.:\\-]+$")
NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")
NAME_MAX = 63          # a member name becomes a replication slot name, which PostgreSQL caps at 63 bytes
SECRET_MAX = 1024
CONTROL_RE = re.compile(r"[\x00-\x1f\x7f]")
# Upper bounds on timings: a value beyond these is a typo, and an unbounded one crashes a sleep.
LIMITS = {"loop_wait": 300, "retry_timeout": 300, "ttl": 3600, "primary_start_timeout": 86400,
          "start_timeout": 86400, "member_slots_ttl": 10 * 365 * 86400}
SIZE_MAX = 2**62
SLOT_RE = re.compile(r"^[a-z0-9_]{1,63}$")
SIZE_RE = re.compile(r"^\s*(\d+)\s*(B|kB|KB|MB|GB|TB)?\s*$")
SIZE_UNITS = {None: 1, "B": 1, "kB": 1024, "KB": 1024, "MB": 1024**2, "GB": 1024**3, "TB": 1024**4}
WILDCARD_HOSTS = {"0.0.0.0", "::", "*", ""}
# PostgreSQL settings governor derives itself; setting them under `parameters` would conflict.
MANAGED_PARAMETERS = {
    "listen_addresses": "postgresql.listen",
    "port": "postgresql.listen",
    "primary_conninfo": "the current leader",
    "primary_slot_name": "the member name",
    "hot_standby": "governor (always on)",
}
FORBIDDEN_RECOVERY = {
    "primary_conninfo": "governor writes it from the current leader",
    "primary_slot_name": "governor derives it from postgresql.name",
    "standby_mode": "PostgreSQL 12+ uses standby.signal, which governor manages",
}
TAG_KEYS = ("nofailover", "noloadbalance", "nosync", "clonefrom", "failover_priority", "replicatefrom")
PRIORITY_MAX = 10000


@dataclass(frozen=True)
class EtcdConfig:
    scope: str
    ttl: int
    hosts: Tuple[Tuple[str, int], ...]
    protocol: str = "http"
    cacert: Optional[str] = None
    cert: Optional[str] = None
    key: Optional[str] = None
    username: Optional[str] = None
    password: Optional[str] = field(default=None, repr=False)
    # 3: the v3 JSON gateway; 2: the v2 keys API (python-etcd); 0: not set, which is v3 but refuses
    # a scope that etcd's v2 keyspace holds (a cluster run with the former default, 2)
    api: int = 0


@dataclass(frozen=True)
class Credentials:
    username: str
    password: Optional[str] = field(default=None, repr=False)


@dataclass(frozen=True)
class PgBackRest:
    stanza: str
    config: Optional[str] = None    # pgBackRest's own configuration (repository, logs); default its own default

    def argv(self, data_dir: str, command: str, *extra: str) -> List[str]:
        """pgbackrest's command line for `command` on this data directory."""
        argv = ["pgbackrest", f"--stanza={self.stanza}"]
        if self.config:
            argv.append(f"--config={self.config}")
        return [*argv, f"--pg1-path={data_dir}", *extra, command]


@dataclass(frozen=True)
class MajorTemplates:
    """`{major}` in postgresql.data_dir, config_dir and systemd_unit (majorpaths.py): the templates
    as written, and the major they stand for on this host."""
    data_dir: str
    config_dir: Optional[str]
    systemd_unit: Optional[str]
    major: int

    @property
    def above(self) -> str:
        """The directory the versions' directories are in (/var/lib/postgresql)."""
        return self.data_dir.split("{major}", 1)[0].rstrip("/") or "/"


@dataclass(frozen=True)
class ArchiveConfig:
    mode: str = "off"                       # archive_mode: off | on (the primary archives) | always
    command: Optional[str] = None           # a generic archive_command
    restore_command: Optional[str] = None   # a generic restore_command
    pgbackrest: Optional[PgBackRest] = None
    create_replica_methods: Tuple[str, ...] = ("basebackup",)

    def settings(self, data_dir: str) -> Dict[str, str]:
        """postgresql.conf settings, the same in both roles: archive_command runs only on a primary
        (archive_mode on) and restore_command only in recovery, where pg_rewind
        --restore-target-wal and a standby that fell behind the leader's WAL need it."""
        out: Dict[str, str] = {}
        if self.mode != "off":
            out["archive_mode"] = self.mode
        archive, restore = self.commands(data_dir)
        if archive and self.mode != "off":
            out["archive_command"] = archive
        if restore:
            out["restore_command"] = restore
        return out

    def commands(self, data_dir: str) -> Tuple[Optional[str], Optional[str]]:
        """(archive_command, restore_command) as PostgreSQL runs them (through /bin/sh)."""
        if self.pgbackrest is None:
            return self.command, self.restore_command
        return (shlex.join(self.pgbackrest.argv(data_dir, "archive-push")) + " %p",
                shlex.join(self.pgbackrest.argv(data_dir, "archive-get")) + " %f \"%p\"")


@dataclass(frozen=True)
class RestoreSource:
    """postgresql.bootstrap with method pgbackrest: a new cluster starts from this backup."""
    pgbackrest: PgBackRest
    target_time: Optional[str] = None   # recovery_target_time; None: the end of the archive


@dataclass(frozen=True)
class PostgresConfig:
    name: str
    listen_host: str
    port: int
    connect_host: str
    data_dir: str
    bin_dir: str
    maximum_lag_on_failover: int
    replication: Credentials
    replication_network: str
    superuser: Credentials
    recovery_conf: Dict[str, Any]
    parameters: Dict[str, Any]
    initdb: Tuple[str, ...]
    pg_hba: Tuple[str, ...]
    pgpass: str
    log_file: Optional[str]
    socket_dir: str
    start_timeout: float
    use_pg_rewind: bool = True
    remove_data_directory_on_rewind_failure: bool = False
    member_slots_ttl: float = 1800
    permanent_slots: Tuple[str, ...] = ()
    logical_slots: Tuple[Tuple[str, str, str], ...] = ()   # (name, database, plugin), permanent too
    systemd_unit: Optional[str] = None    # run PostgreSQL as this unit through systemctl
    config_dir: Optional[str] = None      # where the distribution keeps postgresql.conf (Debian: /etc/...)
    archive: ArchiveConfig = ArchiveConfig()   # postgresql.archive, postgresql.create_replica_methods
    restore: Optional[RestoreSource] = None    # postgresql.bootstrap: restore a backup instead of initdb
    replication_ssl: Dict[str, str] = field(default_factory=lambda: {"sslmode": "prefer"})  # libpq's SSL
    # parameters for connections to other members (repltls.py)
    hostssl: bool = False                 # pg_hba.conf lines for the members' network are hostssl
    bin_dir_set: bool = False             # postgresql.bin_dir given in the files (else chosen from PG_VERSION)
    standby_restore_command: Optional[str] = None  # standby_cluster.restore_command: WAL from the primary
    # cluster's archive while following it (only from the files: it runs a program)
    major_templates: Optional[MajorTemplates] = None  # `{major}` in data_dir, config_dir, systemd_unit

    @property
    def slot_name(self) -> str:
        return slot_name_for(self.name)

    @property
    def conn_url(self) -> str:
        """How other members reach this server; never carries a password."""
        host = f"[{self.connect_host}]" if ":" in self.connect_host else self.connect_host
        return f"postgres://{host}:{self.port}/postgres"


@dataclass(frozen=True)
class RestApiConfig:
    listen_host: str = "127.0.0.1"
    port: int = 8008
    connect_host: str = "127.0.0.1"
    username: Optional[str] = None
    password: Optional[str] = field(default=None, repr=False)
    certfile: Optional[str] = None
    keyfile: Optional[str] = None
    cafile: Optional[str] = None
    verify_client: str = "none"     # required: control requests need a client certificate from cafile

    @property
    def authenticated(self) -> bool:
        """Whether control requests need credentials (Basic, or a client certificate)."""
        return bool(self.username) or self.verify_client == "required"

    @property
    def api_url(self) -> str:
        scheme = "https" if self.certfile else "http"
        host = f"[{self.connect_host}]" if ":" in self.connect_host else self.connect_host
        return f"{scheme}://{host}:{self.port}"


@dataclass(frozen=True)
class MetricsConfig:
    enabled: bool = True
    listen_host: str = "127.0.0.1"
    port: int = 9547


@dataclass(frozen=True)
class WatchdogConfig:
    mode: str = "automatic"            # off | automatic | required (governor/watchdog.py)
    device: str = "/dev/watchdog"


@dataclass(frozen=True)
class CallbacksConfig:
    commands: Tuple[Tuple[str, Tuple[str, ...]], ...] = ()     # (kind, argv) per configured callback
    timeout: float = 30.0

    def command(self, kind: str) -> Optional[Tuple[str, ...]]:
        return dict(self.commands).get(kind)


@dataclass(frozen=True)
class Config:
    loop_wait: float
    retry_timeout: float
    primary_start_timeout: float
    etcd: EtcdConfig
    postgresql: PostgresConfig
    tags: Dict[str, Any]
    log_level: str
    source: str
    log_format: str = "text"
    synchronous_mode: str = "off"          # off | on | quorum
    synchronous_mode_strict: bool = False  # block writes rather than fall back to asynchronous
    failsafe_mode: bool = False            # stay primary through an etcd outage while every member vouches
    synchronous_node_count: int = 1
    restapi: RestApiConfig = RestApiConfig()
    metrics: MetricsConfig = MetricsConfig()
    watchdog: WatchdogConfig = WatchdogConfig()
    callbacks: CallbacksConfig = CallbacksConfig()
    standby_cluster: Optional[Dict[str, Any]] = None   # written to etcd when this member bootstraps the scope
    warnings: Tuple[str, ...] = ()         # what was accepted but translated, for the log


def slot_name_for(member: str) -> str:
    """Physical replication slot names allow only [a-z0-9_]."""
    return re.sub(r"[^a-z0-9_]", "_", member.lower())


def parse_size(value: Any) -> Optional[int]:
    if isinstance(value, int) and not isinstance(value, bool):
        return value if value >= 0 else None
    text = str(value)
    match = SIZE_RE.match(text) if len(text) <= 40 else None
    if not match:
        return None
    return int(match.group(1)) * SIZE_UNITS[match.group(2)]


SYNC_MODES = ("off", "on", "quorum")


def parse_sync_mode(value: Any) -> Optional[str]:
    """YAML reads a bare on/off as a boolean: accept both spellings."""
    if isinstance(value, bool):
        return "on" if value else "off"
    text = str(value).strip().lower()
    return {"true": "on", "false": "off"}.get(text, text) if text in SYNC_MODES + ("true", "false") else None
