"""The executors of a major-version upgrade (upgrade_plan.py decides when each runs). Each step
ends by recording the next one in etcd's `upgrade` key with compare-and-swap: a step that could
not record its end runs again (each is written to be run twice).

The leader's directories: the old cluster stays at `data_dir` until the new one is made beside it
in `{data_dir}.upgrading` (pg_upgrade --link: hard links, so both must be on one file system);
a file `{data_dir}.upgrading.governor` says that directory is governor's to remove. At the
switch the old one becomes `{data_dir}.pg{OLD}` and the new one `data_dir`, so no configuration
file changes; the old directories stay until the operator removes them. A replica moves its old
data directory aside the same way and clones the new leader."""
from __future__ import annotations

import logging
import os
import shutil
import subprocess
import tempfile
import time
from dataclasses import replace
from typing import TYPE_CHECKING, List, Optional

import psycopg2

from governor import bindir, clock, majorpaths, upgrade_probe, upgrade_seed
from governor.actions.base import ActionFailed
from governor.actions.setup import set_up_stanza
from governor.actions.upgrade_layout import make_config_dir, paths, switch_binaries
from governor.cluster import UpgradeRecord
from governor.dcs import DCSError
from governor.ha import Decision, LocalState
from governor.settings import NAME_RE
from governor.shutdown import before_stop

if TYPE_CHECKING:
    from governor.ports import ActionHost

log = logging.getLogger("governor")
PG_UPGRADE_TIMEOUT = 3600.0


def record_of(g: ActionHost) -> UpgradeRecord:
    record = g.cluster.upgrade if g.cluster is not None else None
    if record is None:
        raise ActionFailed("the upgrade record is gone")
    return record


def _write(g: ActionHost, record: UpgradeRecord, step: str, **changes: object) -> UpgradeRecord:
    """The record at its next step, with compare-and-swap on the one this pass read."""
    new = replace(record, step=step, **changes)
    try:
        if not g.dcs.set_upgrade(new.as_dict(), record.index):
            raise ActionFailed("the upgrade record changed meanwhile (an abort?); reading it again")
    except DCSError as exc:
        raise ActionFailed(f"could not record the upgrade's step {step}: {exc}") from exc
    log.info("upgrade to PostgreSQL %s: %s%s", record.to, step, f" ({new.message})" if new.message != record.message
             else "")
    return new


def _write_and_read(g: ActionHost, record: UpgradeRecord, step: str) -> UpgradeRecord:
    """As _write, for a step that writes again in the same pass: with the key's new index."""
    _write(g, record, step)
    try:
        again = g.dcs.get_cluster().upgrade
    except DCSError as exc:
        raise ActionFailed(f"could not read the upgrade record back: {exc}") from exc
    if again is None or again.step != step:
        raise ActionFailed("the upgrade record changed meanwhile; reading it again")
    return again


def upgrade_stop(g: ActionHost, decision: Decision, local: LocalState) -> None:
    """Leader: learn what initdb needs to make a cluster pg_upgrade accepts (from the running
    server), then stop it cleanly (its standbys receive all WAL) under the lock."""
    record = record_of(g)
    initdb, facts = list(record.initdb), dict(record.facts)
    if not initdb:
        if not (local.running and local.role == "primary"):
            _write(g, record, "rollback", message="PostgreSQL was not running as primary when the upgrade began")
            return
        try:
            initdb, facts["user"] = upgrade_probe.initdb_options(upgrade_probe.querier(g.pg), record.to)
            g.server.checkpoint()
        except (psycopg2.Error, IndexError) as exc:
            raise ActionFailed(f"could not read the cluster's install user and locale: {exc}") from exc
    if local.running:
        before_stop(g, local.role)
        g.server.close()
        g.controller.stop("fast", timeout=max(30.0, g.pg.start_timeout))
        g.announce(replace(local, running=False, role=None), decision, None)
    facts["checkpoint"] = g.disk.controldata().checkpoint   # where the replicas must have stopped to link
    _write(g, record, "stopped", initdb=tuple(initdb), facts={**facts, "stopped_at": clock.wall()})


def upgrade_run(g: ActionHost, decision: Decision, local: LocalState) -> None:
    """Leader, PostgreSQL stopped: initdb of the new version beside the old cluster, then
    pg_upgrade --link into it. A failure rolls back (nothing of the old cluster was started)."""
    record = record_of(g)
    data, new, mark, _aside = paths(g, record)
    target_bin = bindir.installed(record.to)
    if target_bin is None:
        _write(g, record, "rollback", message=f"no binaries of PostgreSQL {record.to} on {g.name}")
        return
    user = record.facts.get("user")
    if not isinstance(user, str) or not NAME_RE.fullmatch(user):
        _write(g, record, "rollback", message="the upgrade record names no valid install user")
        return
    _remove_attempt(data, new, mark)
    if g.disk.controldata().state != "shut down":
        _shut_down_cleanly(g, data)
    os.makedirs(os.path.dirname(new), mode=0o755, exist_ok=True)   # /var/lib/postgresql/17
    open(mark, "w").close()
    failed = _run(g, [os.path.join(target_bin, "initdb"), "-D", new, *record.initdb], None, mark=mark)
    if failed:
        _write(g, record, "rollback", message=f"initdb of PostgreSQL {record.to} failed: {failed}")
        return
    work = tempfile.mkdtemp(prefix="governor-upgrade-")     # pg_upgrade's sockets: a short path
    try:
        env = {}
        if record.facts.get("user") == g.pg.superuser.username and g.pg.superuser.password:
            env["PGPASSFILE"] = os.path.join(work, "pgpass")
            with open(os.open(env["PGPASSFILE"], os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600), "w") as fh:
                fh.write(f"*:*:*:{_field(str(record.facts['user']))}:{_field(g.pg.superuser.password)}\n")
        argv = [os.path.join(target_bin, "pg_upgrade"), "--link", "-b", g.pg.bin_dir, "-B", target_bin, "-d", data,
                "-D", new, "-U", str(record.facts.get("user") or g.pg.superuser.username), "-s", work,
                "-p", str(upgrade_probe.free_port()), "-P", str(upgrade_probe.free_port())]
        if g.pg.config_dir:
            argv += ["-o", f"-c config_file={os.path.join(g.pg.config_dir, 'postgresql.conf')}"]
        started = clock.monotonic()
        failed = _run(g, argv, work, env, mark=mark)
        script = os.path.join(work, "update_extensions.sql")
        if not failed and os.path.exists(script):
            shutil.copy(script, f"{data}.update_extensions.sql")
    finally:
        shutil.rmtree(work, ignore_errors=True)
    if failed:
        _write(g, record, "rollback", message=f"pg_upgrade failed: {failed}")
        return
    facts = {**record.facts, "pg_upgrade_seconds": round(clock.monotonic() - started, 1),
             "seed": upgrade_seed.make(data, new, at=new if g.pg.major_templates else data)}
    _write(g, record, "upgraded", facts=facts)


def _run(g: ActionHost, argv: List[str], cwd: Optional[str], env: Optional[dict] = None,
         mark: Optional[str] = None) -> Optional[str]:
    """Run a long program, renewing the leader lock (and the watchdog) meanwhile; None when it
    succeeded, else what it said. Its PID goes into `mark`: a governor that restarts meanwhile
    (systemd kills only governor's own process) waits for it instead of starting another."""
    log.info("upgrade: running %s", " ".join(argv[:1] + [a for a in argv[1:] if not a.startswith("-c ")]))
    out = tempfile.TemporaryFile()
    with g.notify.keep_alive_while(os.path.basename(argv[0])):
        proc = subprocess.Popen(argv, cwd=cwd, stdout=out, stderr=subprocess.STDOUT,
                                env={"PATH": "/usr/bin:/bin", "LC_ALL": "C", **(env or {})})
        if mark:
            with open(mark, "w") as fh:
                fh.write(f"{proc.pid}\n")
        deadline, renew_every = clock.monotonic() + PG_UPGRADE_TIMEOUT, max(1.0, g.config.etcd.ttl / 3)
        while proc.poll() is None:
            if clock.monotonic() > deadline:
                proc.kill()
                proc.wait()
                return f"{os.path.basename(argv[0])} did not finish within {PG_UPGRADE_TIMEOUT:.0f} s"
            try:
                proc.wait(renew_every)
            except subprocess.TimeoutExpired:
                _renew(g)
    out.seek(0)
    text = out.read().decode("utf-8", "replace")
    return None if proc.returncode == 0 else (upgrade_probe.explain(text) or f"exit status {proc.returncode}")


def _shut_down_cleanly(g: ActionHost, data: str) -> None:
    """The old cluster was not shut down cleanly (a governor restarted in the middle of the step:
    its fence stopped the server pg_upgrade had started): crash recovery on a private socket, no
    TCP, then a clean stop, which pg_upgrade needs."""
    log.warning("upgrade: the old cluster was not shut down cleanly; recovering it (no TCP connections) first")
    work = tempfile.mkdtemp(prefix="governor-upgrade-")
    pg_ctl = os.path.join(g.pg.bin_dir, "pg_ctl")
    try:
        options = f"-c listen_addresses='' -c unix_socket_directories={work} -c archive_mode=off"
        start = [pg_ctl, "-D", data, "-w", "-t", "600", "-l", os.path.join(work, "log"), "-o", options, "start"]
        failed = _run(g, start, work) or _run(g, [pg_ctl, "-D", data, "-w", "-t", "600", "-m", "fast", "stop"], work)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    if failed:
        raise ActionFailed(f"could not shut the old cluster down cleanly: {failed}")


def _renew(g: ActionHost) -> None:
    try:
        g.dcs.renew_leader(g.name)
    except DCSError as exc:
        log.warning("upgrade: could not renew the leader lock while waiting: %s", exc)


def upgrade_start(g: ActionHost, decision: Decision, local: LocalState) -> None:
    """Leader: record `starting` (from here on only forward), put the new cluster in the old
    one's place, start it under the lock, and tell etcd its system identifier."""
    record = record_of(g)
    if record.step == "upgraded":
        record = _write_and_read(g, record, "starting")
    data, new, mark, aside = paths(g, record)
    if g.pg.major_templates is not None:
        if os.path.exists(mark) and bindir.data_major(new) == record.to:
            make_config_dir(g, record)
            majorpaths.mark_moved(aside, record.to)
            os.remove(mark)     # from now on the settings' {major} stands for the new version here
            log.info("upgrade: the PostgreSQL %s cluster is %s; the old one is kept at %s", record.to, new, aside)
        data = new
    elif bindir.data_major(data) == record.source and os.path.isdir(new) and os.path.exists(mark):
        if os.path.lexists(aside):
            raise ActionFailed(f"{aside} exists already: move it away, the old cluster goes there")
        os.rename(data, aside)
        os.rename(new, data)
        os.remove(mark)
        log.info("upgrade: the PostgreSQL %s cluster is now %s; the old one is kept at %s", record.to, data, aside)
    if bindir.data_major(data) != record.to:
        raise ActionFailed(f"{data} is not the PostgreSQL {record.to} cluster pg_upgrade made: look at it by hand")
    switch_binaries(g, record.to)
    g.data_replaced()
    if not g.controller.is_running():
        g.prepare_files(None)
        g.controller.start(max(g.pg.start_timeout, 30.0))
    sysid = g.disk.controldata().sysid
    if not sysid:
        raise ActionFailed("the new cluster's system identifier is unreadable")
    try:
        if g.cluster is not None and g.cluster.initialize != sysid and \
                not g.dcs.replace_initialize(record.sysid, sysid):
            raise ActionFailed("etcd's initialize key no longer holds the old system identifier")
        when = time.strftime("%Y-%m-%dT%H:%M:%S%z", time.localtime(clock.wall()))
        g.dcs.replace_history([{"time": when, "leader": g.name, "upgrade": [record.source, record.to],
                                "reason": f"major upgrade from PostgreSQL {record.source} to {record.to} (new system "
                                          f"identifier {sysid}; the old history went with the old system)"}])
    except DCSError as exc:
        raise ActionFailed(f"could not record the new system identifier: {exc}") from exc
    g.mem.published_lsn = None
    _after_start(g, record)
    _write(g, record, "started", facts={**record.facts, "new_sysid": sysid, "started": clock.wall()})


def _after_start(g: ActionHost, record: UpgradeRecord) -> None:
    """What pg_upgrade leaves to do once the new cluster runs: the extension updates it wrote a
    script for (run now: ALTER EXTENSION ... UPDATE is quick), and, from a source before 18
    (which carries statistics over), the planner's statistics rebuilt in stages in the background
    (vacuumdb --analyze-in-stages: minimal ones within seconds, complete ones later); and with
    pgBackRest managed, its stanza upgraded to the new cluster (archive-push refuses the new
    system identifier until then) in the background."""
    if g.pg.archive.pgbackrest is not None:
        set_up_stanza(g.pg, "stanza-upgrade")
    data = g.pg.data_dir
    connect = ["-h", g.pg.socket_dir, "-p", str(g.pg.port), "-U", g.pg.superuser.username]
    env = {"PGPASSFILE": g.pg.pgpass}
    script = f"{data}.update_extensions.sql"
    if os.path.exists(script):
        failed = _run(g, [os.path.join(g.pg.bin_dir, "psql"), "-X", "-q", *connect, "-d", "postgres",
                          "-v", "ON_ERROR_STOP=1", "-f", script], None, env)
        if failed:
            log.warning("upgrade: the extension updates pg_upgrade wrote (%s) failed: %s; run them by hand", script,
                        failed)
        else:
            os.remove(script)
            log.info("upgrade: extensions updated (pg_upgrade's update_extensions.sql)")
    if record.source >= 18:
        return
    output = f"{data}.analyze.log"
    with open(output, "ab") as out:
        subprocess.Popen([os.path.join(g.pg.bin_dir, "vacuumdb"), "--all", "--analyze-in-stages", *connect],
                         stdout=out, stderr=subprocess.STDOUT, start_new_session=True,
                         env={"PATH": "/usr/bin:/bin", "LC_ALL": "C", **env})
    log.info("upgrade: rebuilding the planner's statistics in the background (vacuumdb --analyze-in-stages, "
             "log in %s)", output)


def upgrade_done(g: ActionHost, decision: Decision, local: LocalState) -> None:
    record = record_of(g)
    began = record.started_at or clock.wall()
    _write(g, record, "done", message=f"every member runs PostgreSQL {record.to} ({clock.wall() - began:.0f} s); the "
                                      f"old data directories are kept as *.pg{record.source}")


def upgrade_rollback(g: ActionHost, decision: Decision, local: LocalState) -> None:
    """Leader, before `starting`: remove the new cluster governor made and give the old one back
    its pg_control (pg_upgrade --link renames it once it links); the old version starts again
    in the next pass (start_lock_holder)."""
    record = record_of(g)
    data, new, mark, _aside = paths(g, record)
    _remove_attempt(data, new, mark)
    switch_binaries(g, record.source)
    _write(g, record, "rolled_back")


def _remove_attempt(data: str, new: str, mark: str) -> None:
    running = _still_running(mark)
    if running:
        raise ActionFailed(f"{running} from before governor restarted still runs: waiting for it to end")
    if os.path.isdir(new):
        if not os.path.exists(mark):
            raise ActionFailed(f"{new} exists and governor did not make it: move it away")
        shutil.rmtree(new)
    if os.path.exists(mark):
        os.remove(mark)
    upgrade_seed.remove(data)
    upgrade_seed.remove(new)
    control = os.path.join(data, "global", "pg_control")
    if not os.path.exists(control) and os.path.exists(control + ".old"):
        os.rename(control + ".old", control)
        log.info("upgrade: restored %s", control)


def _still_running(mark: str) -> Optional[str]:
    """'pg_upgrade (pid N)' when the program whose PID `mark` holds still runs."""
    try:
        with open(mark) as fh:
            pid = int(fh.read(20).strip() or 0)
        with open(f"/proc/{pid}/cmdline", "rb") as fh:
            program = os.path.basename(fh.read().split(b"\0")[0].decode(errors="replace"))
    except (OSError, ValueError):
        return None
    return f"{program} (pid {pid})" if pid and program in ("pg_upgrade", "initdb") else None


def stop_replica(g: ActionHost, record: UpgradeRecord, local: LocalState) -> tuple:
    """A replica about to replace its old data directory: there must be room to keep it aside;
    its PostgreSQL stops. The paths (data, new, mark, aside)."""
    data, new, mark, aside = paths(g, record)
    if aside != data and os.path.lexists(aside):
        raise ActionFailed(f"{aside} exists already: move it away, this member's old data directory goes there")
    if local.running:
        g.server.close()
        g.controller.stop("fast", timeout=max(30.0, g.pg.start_timeout))
    return data, new, mark, aside


def upgrade_set_aside(g: ActionHost, decision: Decision, local: LocalState) -> None:
    """Replica of a leader that runs the new version: stop, move the old data directory aside
    (kept, never removed), and use the new binaries; the clone that follows copies the leader."""
    record = record_of(g)
    data, new, _mark, aside = stop_replica(g, record, local)
    if g.pg.major_templates is not None:     # the old one stays in its place, the new one in its own
        os.makedirs(new, mode=0o700, exist_ok=True)
        make_config_dir(g, record)
        majorpaths.mark_moved(data, record.to)
    else:
        os.rename(data, aside)
        os.mkdir(data, 0o700)
    switch_binaries(g, record.to)
    g.data_replaced()
    g.announce(replace(local, running=False, role=None), decision, None)
    log.info("upgrade: this member's PostgreSQL %s data directory is kept at %s; cloning %s", record.source, aside,
             decision.leader)


def _field(text: str) -> str:
    return text.replace("\\", "\\\\").replace(":", "\\:")
