"""Creating a data directory: initdb for a new cluster, pg_basebackup for a new replica."""
from __future__ import annotations

import errno
import logging
import os
import re
import subprocess
import tempfile
import time
from typing import Dict, List, Optional

import psycopg2

from governor import repltls
from governor.config import PostgresConfig
from governor.postgres import datadir
from governor.postgres.controller import child_environment

log = logging.getLogger(__name__)


class BootstrapError(Exception):
    pass


def _run(cmd: list, env: dict, timeout: float, what: str) -> None:
    log.debug("running %s", " ".join(cmd))
    try:
        result = subprocess.run(cmd, env=env, stdin=subprocess.DEVNULL, capture_output=True, text=True,
                                timeout=timeout, check=False)
    except subprocess.TimeoutExpired as exc:
        raise BootstrapError(f"{what} did not finish within {timeout:.0f}s") from exc
    if result.returncode != 0:
        detail = (result.stderr or result.stdout).strip().splitlines()
        raise BootstrapError(f"{what} failed (exit code {result.returncode}): {' / '.join(detail[-3:])}")


def initdb(cfg: PostgresConfig) -> None:
    """Run initdb; the superuser password, if any, passes through a 0600 file, never argv."""
    cmd = [os.path.join(cfg.bin_dir, "initdb"), "-D", cfg.data_dir, "-U", cfg.superuser.username,
           "--auth-local=peer", "--auth-host=scram-sha-256", *cfg.initdb]
    pwfile = None
    try:
        if cfg.superuser.password:
            fd, pwfile = tempfile.mkstemp(prefix="governor-pw-", dir=os.path.dirname(cfg.data_dir))
            with os.fdopen(fd, "w") as fh:
                fh.write(cfg.superuser.password + "\n")
            cmd.append(f"--pwfile={pwfile}")
        _run(cmd, child_environment({"LC_ALL": os.environ.get("LC_ALL", "C.UTF-8")}), 300, "initdb")
    finally:
        if pwfile:
            os.unlink(pwfile)
    datadir.write_pg_hba(cfg)


def basebackup(cfg: PostgresConfig, host: str, port: int, timeout: float = 3600) -> None:
    """Clone the leader with pg_basebackup -X stream; the password comes from the passfile."""
    datadir.write_pgpass(cfg)
    cmd = [os.path.join(cfg.bin_dir, "pg_basebackup"), "-D", cfg.data_dir, "-X", "stream",
           "-c", "fast", "-h", host, "-p", str(port), "-U", cfg.replication.username, "-w"]
    env = child_environment({"PGPASSFILE": cfg.pgpass, "PGAPPNAME": cfg.name, "PGCONNECT_TIMEOUT": "5",
                             **repltls.environment(cfg.replication_ssl)})
    _run(cmd, env, timeout, f"pg_basebackup from {host}:{port}")


def pgbackrest_restore(cfg: PostgresConfig, timeout: float = 86400) -> None:
    """Restore the repository's latest backup into the empty data directory, as a standby: it
    replays the archive, then streams the rest from the leader."""
    backrest = cfg.archive.pgbackrest
    if backrest is None:
        raise BootstrapError("postgresql.archive.pgbackrest is not configured")
    _run(backrest.argv(cfg.data_dir, "restore", "--type=standby"), child_environment({}), timeout,
         "pgbackrest restore")


def pgbackrest_restore_cluster(cfg: PostgresConfig, timeout: float = 86400) -> None:
    """postgresql.bootstrap with pgbackrest: restore the source stanza's latest backup for a new
    cluster, set to recover to recovery_target_time (then promote) or to the end of the archive."""
    source = cfg.restore
    if source is None:
        raise BootstrapError("postgresql.bootstrap names no pgBackRest source")
    target = ["--type=time", f"--target={source.target_time}", "--target-action=promote"] if source.target_time \
        else ["--type=default"]
    _run(source.pgbackrest.argv(cfg.data_dir, "restore", *target), child_environment({}), timeout,
         "pgbackrest restore")


def pgbackrest_stanza(cfg: PostgresConfig, timeout: float = 300, command: str = "stanza-create") -> str:
    """stanza-create (nothing changes when the stanza exists and matches) or, after a major
    upgrade, stanza-upgrade (the stanza takes the new version and system identifier), then
    check: archiving works and the repository is writable. Returns what was done; raises
    BootstrapError."""
    backrest = cfg.archive.pgbackrest
    if backrest is None:
        raise BootstrapError("postgresql.archive.pgbackrest is not configured")
    local = (f"--pg1-port={cfg.port}", f"--pg1-socket-path={cfg.socket_dir}", f"--pg1-user={cfg.superuser.username}")
    env = child_environment({})
    _run(backrest.argv(cfg.data_dir, command, *local), env, timeout, f"pgbackrest {command}")
    _run(backrest.argv(cfg.data_dir, "check", *local), env, timeout, "pgbackrest check")
    done = "created" if command == "stanza-create" else "upgraded"
    return f"pgBackRest stanza {backrest.stanza} {done} and checked: WAL archiving works"


_config_file_flag: Dict[str, bool] = {}
_SERVER_FAILURE = re.compile(r"\b(FATAL|PANIC):  ")


def _rewind_restores(cfg: PostgresConfig) -> List[str]:
    """pg_rewind's options to fetch WAL the target no longer has from the archive: only with a
    restore_command, which pg_rewind reads from the target's configuration (where the
    distribution keeps it outside the data directory, only pg_rewind 15+ can be told where)."""
    if cfg.archive.commands(cfg.data_dir)[1] is None:
        return []
    if cfg.config_dir is None:
        return ["--restore-target-wal"]
    binary = os.path.join(cfg.bin_dir, "pg_rewind")
    if binary not in _config_file_flag:
        try:
            usage = subprocess.run([binary, "--help"], capture_output=True, text=True, timeout=10).stdout
        except (OSError, subprocess.TimeoutExpired):
            usage = ""
        _config_file_flag[binary] = "--config-file" in usage
    if not _config_file_flag[binary]:
        return []
    return ["--restore-target-wal", f"--config-file={os.path.join(cfg.config_dir, 'postgresql.conf')}"]


def rewind(cfg: PostgresConfig, host: str, port: int, timeout: float = 3600) -> str:
    """pg_rewind the stopped local data directory onto the leader's timeline.

    Returns what happened in a few words; raises BootstrapError.
    A target that was not shut down cleanly is first recovered by pg_rewind itself (PostgreSQL 13+).
    """
    datadir.write_pgpass(cfg)
    source = (f"host={host} port={port} user={cfg.superuser.username} dbname=postgres "
              f"passfile={cfg.pgpass} connect_timeout=5 application_name={cfg.name}-rewind "
              + " ".join(f"{k}={datadir.conninfo_quote(v)}" for k, v in cfg.replication_ssl.items()))
    cmd = [os.path.join(cfg.bin_dir, "pg_rewind"), "--target-pgdata", cfg.data_dir, "--source-server", source,
           *_rewind_restores(cfg)]
    log.debug("running %s", " ".join(cmd))
    try:
        result = subprocess.run(cmd, env=child_environment({"LC_ALL": "C", "PGPASSFILE": cfg.pgpass}),
                                stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=timeout,
                                check=False)
    except subprocess.TimeoutExpired as exc:
        raise BootstrapError(f"pg_rewind did not finish within {timeout:.0f}s") from exc
    output = result.stderr + result.stdout
    lines = [line for line in output.splitlines() if line.startswith("pg_rewind:")]
    if result.returncode != 0:
        # The target's own crash recovery (postgres --single) writes why it failed to the same stream.
        server = [line for line in output.splitlines() if _SERVER_FAILURE.search(line)]
        raise BootstrapError(f"pg_rewind failed (exit code {result.returncode}): "
                             + " / ".join(lines[-3:] + server[-2:]))
    if "no rewind required" in output:
        return "no rewind required, the timelines have not diverged"
    return "rewound onto the leader's timeline"


def source_refuses(cfg: PostgresConfig, host: str, port: int) -> Optional[str]:
    """Why pg_rewind's source would refuse a connection now (unreachable, not accepting
    connections, authentication), or None when it accepts one: a rewind that failed while its
    source answers failed because of this data directory."""
    try:
        conn = psycopg2.connect(host=host, port=port, dbname="postgres", user=cfg.superuser.username,
                                password=cfg.superuser.password, connect_timeout=3,
                                application_name=f"{cfg.name}-rewind-check", **cfg.replication_ssl)
    except psycopg2.Error as exc:
        return " ".join(str(exc).split())[:300] or type(exc).__name__
    conn.close()
    return None


def move_aside(data_dir: str) -> str:
    """Rename a data directory governor itself just created and failed to finish; never deletes.
    The name is unique (two failures in one second must not collide: a half-made directory left in
    place would look like an existing cluster to adopt) and the rename is atomic."""
    stamp = time.strftime("%Y%m%d%H%M%S")
    for attempt in range(1000):
        target = f"{data_dir}.failed-{stamp}" + (f"-{attempt}" if attempt else "")
        if os.path.lexists(target):
            continue
        try:
            os.rename(data_dir, target)
        except OSError as exc:
            if exc.errno in (errno.EEXIST, errno.ENOTEMPTY):
                continue
            raise
        return target
    raise OSError(errno.EEXIST, f"no free name for {data_dir}.failed-{stamp}-N")
