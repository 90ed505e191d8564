"""Patroni's configuration as governor's (`governorctl migrate --from-patroni PATRONI_YML`).

Pure: a Patroni YAML file (already parsed) and, when etcd could be read, the cluster's dynamic
configuration (Patroni's `config` key, which wins over `bootstrap.dcs` as it does for Patroni)
become governor's files. Every key of the input is either carried over or named in a note with
why not; a key whose loss would change what is safe (another DCS, another key prefix, Citus,
a control API open to the network) is *refused*: the caller writes nothing and exits 2.
"""
from __future__ import annotations

import re
import shlex
from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional

NAMESPACE = "/service/"
OTHER_DCS = ("consul", "zookeeper", "exhibitor", "kubernetes", "raft")
LOOPBACK = ("127.0.0.1", "localhost", "::1", "[::1]")
SAME_TAGS = ("nofailover", "noloadbalance", "nosync", "clonefrom", "replicatefrom", "failover_priority")
DYNAMIC_TOP = {"ttl": "etcd.ttl", "loop_wait": "loop_wait", "retry_timeout": "retry_timeout",
               "maximum_lag_on_failover": "postgresql.maximum_lag_on_failover",
               "primary_start_timeout": "primary_start_timeout", "synchronous_mode": "synchronous_mode",
               "synchronous_mode_strict": "synchronous_mode_strict",
               "synchronous_node_count": "synchronous_node_count", "failsafe_mode": "failsafe_mode"}
DYNAMIC_NOT_CARRIED = {
    "maximum_lag_on_syncnode": "governor keeps a synchronous standby while it streams, however far behind",
    "max_timelines_history": "governor keeps the last 100 promotions in `history`",
    "primary_stop_timeout": "governor stops PostgreSQL with its own bounded fast-then-immediate sequence",
    "master_start_timeout": "Patroni's old name: set primary_start_timeout",
    "master_stop_timeout": "governor stops PostgreSQL with its own bounded fast-then-immediate sequence",
    "check_timeline": "governor always compares timelines before a member races for the lock",
    "ignore_slots": "governor drops only slots it made (members', permanent and logical ones it lists)",
    "synchronous_mode_count": "unknown to Patroni's documentation", "citus": "governor does not run Citus",
    "pause": "Patroni's maintenance mode; governor's is its own `pause` key (governorctl pause / resume)",
}
# Settings Patroni passes on postgres' command line, from the cluster's configuration only (a
# member's own value is ignored), with Patroni's defaults: what the servers run with.
PATRONI_CMDLINE = {"max_connections": 100, "max_wal_senders": 10, "max_prepared_transactions": 0,
                   "max_locks_per_transaction": 64, "track_commit_timestamp": "off", "max_replication_slots": 10,
                   "max_worker_processes": 8, "wal_log_hints": "on"}
CALLBACKS = ("on_start", "on_stop", "on_restart", "on_reload", "on_role_change")
DURATION = re.compile(r"\s*(\d+)\s*(ms|s|min|h|d)?\s*")
UNITS = {None: 1, "ms": 0.001, "s": 1, "min": 60, "h": 3600, "d": 86400}


@dataclass
class Translation:
    files: Dict[str, Any] = field(default_factory=dict)
    notes: List[str] = field(default_factory=list)       # "KEY: what happened to it"
    refused: List[str] = field(default_factory=list)     # "KEY: why governor cannot take this cluster so"

    def put(self, dotted: str, value: Any) -> None:
        node = self.files
        *parents, last = dotted.split(".")
        for name in parents:
            node = node.setdefault(name, {})
        node[last] = value

    def note(self, key: str, why: str) -> None:
        self.notes.append(f"{key}: {why}")

    def refuse(self, key: str, why: str) -> None:
        self.refused.append(f"{key}: {why}")


def translate(patroni: Any, dynamic: Optional[Any] = None) -> Translation:
    """Patroni's file (and its cluster's `config` key from etcd, None when not read) as governor's."""
    t = Translation()
    if not isinstance(patroni, dict):
        t.refuse("(file)", "expected Patroni's YAML configuration, a mapping")
        return t
    rest = dict(patroni)
    for key, target in (("scope", "etcd.scope"), ("name", "postgresql.name")):
        value = rest.pop(key, None)
        if isinstance(value, (str, int)) and str(value):
            t.put(target, str(value))
        else:
            t.refuse(key, "missing: governor needs it to find the cluster's keys and this member")
    namespace = rest.pop("namespace", NAMESPACE)
    if str(namespace).strip("/") != NAMESPACE.strip("/"):
        t.refuse("namespace", f"{namespace!r}: governor keeps every cluster's keys under {NAMESPACE}; a cluster "
                              "elsewhere cannot be taken over (governor would not see its leader)")
    _log(t, rest.pop("log", None))
    _dcs(t, rest)
    _restapi(t, rest.pop("restapi", None))
    _watchdog(t, rest.pop("watchdog", None))
    _tags(t, rest.pop("tags", None))
    bootstrap = rest.pop("bootstrap", None)
    bootstrap = bootstrap if isinstance(bootstrap, dict) else {}
    _postgresql(t, rest.pop("postgresql", None))
    _bootstrap(t, bootstrap)
    if isinstance(dynamic, dict):
        _dynamic(t, dynamic, "config (etcd)")
        if isinstance(bootstrap.get("dcs"), dict):
            t.note("bootstrap.dcs", "the cluster's configuration in etcd was used instead (it wins, as in Patroni)")
    elif isinstance(bootstrap.get("dcs"), dict):
        _dynamic(t, bootstrap["dcs"], "bootstrap.dcs")
    _cmdline(t, patroni.get("postgresql"), dynamic if isinstance(dynamic, dict) else bootstrap.get("dcs"))
    if "ctl" in rest:
        rest.pop("ctl")
        t.note("ctl", "governorctl reads governor's own files (restapi and etcd settings): nothing to carry over")
    if "citus" in rest:
        rest.pop("citus")
        t.refuse("citus", "governor does not manage Citus clusters")
    for key in rest:
        t.note(str(key), "unknown to this translation: left out")
    return t


def _log(t: Translation, log: Any) -> None:
    if not isinstance(log, dict):
        return
    level = str(log.get("level", "")).upper()
    if level:
        t.put("log_level", {"CRITICAL": "ERROR", "WARN": "WARNING"}.get(level, level))
    if log.get("type") == "json" or log.get("format") == "json":
        t.put("log_format", "json")
    dropped = sorted(set(log) - {"level", "type", "format"})
    if dropped:
        t.note("log." + ",".join(dropped), "governor logs to its standard error (the journal under systemd)")


def _hosts(value: Any) -> List[str]:
    items = value.split(",") if isinstance(value, str) else value if isinstance(value, list) else []
    hosts = []
    for item in items:
        text = str(item).strip()
        text = re.sub(r"^https?://", "", text).rstrip("/")
        if text:
            hosts.append(text if re.search(r":\d+$", text) else f"{text}:2379")
    return hosts


def _dcs(t: Translation, rest: Dict[str, Any]) -> None:
    for other in OTHER_DCS:
        if other in rest:
            rest.pop(other)
            t.refuse(other, "governor keeps its leader lock in etcd only: move the cluster to etcd first, or build "
                            "a governor cluster beside it")
    found = [(k, rest.pop(k)) for k in ("etcd3", "etcd") if k in rest]
    if not found:
        if not any(r.split(":")[0] in OTHER_DCS for r in t.refused):
            t.refuse("etcd3", "no etcd3 (or etcd) section: governor needs etcd's address")
        return
    if len(found) > 1:
        t.note("etcd", "both etcd3 and etcd are set; etcd3 is used, as Patroni does")
    key, etcd = found[0]
    if not isinstance(etcd, dict):
        t.refuse(key, "expected a mapping")
        return
    etcd = dict(etcd)
    t.put("etcd.api", 3 if key == "etcd3" else 2)
    if key == "etcd":
        t.note("etcd", "Patroni used etcd's v2 API: governor is set to api: 2 (its keys are there); a live "
                       "takeover needs v3: move Patroni to etcd3 first, or governorctl migrate --to-api 3 later")
    hosts = _hosts(etcd.pop("hosts", None)) or _hosts(etcd.pop("host", None)) or _hosts(etcd.pop("url", None))
    for unused in ("host", "url"):
        etcd.pop(unused, None)
    url = str(found[0][1].get("url") or "")
    protocol = etcd.pop("protocol", "https" if url.startswith("https") else None)
    if not hosts:
        for way in ("srv", "srv_suffix", "proxy"):
            if way in etcd:
                t.refuse(f"{key}.{way}", "governor needs etcd's endpoints listed (host:port): DNS SRV discovery and "
                                         "a proxy are not supported")
        if not any(r.startswith(f"{key}.") for r in t.refused):
            t.refuse(key, "no hosts, host or url: governor needs etcd's endpoints")
    else:
        t.put("etcd.host", hosts if len(hosts) > 1 else hosts[0])
    if protocol in ("http", "https"):
        t.put("etcd.protocol", protocol)
    for name in ("cacert", "cert", "key", "username", "password"):
        if etcd.get(name) is not None:
            t.put(f"etcd.{name}", str(etcd.pop(name)))
    if etcd.pop("use_proxies", False):
        t.note(f"{key}.use_proxies", "governor talks to the endpoints listed, each in turn")
    for name in sorted(etcd):
        t.note(f"{key}.{name}", "not carried over (governor's etcd settings: host, protocol, cacert, cert, key, "
                                "username, password)")


def _restapi(t: Translation, api: Any) -> None:
    api = dict(api) if isinstance(api, dict) else {}
    listen = str(api.pop("listen", "") or "")
    if listen:
        t.put("restapi.listen", listen)
    for name in ("connect_address", "certfile", "keyfile", "cafile"):
        if api.get(name) is not None:
            t.put(f"restapi.{name}", str(api.pop(name)))
    auth = api.pop("authentication", None)
    if isinstance(auth, dict) and auth.get("username") and auth.get("password"):
        t.put("restapi.username", str(auth["username"]))
        t.put("restapi.password", str(auth["password"]))
    verify = api.pop("verify_client", None)
    if verify in ("optional", "required"):
        t.put("restapi.verify_client", "required")
        if verify == "optional":
            t.note("restapi.verify_client", "optional became required: governor verifies every certificate "
                                            "presented, and control also takes the Basic credentials")
    host = listen.rsplit(":", 1)[0] if listen else ""
    if not (isinstance(auth, dict) and auth.get("username")) and verify not in ("optional", "required") \
            and host not in LOOPBACK:
        t.refuse("restapi.authentication", f"the API listens on {listen or 'every address'} and takes control "
                 "requests without credentials; governor refuses that: add restapi.authentication (username and "
                 "password, the same on every member) to Patroni's file, reload Patroni, and run this again")
    if api.pop("keyfile_password", None) is not None:
        t.note("restapi.keyfile_password", "governor reads an unencrypted key: decrypt it (openssl pkey) and "
                                           "keep it readable by postgres only")
    for name in sorted(api):
        t.note(f"restapi.{name}", "not carried over (governor's API: credentials and TLS, no allowlist or "
                                  "extra headers)")


def _watchdog(t: Translation, watchdog: Any) -> None:
    if not isinstance(watchdog, dict):
        return
    mode = watchdog.get("mode")
    mode = "off" if mode is False else "automatic" if mode is True else str(mode or "automatic").lower()
    t.put("watchdog.mode", mode)
    if watchdog.get("device"):
        t.put("watchdog.device", str(watchdog["device"]))
    if "safety_margin" in watchdog:
        t.note("watchdog.safety_margin", "governor sets the watchdog's timeout from ttl and its own margin")


def _tags(t: Translation, tags: Any) -> None:
    if not isinstance(tags, dict):
        return
    for name, value in tags.items():
        if name in SAME_TAGS:
            t.put(f"tags.{name}", value)
        else:
            t.note(f"tags.{name}", "not a tag governor knows (nofailover, noloadbalance, nosync, clonefrom, "
                                   "replicatefrom, failover_priority): left out")


def _command(t: Translation, key: str, value: Any, target: str, waited: bool) -> None:
    try:
        argv = shlex.split(value) if isinstance(value, str) else [str(a) for a in value]
    except (ValueError, TypeError):
        t.note(key, f"{value!r} is not a command line: left out")
        return
    if not argv:
        return
    t.put(target, argv[0] if len(argv) == 1 else argv)
    if not argv[0].startswith("/"):
        t.note(key, f"{argv[0]!r} is not an absolute path: governor runs no shell and no PATH lookup, give the "
                    "program's full path")
    t.note(key, ("carried over; governor adds the arguments ACTION ROLE SCOPE, which Patroni did not give "
                 "this one" if waited else "carried over; governor calls it as Patroni did (ACTION ROLE SCOPE), "
                 "ROLE being primary or replica (never master, standby_leader or demoted)"))


def _postgresql(t: Translation, pg: Any) -> None:
    pg = dict(pg) if isinstance(pg, dict) else {}
    for name in ("listen", "connect_address", "data_dir", "bin_dir", "config_dir", "pgpass", "recovery_conf",
                 "use_pg_rewind", "remove_data_directory_on_rewind_failure", "pg_hba", "parameters"):
        if pg.get(name) is not None:
            t.put(f"postgresql.{name}", pg.pop(name))
    if pg.get("pg_ctl_timeout") is not None:
        t.put("postgresql.start_timeout", _seconds(pg.pop("pg_ctl_timeout")))
    auth = pg.pop("authentication", None)
    auth = auth if isinstance(auth, dict) else {}
    for role in ("superuser", "replication"):
        entry = auth.get(role) if isinstance(auth.get(role), dict) else {}
        for name in ("username", "password") + (("sslmode", "sslrootcert", "sslcert", "sslkey")
                                                if role == "replication" else ()):
            if entry.get(name) is not None:
                t.put(f"postgresql.{role}.{name}", str(entry[name]))
        for name in sorted(set(entry) - {"username", "password", "sslmode", "sslrootcert", "sslcert", "sslkey"}):
            t.note(f"postgresql.authentication.{role}.{name}", "not carried over")
    if "rewind" in auth:
        t.note("postgresql.authentication.rewind", "governor runs pg_rewind as the superuser")
    callbacks = pg.pop("callbacks", None)
    for name, value in (callbacks.items() if isinstance(callbacks, dict) else ()):
        if name in CALLBACKS:
            _command(t, f"postgresql.callbacks.{name}", value, f"callbacks.{name}", waited=False)
        else:
            t.note(f"postgresql.callbacks.{name}", "not a callback governor runs")
    for name in ("pre_promote", "before_stop"):
        if pg.get(name):
            _command(t, f"postgresql.{name}", pg.pop(name), f"callbacks.{name}", waited=True)
    methods = pg.pop("create_replica_methods", None)
    if isinstance(methods, list):
        _replica_methods(t, methods, pg)
    for name, why in (("pg_ident", "governor writes no pg_ident.conf: keep yours with config_dir, or map users in "
                                   "pg_hba"),
                      ("custom_conf", "governor writes postgresql.conf itself: move these settings to parameters"),
                      ("use_unix_socket", "governor connects over its own socket directory"),
                      ("use_unix_socket_repl", "replicas connect over TCP"),
                      ("bin_name", "governor runs the distribution's program names"),
                      ("proxy_address", "not carried over"),
                      ("remove_data_directory_on_diverged_timelines", "governor rewinds, or stays stopped")):
        if name in pg:
            pg.pop(name)
            t.note(f"postgresql.{name}", why)
    for name in sorted(pg):
        t.note(f"postgresql.{name}", "unknown to this translation: left out")


def _replica_methods(t: Translation, methods: List[Any], pg: Dict[str, Any]) -> None:
    kept = []
    for method in methods:
        options = pg.pop(method, None) if isinstance(method, str) else None
        if method == "basebackup":
            kept.append("basebackup")
            if options:
                t.note("postgresql.basebackup", "governor runs pg_basebackup with its own options")
        elif method == "pgbackrest":
            command = str(options.get("command", "")) if isinstance(options, dict) else ""
            stanza = re.search(r"--stanza[= ](\S+)", command)
            config = re.search(r"--config[= ](\S+)", command)
            if stanza:
                t.put("postgresql.archive.pgbackrest.stanza", stanza.group(1))
                if config:
                    t.put("postgresql.archive.pgbackrest.config", config.group(1))
                kept.append("pgbackrest")
                t.note("postgresql.pgbackrest", "governor restores with its own pgbackrest command for that stanza "
                                                "(and archives to it: check postgresql.archive)")
            else:
                t.note("postgresql.pgbackrest", "no --stanza in its command: left out")
        else:
            t.note(f"postgresql.create_replica_methods.{method}", "governor clones with pgbackrest or basebackup "
                                                                  "only: left out")
    if kept:
        t.put("postgresql.create_replica_methods", kept)


def _bootstrap(t: Translation, bootstrap: Dict[str, Any]) -> None:
    initdb = bootstrap.get("initdb")
    if isinstance(initdb, list):
        options = []
        for item in initdb:
            if isinstance(item, dict):
                options += [f"--{k}={v}" if v is not None else f"--{k}" for k, v in item.items()]
            else:
                options.append(f"--{item}")
        t.put("postgresql.initdb", options)
    for name in sorted(set(bootstrap) - {"dcs", "initdb"}):
        t.note(f"bootstrap.{name}", "the cluster exists: governor will not bootstrap it again; left out")


def _seconds(value: Any) -> Optional[float]:
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return value
    match = DURATION.fullmatch(str(value))
    return int(match.group(1)) * UNITS[match.group(2)] if match else None


def _dynamic(t: Translation, dcs: Dict[str, Any], where: str) -> None:
    for name, value in dcs.items():
        if name in DYNAMIC_TOP:
            t.put(DYNAMIC_TOP[name], value)
        elif name in DYNAMIC_NOT_CARRIED:
            t.note(f"{where}.{name}", DYNAMIC_NOT_CARRIED[name])
        elif name == "member_slots_ttl":
            t.put("postgresql.member_slots_ttl", _seconds(value))
        elif name == "slots" and isinstance(value, dict):
            _slots(t, value, where)
        elif name == "standby_cluster" and isinstance(value, dict):
            for key in ("host", "port", "primary_slot_name", "restore_command"):
                if value.get(key) is not None:
                    t.put(f"standby_cluster.{key}", value[key])
            for key in sorted(set(value) - {"host", "port", "primary_slot_name", "restore_command"}):
                t.note(f"{where}.standby_cluster.{key}", "not carried over")
        elif name == "postgresql" and isinstance(value, dict):
            for key, item in value.items():
                if key == "parameters" and isinstance(item, dict):
                    t.put("postgresql.parameters", {**t.files.get("postgresql", {}).get("parameters", {}), **item})
                elif key in ("pg_hba", "recovery_conf", "use_pg_rewind", "remove_data_directory_on_rewind_failure"):
                    t.put(f"postgresql.{key}", item)
                elif key == "use_slots":
                    if item is False:
                        t.note(f"{where}.postgresql.use_slots", "governor always gives each replica a slot")
                else:
                    t.note(f"{where}.postgresql.{key}", "not carried over")
        else:
            t.note(f"{where}.{name}", "unknown to this translation: left out")


def _slots(t: Translation, slots: Dict[str, Any], where: str) -> None:
    physical, logical = [], []
    for name, spec in slots.items():
        spec = spec if isinstance(spec, dict) else {}
        if spec.get("type", "physical") == "physical":
            physical.append(str(name))
        elif spec.get("type") == "logical" and spec.get("database"):
            logical.append({"name": str(name), "database": str(spec["database"]),
                            "plugin": str(spec.get("plugin") or "pgoutput")})
        else:
            t.note(f"{where}.slots.{name}", "a logical slot needs its database: left out")
    if physical:
        t.put("postgresql.permanent_slots", physical)
    if logical:
        t.put("postgresql.logical_slots", logical)


def _cmdline(t: Translation, pg: Any, dcs: Any) -> None:
    """The values PostgreSQL runs with under Patroni for the settings it puts on the command line."""
    own = pg.get("parameters") if isinstance(pg, dict) and isinstance(pg.get("parameters"), dict) else {}
    shared = dcs.get("postgresql", {}).get("parameters", {}) if isinstance(dcs, dict) and \
        isinstance(dcs.get("postgresql"), dict) and isinstance(dcs["postgresql"].get("parameters"), dict) else {}
    parameters = t.files.setdefault("postgresql", {}).setdefault("parameters", {})
    for name, default in PATRONI_CMDLINE.items():
        value = shared.get(name, default)
        if name in own and str(own[name]) != str(value):
            t.note(f"postgresql.parameters.{name}", f"Patroni ignored this member's {own[name]!r} (it takes "
                                                    f"{name} from the cluster's configuration): governor uses "
                                                    f"{value!r}, the value PostgreSQL runs with")
        parameters[name] = value
