"""What the leader's governor checks on its own host before a major-version upgrade
(upgrade.py judges the findings): prepared and long-open transactions, extensions the target
version lacks, free space, and `pg_upgrade --check` run against the live cluster with a scratch
cluster of the target version, made beside the data directory and removed afterwards."""
from __future__ import annotations

import os
import shutil
import socket
import subprocess
import tempfile
import time
from typing import Callable, List, Optional, Tuple

import psycopg2

from governor import bindir, pgparams
from governor.postgres.catalogue import catalogue
from governor.settings import PostgresConfig
from governor.upgrade import LONG_TRANSACTION, LeaderFacts

Query = Callable[[str, str], List[tuple]]     # (database, sql) -> rows
PG_UPGRADE_TIMEOUT = 300.0
DATABASES_MAX = 500
TAIL = 6       # lines of a failed program's output kept for the message


def probe(pg: PostgresConfig, target: int) -> LeaderFacts:
    """Every check, each failure to run one kept as an error (never as a pass)."""
    errors: List[str] = []
    data_major, target_bin = bindir.data_major(pg.data_dir), bindir.installed(target)
    query = querier(pg)
    found = {}
    for name, sql in (("prepared", "SELECT count(*) FROM pg_prepared_xacts"),
                      ("long", "SELECT pid, coalesce(usename, '?'), coalesce(datname, '?'), "
                               "extract(epoch FROM now() - xact_start)::bigint FROM pg_stat_activity "
                               "WHERE backend_type = 'client backend' AND pid <> pg_backend_pid() "
                               f"AND xact_start < now() - interval '{LONG_TRANSACTION} seconds'"),
                      ("size", "SELECT coalesce(sum(pg_database_size(oid)), 0)::bigint FROM pg_database"),
                      ("replay", "SELECT application_name, (pg_current_wal_lsn() - replay_lsn)::bigint "
                                 "FROM pg_stat_replication")):
        try:
            found[name] = query("postgres", sql)
        except psycopg2.Error as exc:
            errors.append(f"could not ask PostgreSQL ({_first_line(exc)})")
            break
    size = int(found["size"][0][0]) if found.get("size") else 0
    missing: Tuple[str, ...] = ()
    upgrade_check: Optional[str] = None
    parameters: Tuple[str, ...] = ()
    if target_bin:
        parameters = refused_parameters(pg.parameters, catalogue(target_bin))
    if target_bin and not errors:
        missing, problem = _missing_extensions(query, target_bin)
        errors += [problem] if problem else []
        if data_major is not None and target > data_major:
            upgrade_check = pg_upgrade_check(pg, target, target_bin, query)
    free: Optional[int] = None
    try:
        free = shutil.disk_usage(os.path.dirname(pg.data_dir)).free
    except OSError as exc:
        errors.append(f"free space unknown ({exc.strerror})")
    return LeaderFacts(
        data_major=data_major, target_bin=target_bin, errors=tuple(errors),
        prepared=int(found["prepared"][0][0]) if found.get("prepared") else 0,
        long_transactions=tuple(f"pid {pid} ({user} on database {db}, open {age} s)"
                                for pid, user, db, age in found.get("long", [])),
        missing_extensions=missing, free_bytes=free, needed_bytes=max(256 * 2**20, size // 20),
        pg_upgrade=upgrade_check, parameters=parameters, database_bytes=size,
        replay_behind=tuple((str(name), None if behind is None else int(behind))
                            for name, behind in found.get("replay", []) if name))


_free_seen: dict = {}
FREE_EVERY = 60.0


def coarse(free: int) -> int:
    """`free` rounded down to its 6 leading bits: a host's churn (WAL segments, logs) does not
    rewrite the member key each time it is looked at; the upgrade's space check loses < 1/32."""
    drop = max(0, free.bit_length() - 6)
    return free >> drop << drop


def free_beside(data_dir: str) -> Optional[int]:
    """Bytes free on the file system holding `data_dir`'s parent (where an upgrade puts a new
    cluster), looked at most once a minute (every pass publishes it); None when unknown."""
    now = time.monotonic()
    seen = _free_seen.get(data_dir)
    if seen is None or now - seen[1] >= FREE_EVERY:
        try:
            free: Optional[int] = coarse(shutil.disk_usage(os.path.dirname(data_dir)).free)
        except OSError:
            free = None
        _free_seen[data_dir] = seen = (free, now)
    return seen[0]


def refused_parameters(parameters: dict, cat: Optional[pgparams.Catalogue]) -> Tuple[str, ...]:
    """'name: why' for each setting (as the member runs it, dynamic ones included) the target
    version's catalogue refuses; a renamed one counts as refused (the files must say the new name)."""
    if cat is None:
        return ()
    out = []
    for name, value in parameters.items():
        problem = pgparams.check(name, value, cat)
        if problem:
            out.append(f"{name}: {problem}")
    return tuple(out)


def querier(pg: PostgresConfig) -> Query:
    def query(database: str, sql: str) -> List[tuple]:
        conn = psycopg2.connect(host=pg.socket_dir, port=pg.port, dbname=database, user=pg.superuser.username,
                                password=pg.superuser.password, connect_timeout=3,
                                application_name="governor upgrade check", options="-c statement_timeout=10000")
        try:
            with conn.cursor() as cur:
                cur.execute(sql)
                return cur.fetchall()
        finally:
            conn.close()
    return query


def _missing_extensions(query: Query, target_bin: str) -> Tuple[Tuple[str, ...], Optional[str]]:
    """Extensions created in any database whose control file the target version lacks."""
    try:
        share = subprocess.run([os.path.join(target_bin, "pg_config"), "--sharedir"], capture_output=True,
                               text=True, timeout=10, check=True).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return (), f"pg_config --sharedir of {target_bin} did not answer: extensions not checked"
    missing = []
    try:
        databases = [row[0] for row in query("postgres", "SELECT datname FROM pg_database WHERE datallowconn "
                                                         f"ORDER BY datname LIMIT {DATABASES_MAX}")]
        for database in databases:
            for (name,) in query(database, "SELECT extname FROM pg_extension ORDER BY extname"):
                if not os.path.exists(os.path.join(share, "extension", f"{name}.control")):
                    missing.append(f"{name} (database {database})")
    except psycopg2.Error as exc:
        return tuple(missing), f"could not list the extensions ({_first_line(exc)})"
    return tuple(missing), None


def pg_upgrade_check(pg: PostgresConfig, target: int, target_bin: str, query: Query) -> Optional[str]:
    """pg_upgrade --check against the running cluster and a scratch one of the target version
    initialized as pg_upgrade needs it (the same install user, encoding, locale and checksums).
    None when it passes; otherwise what it said."""
    try:
        options, user = initdb_options(query, target)
    except (psycopg2.Error, IndexError) as exc:
        return f"could not read the cluster's install user and locale ({_first_line(exc)})"
    scratch = tempfile.mkdtemp(prefix=".governor-upgrade-check-", dir=os.path.dirname(pg.data_dir))
    try:
        new_data = os.path.join(scratch, "data")
        failed = _run([os.path.join(target_bin, "initdb"), "-D", new_data, *options], scratch, {})
        if failed:
            return f"initdb of a scratch PostgreSQL cluster failed: {failed}"
        env = {}
        if user == pg.superuser.username and pg.superuser.password:
            passfile = os.path.join(scratch, "pgpass")
            with open(os.open(passfile, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600), "w") as fh:
                fh.write(f"*:*:*:{_pgpass_field(user)}:{_pgpass_field(pg.superuser.password)}\n")
            env["PGPASSFILE"] = passfile
        argv = [os.path.join(target_bin, "pg_upgrade"), "--check", "-b", pg.bin_dir, "-B", target_bin,
                "-d", pg.data_dir, "-D", new_data, "-p", str(pg.port), "-P", str(free_port()), "-U", user,
                "-s", scratch]
        if pg.config_dir:
            argv += ["-o", f"-c config_file={os.path.join(pg.config_dir, 'postgresql.conf')}"]
        return _run(argv, scratch, env)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


INSTALL_FACTS = ("SELECT (SELECT rolname FROM pg_authid WHERE oid = 10), current_setting('data_checksums'), "
                 "pg_encoding_to_char(encoding), datcollate, datctype FROM pg_database WHERE datname = 'template0'")


def initdb_options(query: Query, target: int) -> Tuple[List[str], str]:
    """initdb's options for a cluster of `target` that pg_upgrade accepts from the running one:
    the same install user, encoding, locale (provider) and checksums; and that install user."""
    user, checksums, encoding, collate, ctype = query("postgres", INSTALL_FACTS)[0]
    options = ["-U", user, "-A", "trust", f"--encoding={encoding}", f"--lc-collate={collate}",
               f"--lc-ctype={ctype}", *locale_provider(query)]
    options += ["--data-checksums"] if checksums == "on" else ["--no-data-checksums"] if target >= 18 else []
    return options, user


def locale_provider(query: Query) -> List[str]:
    """initdb's locale provider options matching template0's (PostgreSQL 15 added ICU as a
    database default; earlier versions are libc only)."""
    columns = {row[0] for row in query("postgres", "SELECT attname FROM pg_attribute WHERE attrelid = "
                                                   "'pg_database'::regclass AND attnum > 0")}
    if "datlocprovider" not in columns:
        return []
    locale = "datlocale" if "datlocale" in columns else "daticulocale"
    provider, icu = query("postgres", f"SELECT datlocprovider, {locale} FROM pg_database "
                                      "WHERE datname = 'template0'")[0]
    if provider == "i":
        return ["--locale-provider=icu", f"--icu-locale={icu}"]
    return ["--locale-provider=builtin", f"--builtin-locale={icu}"] if provider == "b" else []


def _run(argv: List[str], cwd: str, env: dict) -> Optional[str]:
    """None when the program succeeds, else the tail of what it printed."""
    try:
        done = subprocess.run(argv, cwd=cwd, capture_output=True, text=True, timeout=PG_UPGRADE_TIMEOUT,
                              env={"PATH": "/usr/bin:/bin", "LC_ALL": "C", **env})
    except subprocess.TimeoutExpired:
        return f"{os.path.basename(argv[0])} did not finish within {PG_UPGRADE_TIMEOUT:.0f} s"
    except OSError as exc:
        return f"{os.path.basename(argv[0])} did not run: {exc.strerror}"
    if done.returncode == 0:
        return None
    return explain(done.stdout + done.stderr) or f"exit status {done.returncode}"


def explain(output: str) -> str:
    """What a failed pg_upgrade (or initdb) said, in one line: the check that failed, its
    explanation, and the first lines of the file it lists the problems in (the scratch
    directory holding that file is removed afterwards)."""
    lines = [ln.strip() for ln in output.splitlines() if ln.strip()]
    failed = next((i for i, ln in enumerate(lines) if ln.endswith("fatal")), None)
    if failed is None:
        return " / ".join(lines[-TAIL:])
    said = [lines[failed][:-len("fatal")].strip(" .")]
    listing = []
    for line in lines[failed + 1:]:
        if line.startswith("/") and line.endswith(".txt"):
            listing = _head(line)
        elif line != "Failure, exiting" and not line.startswith("A list of the problem"):
            said.append(line)
    return ": ".join([said[0], " ".join(said[1:])]) + (f" [{'; '.join(listing)}]" if listing else "")


def _head(path: str) -> List[str]:
    try:
        with open(path, encoding="utf-8", errors="replace") as fh:
            return [ln.strip() for ln in fh.read(4096).splitlines() if ln.strip()][:TAIL]
    except OSError:
        return []


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _pgpass_field(text: str) -> str:
    return text.replace("\\", "\\\\").replace(":", "\\:")


def _first_line(exc: BaseException) -> str:
    return (str(exc).strip().splitlines() or [type(exc).__name__])[0][:200]
