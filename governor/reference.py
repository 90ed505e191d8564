"""The configuration reference: what each key of /etc/governor/*.yml means. The keys, their
kinds and their defaults are not written here but recorded from the validator itself
(`declared`), so a key the code reads and this table lacks, or the other way round, fails
tests/test_reference.py; `tools/config-reference` renders the table as governor.yml(5) and
docs/configuration.md."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Dict, Optional, Tuple

from governor import checker, cluster_settings, config

RELOAD, RESTART, DYNAMIC, PAUSED = "reload", "restart", "dynamic", "paused"
HOW = {
    RELOAD: "changes with `systemctl reload governor` (SIGHUP)",
    PAUSED: "changes with a reload in maintenance mode (`governorctl pause`), when no member acts on what it "
            "reads; otherwise at the next restart",
    RESTART: "read at start: a reload keeps the running value and logs that a restart is needed",
    DYNAMIC: "changes with a reload; also a cluster-wide dynamic setting (`governorctl edit-config`), "
             "whose value, once set in etcd, takes precedence over every member's file",
}


@dataclass(frozen=True)
class Setting:
    meaning: str
    applies: str = RELOAD
    default: Optional[str] = None     # shown instead of the validator's own default (computed ones)
    kind: Optional[str] = None        # shown where the validator reads the key without a kind


# A configuration with every optional section present, so that the validator consults every key.
EVERY_SECTION = {"etcd": {"scope": "reference"},
                 "postgresql": {"name": "reference", "data_dir": "/nonexistent/reference",
                                "archive": {"pgbackrest": {"stanza": "a"}},
                                "bootstrap": {"method": "pgbackrest", "stanza": "b"}},
                 "standby_cluster": {"host": "reference"}}
PASSWORD = "a string; instead, KEY_file: a file holding it (readable by its owner only), or a systemd " \
           "credential named after the key"
CALLBACK = "a path, or a list: the program and its arguments"

SETTINGS: Dict[str, Setting] = {
    "log_level": Setting("DEBUG, INFO, WARNING or ERROR."),
    "log_format": Setting("text, or json: one JSON object per line."),
    "tags.nofailover": Setting("Never take the leader lock."),
    "tags.noloadbalance": Setting("Not offered as a read replica by /replica."),
    "tags.nosync": Setting("Never chosen as a synchronous standby."),
    "tags.clonefrom": Setting("New replicas copy this running replica with pg_basebackup instead of the "
                              "leader."),
    "tags.failover_priority": Setting("0 to 10000: among members with as much WAL, the higher takes over "
                                      "(more WAL always wins first); 0 never leads."),
    "tags.replicatefrom": Setting("Stream from this replica instead of the leader (cascading); the leader "
                                  "again while that one is not a running replica."),
    "etcd.scope": Setting("The cluster's name: its keys live under /service/SCOPE/. Required.", RESTART),
    "etcd.host": Setting("host:port of etcd's client endpoint, or a list of them; governor moves to the next "
                         "one that answers, and refuses endpoints of different etcd clusters.", PAUSED),
    "etcd.protocol": Setting("http or https. With https the server's certificate is always verified (against "
                             "cacert, else the system's CAs).", PAUSED),
    "etcd.cacert": Setting("The CA file that signed etcd's server certificate.", PAUSED),
    "etcd.cert": Setting("Client certificate for etcd (with etcd.key).", PAUSED),
    "etcd.key": Setting("The client certificate's key.", PAUSED),
    "etcd.username": Setting("etcd user (with etcd.password).", PAUSED),
    "etcd.password": Setting("The etcd user's password.", kind=PASSWORD, applies=PAUSED),
    "etcd.password_file": Setting("File holding etcd.password.", PAUSED),
    "etcd.api": Setting("3: etcd's v3 API; 2: the v2 keys API (needs python3-etcd). Not set: v3, but a scope "
                        "found in etcd's v2 keyspace is refused until api says which.", default="not set (3)",
                        applies=PAUSED),
    "postgresql.name": Setting("This member's unique name (at most 63 characters: it names a replication "
                               "slot). Required.", RESTART),
    "postgresql.listen": Setting("host:port PostgreSQL listens on (listen_addresses and port).", RESTART),
    "postgresql.connect_address": Setting("host:port other members and haproxy use; required when listen is a "
                                          "wildcard.", RESTART, "the listen address"),
    "postgresql.data_dir": Setting("The data directory; its parent must exist. Required. May hold {major} "
                                   "where the version goes (/var/lib/postgresql/{major}/main): it then stands for "
                                   "the version of the cluster there, so a major upgrade changes no file.",
                                   RESTART),
    "postgresql.bin_dir": Setting("Where pg_ctl, initdb and pg_basebackup live. One of another major than the "
                                  "data directory's PG_VERSION is refused.", RESTART,
                                  "the data directory's major: /usr/lib/postgresql/N/bin, /usr/pgsql-N/bin or "
                                  "/usr/bin; without data, the newest installed"),
    "postgresql.recovery_conf": Setting("Extra standby settings (e.g. recovery_min_apply_delay)."),
    "postgresql.parameters": Setting("postgresql.conf settings, checked against the installed server's "
                                     "catalogue. Settings that run programs or load libraries (archive_command, "
                                     "shared_preload_libraries, ...) are accepted here only, never from etcd.",
                                     DYNAMIC),
    "postgresql.initdb": Setting("initdb options for the cluster's first member."),
    "postgresql.pg_hba": Setting("Extra pg_hba.conf lines, placed before governor's own; pg_hba.conf is "
                                 "rewritten before every start of PostgreSQL."),
    "postgresql.pgpass": Setting("The 0600 passfile replicas use to reach the leader.", RESTART,
                                 "DATA_DIR/../.pgpass_NAME"),
    "postgresql.log_file": Setting("PostgreSQL's log when governor starts it itself.", RESTART,
                                   "governor's own output (the journal)"),
    "postgresql.start_timeout": Setting("Seconds to wait for PostgreSQL to accept connections."),
    "postgresql.use_pg_rewind": Setting("Run pg_rewind before a former primary follows a new leader (needs "
                                        "superuser.password)."),
    "postgresql.remove_data_directory_on_rewind_failure": Setting(
        "When pg_rewind fails, delete the data directory and clone the leader (otherwise stay stopped)."),
    "postgresql.member_slots_ttl": Setting("Seconds before the leader drops the slot of a member gone that "
                                           "long (0: never)."),
    "postgresql.permanent_slots": Setting("Physical slots for consumers outside the cluster; every replica "
                                          "keeps a copy moved forward to the start of the leader's WAL segment."),
    "postgresql.logical_slots": Setting("Logical slots for change-data-capture consumers, kept across a "
                                        "failover on PostgreSQL 17.", default="[]",
                                        kind="a list of {name, database, plugin (default pgoutput)}"),
    "postgresql.systemd_unit": Setting("Run PostgreSQL as this systemd unit (e.g. postgresql@15-main, or "
                                       "postgresql@{major}-main with {major} in data_dir) through systemctl.",
                                       RESTART),
    "postgresql.config_dir": Setting("Where the distribution keeps postgresql.conf (Debian: /etc/postgresql/N/"
                                     "main, or /etc/postgresql/{major}/main with {major} in data_dir): governor "
                                     "writes conf.d/governor.conf and pg_hba.conf there.", RESTART),
    "postgresql.create_replica_methods": Setting("How a new replica gets its data, tried in order: pgbackrest, "
                                                 "basebackup."),
    "postgresql.replication.username": Setting("The replication role, created at bootstrap."),
    "postgresql.replication.password": Setting("Its password. Required.", kind=PASSWORD),
    "postgresql.replication.password_file": Setting("File holding postgresql.replication.password."),
    "postgresql.replication.network": Setting("Network the members connect from, for pg_hba.conf."),
    "postgresql.replication.sslmode": Setting("libpq sslmode for every connection to another member; "
                                              "verify-full with sslrootcert verifies it."),
    "postgresql.replication.sslrootcert": Setting("CA file for sslmode verify-ca or verify-full."),
    "postgresql.replication.sslcert": Setting("Client certificate for the replication role."),
    "postgresql.replication.sslkey": Setting("Its key."),
    "postgresql.replication.hostssl": Setting("The members' pg_hba.conf lines are hostssl."),
    "postgresql.superuser.username": Setting("The local administration role."),
    "postgresql.superuser.password": Setting("Its password; without one, peer authentication over the socket "
                                             "(pg_rewind then cannot run).", kind=PASSWORD),
    "postgresql.superuser.password_file": Setting("File holding postgresql.superuser.password."),
    "postgresql.archive.mode": Setting("archive_mode: on (the primary archives) or always (standbys too).",
                                       default="on with a command or pgbackrest, else off",
                                       kind="off, on or always"),
    "postgresql.archive.command": Setting("A one-line archive_command (%p, %f as PostgreSQL documents them)."),
    "postgresql.archive.restore_command": Setting("A one-line restore_command."),
    "postgresql.archive.pgbackrest.stanza": Setting("Archive with pgBackRest to this stanza: governor writes "
                                                    "archive_command and restore_command, creates the "
                                                    "stanza after bootstrap and upgrades it after a major "
                                                    "upgrade (governorctl upgrade)."),
    "postgresql.archive.pgbackrest.config": Setting("pgBackRest's configuration file.",
                                                    default="pgBackRest's default"),
    "postgresql.bootstrap.method": Setting("initdb, or pgbackrest: the first member restores another "
                                           "cluster's backup and is promoted."),
    "postgresql.bootstrap.stanza": Setting("The stanza to restore from (not the one this cluster archives to)."),
    "postgresql.bootstrap.config": Setting("pgBackRest's configuration file for that stanza.",
                                           default="postgresql.archive.pgbackrest.config"),
    "postgresql.bootstrap.recovery_target_time": Setting("Recover to this time (with its zone) instead of the "
                                                         "end of the archive."),
    "restapi.listen": Setting("host:port of the HTTP API (health checks, status, control).", RESTART,
                              "PostgreSQL's listen host, port 8008"),
    "restapi.connect_address": Setting("How other members and haproxy reach the API.", RESTART,
                                       "the listen address; for a wildcard, postgresql.connect_address's host"),
    "restapi.username": Setting("HTTP basic authentication for the control endpoints; required (or "
                                "verify_client) when the API listens beyond loopback.", RESTART),
    "restapi.password": Setting("Its password.", RESTART, kind=PASSWORD),
    "restapi.password_file": Setting("File holding restapi.password.", RESTART),
    "restapi.certfile": Setting("Serve the API over TLS with this certificate.", RESTART),
    "restapi.keyfile": Setting("The certificate's key.", RESTART),
    "restapi.cafile": Setting("CA that signed the clients' certificates (verify_client).", RESTART),
    "restapi.verify_client": Setting("none, or required: control requests are also accepted with a client "
                                     "certificate signed by cafile.", RESTART),
    "restapi.authentication": Setting("none: accept control requests without credentials beyond loopback "
                                      "(refused otherwise; warned about at every start).", RESTART),
    "metrics.enabled": Setting("Serve the Prometheus exporter.", RESTART),
    "metrics.listen": Setting("host:port of the exporter.", RESTART, "PostgreSQL's listen host, port 9547"),
    "watchdog.mode": Setting("off, automatic (use the device when it works) or required (never lead "
                             "without it).", RESTART),
    "watchdog.device": Setting("The watchdog device; it must be writable by the user governor runs as.",
                               RESTART),
    "callbacks.on_start": Setting("Run in the background after PostgreSQL started.", kind=CALLBACK),
    "callbacks.on_stop": Setting("Run in the background after PostgreSQL stopped.", kind=CALLBACK),
    "callbacks.on_restart": Setting("Run in the background after a restart of PostgreSQL.", kind=CALLBACK),
    "callbacks.on_reload": Setting("Run in the background after PostgreSQL reloaded its settings.",
                                   kind=CALLBACK),
    "callbacks.on_role_change": Setting("Run in the background whenever the role differs from the one at the "
                                        "last callback (including a demotion through a stop and a start).",
                                        kind=CALLBACK),
    "callbacks.pre_promote": Setting("Run, and waited for, before a promotion; failing vetoes it.",
                                     kind=CALLBACK),
    "callbacks.before_stop": Setting("Run, and waited for, before governor stops PostgreSQL.", kind=CALLBACK),
    "callbacks.timeout": Setting("Seconds a callback may run before its process group is killed (1 to 600)."),
    "standby_cluster.host": Setting("This cluster follows the primary cluster at this host: written to etcd "
                                    "by the first member of a new scope; afterwards only the dynamic setting "
                                    "counts (promote-cluster, demote-cluster).", DYNAMIC, kind="a string"),
    "standby_cluster.port": Setting("The primary cluster's port.", DYNAMIC, default="5432",
                                    kind="an integer"),
    "standby_cluster.primary_slot_name": Setting("The slot the standby leader streams from.", DYNAMIC,
                                                 kind="a string"),
    "standby_cluster.restore_command": Setting("This member's command for the primary cluster's archive while "
                                               "it follows it (from the files only: it runs a program).",
                                               kind="a string"),
}
SETTINGS.update({s.file_key: Setting(s.meaning, DYNAMIC, kind="off, on or quorum" if s.kind == "sync_mode" else None,
                                     default=s.default if s.kind == "sync_mode" else None)
                 for s in cluster_settings.DYNAMIC})


def declared() -> Dict[str, Tuple[str, Any]]:
    """Every key the validator reads: dotted key -> (kind, default); kind and default are None
    where the validator reads the key without them."""
    with checker.recording() as seen:
        try:
            config.validate(EVERY_SECTION, {}, "reference")
        except config.ConfigError:
            pass        # the placeholders need not validate: only which keys were read counts
    keys: Dict[str, Tuple[str, Any]] = {}
    for section, allowed in seen.sections.items():
        for name in allowed:
            key = f"{section}.{name}" if section else name
            if key not in seen.sections:
                keys[key] = seen.values.get(key, (None, None))
    return keys


def rows() -> Tuple[Tuple[str, str, str, str, str], ...]:
    """(key, kind, default, how it applies, meaning) for every key, in the validator's order."""
    out = []
    for key, (kind, default) in declared().items():
        setting = SETTINGS[key]
        out.append((key, setting.kind or checker.expectation(kind), setting.default or _default(default),
                    setting.applies, setting.meaning))
    return tuple(out)


def _default(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, list):
        return "[" + ", ".join(_default(v) if not isinstance(v, dict) else
                               "{" + ", ".join(f"{k}: {v}" for k, v in v.items()) + "}" for v in value) + "]"
    if isinstance(value, dict):
        return "{}" if not value else str(value)
    return str(value)


INTRO = ("governor reads a YAML file, or a directory whose *.yml and *.yaml files are merged in name "
         "order (mappings merge key by key, later files win): the package's governor.yml, then a "
         "per-host local.yml. Unknown keys, wrong types and impossible values are errors, all reported "
         "at once with the file that set them (`governor --validate-config`, exit 2); a reload keeps the "
         "running configuration when the new one is rejected.")
SECTIONS = ("", "tags", "etcd", "postgresql", "restapi", "metrics", "watchdog", "callbacks", "standby_cluster")


def _section_of(key: str) -> str:
    head = key.split(".")[0]
    return head if head in SECTIONS and "." in key else ""


def markdown() -> str:
    """docs/configuration.md."""
    out = ["# governor.yml: the configuration reference", "",
           "<!-- Generated by tools/config-reference from governor/reference.py: edit that, not this. -->", "",
           INTRO, "", "How a change applies:", ""]
    out += [f"- **{name}**: {text}" for name, text in HOW.items()]
    for section in SECTIONS:
        out += ["", f"## {section or 'Top level'}", "", "| key | value | default | applies | meaning |",
                "|-----|-------|---------|---------|---------|"]
        for key, kind, default, applies, meaning in rows():
            if _section_of(key) == section:
                cells = (f"`{key}`", kind, f"`{default}`" if default and " " not in default else default,
                         applies, meaning)
                out.append("| " + " | ".join(c.replace("|", "\\|") for c in cells) + " |")
    return "\n".join(out) + "\n"


def _roff(text: str) -> str:
    text = text.replace("\\", "\\e").replace("-", "\\-").replace("`", "")
    return "\\&" + text if text[:1] in (".", "'") else text


def manpage(version: str) -> str:
    """governor.yml(5)."""
    out = [f'.TH GOVERNOR.YML 5 "" "governor {version}" "File Formats"',
           ".\\\" Generated by tools/config-reference from governor/reference.py: edit that, not this.",
           ".SH NAME", "governor.yml \\- governor's configuration files", ".SH SYNOPSIS",
           "/etc/governor/*.yml", ".SH DESCRIPTION", _roff(INTRO), ".SH HOW A CHANGE APPLIES"]
    for name, text in HOW.items():
        out += [".TP", f".B {name}", _roff(text)]
    for section in SECTIONS:
        out.append(f".SH {(section or 'top level').upper().replace('_', ' ')}")
        for key, kind, default, applies, meaning in rows():
            if _section_of(key) == section:
                facts = "; ".join(x for x in (kind, f"default: {default}" if default else "", applies) if x)
                out += [".TP", f".B {_roff(key)}", _roff(meaning), ".br", _roff(f"({facts})")]
    out += [".SH SEE ALSO", ".BR governor (8),", ".BR governorctl (1),",
            "/usr/share/doc/governor/README.md, /usr/share/doc/governor/examples/governor.yml"]
    return "\n".join(out) + "\n"
