"""Load and validate governor's YAML configuration.

A config path is a single YAML file or a directory whose ``*.yml``/``*.yaml`` files are merged in
name order (mappings merge key by key, later files win). Every problem is collected and reported
at once as ``FILE: KEY: what was expected``; nothing is started on a bad config.
"""
from __future__ import annotations

import os
from typing import Any, Dict, List, Optional, Tuple

from governor import archive as archive_mod
from governor import (
    bindir,
    cluster_settings,
    listeners,
    majorpaths,
    passwords,
    pgparams,
    repltls,
    standby,
    template_layout,
)
from governor import callbacks as callbacks_mod
from governor import checker as checker_mod
from governor.checker import (  # noqa: F401 - parse_host_port and default_bin_dir are used through config
    Checker,
    bounded,
    default_bin_dir,
    kind_of,
    name_check,
    needs_module,
    network_check,
    parse_host_port,
    positive,
    secret_check,
)
from governor.configfiles import ConfigError, read_raw  # noqa: F401 - read_raw is used through config
from governor.postgres.catalogue import catalogue
from governor.settings import (  # noqa: F401 - re-exported: the configuration's types live in settings
    CONTROL_RE,
    FORBIDDEN_RECOVERY,
    LIMITS,
    MANAGED_PARAMETERS,
    NAME_MAX,
    NAME_RE,
    PRIORITY_MAX,
    SECRET_MAX,
    SIZE_MAX,
    SIZE_RE,
    SIZE_UNITS,
    SLOT_RE,
    SYNC_MODES,
    TAG_KEYS,
    UNIT_RE,
    WILDCARD_HOSTS,
    Config,
    Credentials,
    EtcdConfig,
    MetricsConfig,
    PostgresConfig,
    RestApiConfig,
    WatchdogConfig,
    parse_size,
    parse_sync_mode,
    slot_name_for,
)

TOP_KEYS = ("loop_wait", "retry_timeout", "primary_start_timeout", "log_level", "log_format", "tags", "etcd",
            "postgresql", "restapi", "metrics", "synchronous_mode", "synchronous_mode_strict",
            "synchronous_node_count", "watchdog", "failsafe_mode", "callbacks", "standby_cluster")
ETCD_KEYS = ("scope", "ttl", "host", "protocol", "cacert", "cert", "key", "username", "password", "password_file",
             "api")
PG_KEYS = ("name", "listen", "connect_address", "data_dir", "bin_dir", "maximum_lag_on_failover",
           "replication", "superuser", "recovery_conf", "parameters", "initdb", "pg_hba", "pgpass",
           "log_file", "start_timeout", "use_pg_rewind", "remove_data_directory_on_rewind_failure",
           "member_slots_ttl", "permanent_slots", "logical_slots", "systemd_unit", "config_dir", "archive",
           "create_replica_methods", "bootstrap")
LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR")


def validate(raw: dict, origin: Dict[str, str], source: str) -> Config:
    template = template_layout.translate(raw, origin, source)
    c = Checker(template.raw, template.origin, source)
    c.warnings.extend(template.warnings)
    c.problems.extend(template.problems)
    raw = template.raw
    c.unknown("", raw, TOP_KEYS)

    values = _dynamic_settings(c)
    log_level = c.value("log_level", "str", "INFO",
                        check=lambda v: None if v.upper() in LOG_LEVELS else f"expected one of {', '.join(LOG_LEVELS)}")

    log_format = c.value("log_format", "str", "text",
                         check=lambda v: None if v in ("text", "json") else "expected 'text' or 'json'")
    tags = c.section("tags")
    c.unknown("tags", tags, TAG_KEYS)
    for tag in ("nofailover", "noloadbalance", "nosync", "clonefrom"):
        c.value(f"tags.{tag}", "bool", False)
    priority = c.value("tags.failover_priority", "int", 1, check=lambda v: None if 0 <= v <= PRIORITY_MAX else
                       f"expected 0 (never leads) to {PRIORITY_MAX} (higher leads first among equally advanced)")
    if priority and c.get("tags.failover_priority") is not None and c.get("tags.nofailover") is True:
        c.fail("tags.failover_priority", "contradicts tags.nofailover: true (set one of them)")
    c.value("tags.replicatefrom", "str", None, check=name_check)

    etcd_section = c.section("etcd")
    c.unknown("etcd", etcd_section, ETCD_KEYS)
    scope = c.value("etcd.scope", "str", required=True, check=name_check)
    protocol = c.value("etcd.protocol", "str", "http",
                       check=lambda v: None if v in ("http", "https") else "expected 'http' or 'https'")
    host_value = c.value("etcd.host", "hosts", "127.0.0.1:2379")
    hosts: List[Tuple[str, int]] = []
    for item in [host_value] if isinstance(host_value, str) else host_value:
        parsed = parse_host_port(item, 2379)
        if parsed is None:
            c.fail("etcd.host", f"expected 'host:port', got {item!r}")
        else:
            hosts.append(parsed)
    if isinstance(host_value, list) and not host_value:
        c.fail("etcd.host", "expected at least one 'host:port'")
    if not hosts:
        hosts = [("127.0.0.1", 2379)]
    files = checker_mod.existing_files(c, "etcd", ("cacert", "cert", "key"))
    if files["key"] and not files["cert"]:
        c.fail("etcd.key", "set etcd.cert too: a client key needs its certificate")
    etcd_user, etcd_password = passwords.user_and_password(c, "etcd")
    etcd_api = c.value("etcd.api", "int", 0, check=lambda v: "expected 2 (etcd v2 API) or 3 (etcd v3 API)"
                       if v not in (2, 3) else needs_module(v == 2, "etcd", "python3-etcd"))

    for name, problem in cluster_settings.rule_problems(values):
        c.fail(cluster_settings.BY_NAME[name].file_key, problem)

    pg = c.section("postgresql")
    c.unknown("postgresql", pg, PG_KEYS)
    name = c.value("postgresql.name", "str", required=True, check=name_check)
    if name and tags.get("replicatefrom") == name:
        c.fail("tags.replicatefrom", "names this member itself: name another replica, or remove the tag")
    listen = c.value("postgresql.listen", "str", "127.0.0.1:5432")
    listen_hp = parse_host_port(listen, 5432) if listen else None
    if listen and listen_hp is None:
        c.fail("postgresql.listen", f"expected 'host:port' such as 0.0.0.0:5432, got {listen!r}")
    listen_host, port = listen_hp or ("127.0.0.1", 5432)
    connect = c.value("postgresql.connect_address", "str")
    connect_host = listen_host
    if connect:
        parsed = parse_host_port(connect, port)
        if parsed is None:
            c.fail("postgresql.connect_address", f"expected 'host:port', got {connect!r}")
        else:
            connect_host = parsed[0]
            if parsed[1] != port:
                c.fail("postgresql.connect_address", f"port {parsed[1]} differs from the listen port {port}")
    elif listen_host in WILDCARD_HOSTS:
        c.fail("postgresql.connect_address",
               f"required when postgresql.listen is a wildcard ({listen!r}): the address other members use")
    remote_etcd = [h for h, _ in hosts if not listeners.is_loopback(h)]
    if listeners.is_loopback(connect_host) and remote_etcd:
        c.fail("postgresql.connect_address" if connect else "postgresql.listen",
               f"this member would be reached at {connect_host}, a loopback address, while etcd is on another "
               f"host ({remote_etcd[0]}): the other members would connect to themselves. Use this host's "
               "address (or listen on 0.0.0.0 with connect_address set to it)")

    data_dir = c.value("postgresql.data_dir", "str", required=True, check=_path_check)
    major_templates = majorpaths.read(c, data_dir)
    if major_templates:
        data_dir = majorpaths.fill(data_dir, major_templates.major)
    elif majorpaths.templated(data_dir):
        data_dir = None     # refused, and said why: no second complaint about a path with {major} in it
    if data_dir:
        data_dir = os.path.abspath(data_dir)
        parent = os.path.dirname(data_dir)
        if major_templates and os.path.isdir(major_templates.above):
            pass    # the version's own directory (/var/lib/postgresql/17) is made with the cluster
        elif not os.path.isdir(parent) and not template.makes(parent):
            c.fail("postgresql.data_dir", f"the parent directory {parent} does not exist")
        elif os.path.lexists(data_dir) and not os.path.isdir(data_dir):
            c.fail("postgresql.data_dir", f"{data_dir} exists and is not a directory")
        elif os.path.isdir(data_dir) and os.geteuid() != 0 and os.stat(data_dir).st_uid != os.geteuid():
            c.fail("postgresql.data_dir", f"{data_dir} belongs to another user (uid {os.stat(data_dir).st_uid}); "
                                          f"governor runs as uid {os.geteuid()}, as PostgreSQL must")
    bin_dir_set = c.value("postgresql.bin_dir", "str")
    bin_dir, wrong_major = bindir.choose(bin_dir_set, data_dir)
    if wrong_major:
        c.fail("postgresql.bin_dir", wrong_major)
    elif not os.path.exists(os.path.join(bin_dir, "pg_ctl")):
        c.fail("postgresql.bin_dir", f"expected the directory holding pg_ctl and initdb; {bin_dir}/pg_ctl not found")

    repl = c.section("postgresql.replication")
    c.unknown("postgresql.replication", repl, ("username", "password", "password_file", "network", *repltls.KEYS))
    repl_user = c.value("postgresql.replication.username", "str", "replicator", check=name_check)
    repl_password = passwords.read(c, "postgresql.replication.password", required=True)
    repl_network = c.value("postgresql.replication.network", "str", "127.0.0.1/32", check=network_check)
    repl_ssl, hostssl = repltls.check(c)

    su = c.section("postgresql.superuser")
    c.unknown("postgresql.superuser", su, ("username", "password", "password_file"))
    su_user = c.value("postgresql.superuser.username", "str", "postgres", check=name_check)
    su_password = passwords.read(c, "postgresql.superuser.password")
    if su_user and repl_user and su_user == repl_user:
        c.fail("postgresql.replication.username", "must differ from postgresql.superuser.username")

    parameters = dict(c.value("postgresql.parameters", "scalars", {}) or {})
    cat = catalogue(bin_dir) if os.path.exists(os.path.join(bin_dir, "postgres")) else None
    parameters, translated = pgparams.translate_renamed(parameters, cat)
    c.warnings.extend(f"{c.where('postgresql.parameters')}: {w}" for w in translated)
    for pname, pvalue in parameters.items():
        problem = pgparams.check(pname, pvalue, cat)
        if problem:
            c.fail(f"postgresql.parameters.{pname}", problem)
    for key in parameters:
        owner = MANAGED_PARAMETERS.get(str(key).lower())
        if owner:
            c.fail(f"postgresql.parameters.{key}", f"set by governor from {owner}; remove it here")
    if values["synchronous_mode"] != "off" and "synchronous_standby_names" in parameters:
        c.fail("postgresql.parameters.synchronous_standby_names",
               "governor manages it when synchronous_mode is on or quorum; remove it here")
    if str(parameters.get("wal_level", "replica")) == "minimal":
        c.fail("postgresql.parameters.wal_level", "expected 'replica' or 'logical': streaming replication needs it")
    recovery_conf = dict(c.value("postgresql.recovery_conf", "scalars", {}) or {})
    for rname, rvalue in recovery_conf.items():
        problem = pgparams.check(rname, rvalue, cat)
        if problem:
            c.fail(f"postgresql.recovery_conf.{rname}", problem)
    for key, why in FORBIDDEN_RECOVERY.items():
        if key in recovery_conf:
            c.fail(f"postgresql.recovery_conf.{key}", f"not allowed: {why}")
    archive = archive_mod.check(c, parameters, recovery_conf)
    restore = archive_mod.check_bootstrap(c, archive)

    initdb_raw = c.value("postgresql.initdb", "initdb", ["data-checksums", {"encoding": "UTF8"}])
    initdb: List[str] = []
    for item in initdb_raw or []:
        if isinstance(item, str):
            initdb.append(f"--{item.lstrip('-')}")
        else:
            (k, v), = item.items()
            initdb.append(f"--{str(k).lstrip('-')}={v}")
    pg_hba = tuple(c.value("postgresql.pg_hba", "strlist", []) or [])
    default_pgpass = os.path.join(os.path.dirname(data_dir or "/"), f".pgpass_{name or 'governor'}")
    pgpass = os.path.abspath(c.value("postgresql.pgpass", "str", default_pgpass))
    log_file = c.value("postgresql.log_file", "str")
    start_timeout = c.value("postgresql.start_timeout", "number", 60, check=bounded("start_timeout"))
    use_pg_rewind = c.value("postgresql.use_pg_rewind", "bool", True)
    remove_on_failure = c.value("postgresql.remove_data_directory_on_rewind_failure", "bool", False)
    member_slots_ttl = c.value("postgresql.member_slots_ttl", "number", 1800,
                               check=bounded("member_slots_ttl", 0, inclusive=True))
    permanent_slots = tuple(c.value("postgresql.permanent_slots", "strlist", []) or [])
    for slot in permanent_slots:
        if not SLOT_RE.fullmatch(slot):
            c.fail("postgresql.permanent_slots", f"expected slot names of at most 63 of a-z, 0-9 and '_', got {slot!r}")
    logical_slots = _logical_slots(c, permanent_slots)
    systemd_unit = c.value("postgresql.systemd_unit", "str",
                           check=lambda v: None if UNIT_RE.fullmatch(majorpaths.fill_as(v, major_templates))
                           else "expected a unit name such as postgresql@15-main or postgresql@{major}-main")
    config_dir = c.value("postgresql.config_dir", "str",
                         check=lambda v: None if os.path.isdir(majorpaths.fill_as(v, major_templates)) else
                         f"directory {majorpaths.fill_as(v, major_templates)!r} does not exist")
    systemd_unit = majorpaths.fill_as(systemd_unit, major_templates)
    config_dir = majorpaths.fill_as(config_dir, major_templates)
    socket_dir = str(parameters.get("unix_socket_directories", "")).split(",")[0].strip()
    if not socket_dir:
        socket_dir = "/var/run/postgresql" if os.path.isdir("/var/run/postgresql") else "/tmp"

    restapi = listeners.restapi(c, listen_host, connect_host)
    metrics = listeners.metrics(c, listen_host)
    c.unknown("watchdog", c.section("watchdog"), ("mode", "device"))
    watchdog_mode = c.value("watchdog.mode", "str", "automatic",
                            check=lambda v: None if v in ("off", "automatic", "required")
                            else "expected off, automatic or required")
    if c.get("watchdog.mode") is False:     # YAML reads a bare `off` as false
        watchdog_mode = "off"
        c.problems = [p for p in c.problems if ": watchdog.mode: " not in p]
    watchdog_device = c.value("watchdog.device", "str", "/dev/watchdog", check=_path_check)
    if metrics.enabled and listeners.same((metrics.listen_host, metrics.port), (restapi.listen_host, restapi.port)):
        c.fail("metrics.listen", "must differ from restapi.listen")
    if listeners.same((restapi.listen_host, restapi.port), (listen_host, port)):
        c.fail("restapi.listen", f"port {port} is PostgreSQL's (postgresql.listen)")
    if metrics.enabled and listeners.same((metrics.listen_host, metrics.port), (listen_host, port)):
        c.fail("metrics.listen", f"port {port} is PostgreSQL's (postgresql.listen)")

    callbacks = callbacks_mod.check(c)
    standby_seed, standby_restore = standby.from_file(c)
    if c.problems:
        raise ConfigError(c.problems)

    return cluster_settings.apply(Config(
        restapi=restapi, metrics=metrics, callbacks=callbacks, primary_start_timeout=0,
        loop_wait=0, retry_timeout=0, log_level=log_level.upper(), log_format=log_format, standby_cluster=standby_seed,
        tags={k: v for k, v in tags.items()},
        source=source,
        warnings=tuple(c.warnings),
        watchdog=WatchdogConfig(mode=watchdog_mode or "automatic", device=watchdog_device or "/dev/watchdog"),
        etcd=EtcdConfig(scope=scope, ttl=0, hosts=tuple(hosts), protocol=protocol,
                        cacert=files["cacert"], cert=files["cert"], key=files["key"],
                        username=etcd_user, password=etcd_password, api=etcd_api or 0),
        postgresql=PostgresConfig(
            name=name, listen_host=listen_host, port=port, connect_host=connect_host,
            data_dir=data_dir, bin_dir=bin_dir, maximum_lag_on_failover=0,
            replication=Credentials(repl_user, repl_password), replication_network=repl_network,
            superuser=Credentials(su_user, su_password), recovery_conf=recovery_conf,
            parameters=parameters, initdb=tuple(initdb), pg_hba=pg_hba, pgpass=pgpass,
            log_file=os.path.abspath(log_file) if log_file else None, socket_dir=socket_dir,
            start_timeout=start_timeout, use_pg_rewind=use_pg_rewind,
            remove_data_directory_on_rewind_failure=remove_on_failure, member_slots_ttl=member_slots_ttl,
            permanent_slots=permanent_slots, logical_slots=logical_slots, systemd_unit=systemd_unit,
            config_dir=os.path.abspath(config_dir) if config_dir else None, archive=archive,
            restore=restore, standby_restore_command=standby_restore, replication_ssl=repl_ssl, hostssl=hostssl,
            bin_dir_set=bool(bin_dir_set), major_templates=major_templates),
    ), values)


def _dynamic_settings(c: Checker) -> Dict[str, Any]:
    """The file's values of the settings the dynamic configuration may override, by dynamic name
    (cluster_settings.DYNAMIC: kinds, defaults and bounds are declared there)."""
    values = {}
    for s in cluster_settings.DYNAMIC:
        if s.kind != "sync_mode":
            values[s.name] = c.value(s.file_key, s.kind, s.default, check=s.check)
            continue
        raw = c.get(s.file_key)
        values[s.name] = s.parse(raw) if raw is not None else s.default
        if values[s.name] is None:
            c.fail(s.file_key, s.wrong(repr(raw)))
            values[s.name] = s.default
    return values


def _logical_slots(c: Checker, physical: Tuple[str, ...]) -> Tuple[Tuple[str, str, str], ...]:
    """postgresql.logical_slots: [{name, database, plugin (default pgoutput)}]."""
    raw, found = c.get("postgresql.logical_slots") or [], []
    if not isinstance(raw, list):
        c.fail("postgresql.logical_slots", "expected a list of {name, database, plugin}")
        return ()
    for i, item in enumerate(raw):
        key = f"postgresql.logical_slots[{i}]"
        if not isinstance(item, dict) or set(item) - {"name", "database", "plugin"} or \
                not all(isinstance(item.get(k), str) for k in ("name", "database")):
            c.fail(key, "expected {name: SLOT, database: DB, plugin: PLUGIN (default pgoutput)}")
            continue
        name, database, plugin = item["name"], item["database"], item.get("plugin", "pgoutput")
        if not SLOT_RE.match(name) or name in physical or name in [f[0] for f in found]:
            c.fail(key, f"expected a slot name of at most 63 of a-z, 0-9 and '_', used once, got {name!r}")
        elif name_check(database) or not isinstance(plugin, str) or not SLOT_RE.match(plugin):
            c.fail(key, f"expected a database name and an output plugin name, got {database!r}, {plugin!r}")
        else:
            found.append((name, database, plugin))
    return tuple(found)


def _path_check(v: str) -> Optional[str]:
    if not v or CONTROL_RE.search(v):
        return "expected a path without control characters"
    return None


def load(path: str) -> Config:
    """Read, merge and validate; raises ConfigError listing every problem."""
    raw, origin = read_raw(path)
    return validate(raw, origin, path)
