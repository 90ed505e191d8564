"""Creating this member's data: bootstrap a new cluster, offer existing data, clone the leader, start afresh."""
from __future__ import annotations

import errno
import logging
import threading
from typing import TYPE_CHECKING

import psycopg2

from governor import clock, publish
from governor.actions.base import ActionFailed
from governor.dcs import DCSError
from governor.ha import BOOTSTRAP_ATTEMPTS, Decision, LocalState
from governor.observe import observe_local
from governor.postgres import bootstrap as pgbootstrap
from governor.postgres import datadir
from governor.postgres.controller import ControllerError
from governor.settings import PostgresConfig

if TYPE_CHECKING:
    from governor.ports import ActionHost

log = logging.getLogger("governor")


def bootstrap(g: ActionHost, decision: Decision, local: LocalState) -> None:
    if not g.watchdog.keepalive(clock.monotonic() + g.config.etcd.ttl, max(0.5, g.fence.margin / 4)):
        raise ActionFailed(f"watchdog.mode is required and {g.config.watchdog.device} cannot be armed: "
                           "not bootstrapping a cluster this member could not lead")
    g.watchdog.disarm()
    if not g.dcs.claim_initialize(""):
        raise ActionFailed("another member won the bootstrap race")
    if decision.remote is not None:
        return bootstrap_standby(g, decision)
    restore = g.pg.restore
    if restore is None:
        log.info("bootstrap: won the race; running initdb in %s", g.pg.data_dir)
    else:
        log.info("bootstrap: won the race; restoring the latest backup of pgBackRest stanza %s into %s, to "
                 "recover %s", restore.pgbackrest.stanza, g.pg.data_dir,
                 f"up to {restore.target_time}" if restore.target_time else "to the end of its archive")
    g.mem.activity = "bootstrapping"
    try:
        with g.notify.keep_alive_while("initdb" if restore is None else "restoring"):
            if restore is None:
                g.disk.initdb()
            else:
                g.disk.pgbackrest_restore_cluster()
                g.disk.write_pg_hba()
        g.data_replaced()
        g.write_conf(standby_of=None)
        g.disk.write_pgpass()
        sent = clock.monotonic()
        if not g.dcs.acquire_leader(g.name):
            raise ActionFailed("a leader lock exists although the cluster was never initialized; "
                               "remove the stale keys of this scope")
        g.lock.taken(sent)
        g.mem.settle(clock.monotonic())      # the next pass (slots for the members already waiting) at once
        if restore is None:
            g.controller.start(g.pg.start_timeout)
        else:
            g.controller.start(g.pg.start_timeout, wait=False)
            recover_under_lock(g)
        g.server.create_role(g.pg.replication.username, g.pg.replication.password, replication=True)
        sysid = g.server.state().sysid
        # The others clone the moment `initialize` holds the system identifier (it wakes them):
        # by then our member key must already say that we run as the primary.
        publish.publish(g, observe_local(g))
        g.dcs.set_initialize(sysid)
        log.info("bootstrap: cluster initialized with system identifier %s; this member is the leader", sysid)
        g.mem.bootstrap_failures = 0
        if g.pg.archive.pgbackrest is not None:
            set_up_stanza(g.pg)
    except Exception:
        g.mem.bootstrap_failures += 1
        undo_bootstrap(g)
        raise


def bootstrap_standby(g: ActionHost, decision: Decision) -> None:
    """A standby cluster's first member: a copy of the primary cluster (pg_basebackup), started as
    its standby under this cluster's lock; the cluster takes the primary cluster's system
    identifier. The lock arms no fence: nothing here is writable."""
    host, port = decision.remote[0], decision.remote[1]
    log.info("bootstrap: won the race; this is a standby cluster: cloning the primary cluster at %s:%s into %s "
             "with pg_basebackup", host, port, g.pg.data_dir)
    g.mem.activity = "bootstrapping"
    try:
        with g.notify.keep_alive_while(f"cloning the primary cluster at {host}:{port}"):
            g.disk.basebackup(host, port)
        g.data_replaced()
        sent = clock.monotonic()
        if not g.dcs.acquire_leader(g.name):
            raise ActionFailed("a leader lock exists although the cluster was never initialized; "
                               "remove the stale keys of this scope")
        g.lock.taken(sent, fence=False)
        g.start_postgres(standby_of=decision.remote)
        sysid = g.disk.controldata().sysid
        publish.publish(g, observe_local(g))
        g.dcs.set_initialize(sysid)
        log.info("bootstrap: standby cluster initialized with the primary cluster's system identifier %s; this "
                 "member is the standby leader", sysid)
        g.mem.bootstrap_failures = 0
    except Exception:
        g.mem.bootstrap_failures += 1
        undo_bootstrap(g)
        raise


def undo_bootstrap(g: ActionHost) -> None:
    try:
        g.controller.stop("immediate")
    except ControllerError as exc:
        log.error("bootstrap: could not stop PostgreSQL: %s", exc)
    if g.mem.holds_lock:
        g.lock.give_up()
    if g.disk.exists() and g.disk.kind() != datadir.EMPTY:
        # initdb may have failed half-way too: whatever it left is ours and must go, or it
        # would be offered as the cluster's data on the next pass (initialize_from_existing).
        try:
            try:
                moved = g.disk.move_aside()
            except OSError as exc:
                if exc.errno not in (errno.EBUSY, errno.EXDEV):
                    raise
                # A mount point cannot be renamed. It was empty when this attempt began, so
                # everything in it is what this attempt created.
                g.disk.empty()
                moved = "nowhere (a mount point): emptied it instead"
        except OSError as exc:
            log.error("bootstrap failed and the half-made data directory %s could not be moved aside (%s); "
                      "keeping the bootstrap claim so it is never adopted: remove the directory, then run "
                      "governorctl remove for this scope", g.pg.data_dir, exc)
            return
        log.error("bootstrap failed (attempt %s of %s): moved the half-made data directory to %s",
                  g.mem.bootstrap_failures, BOOTSTRAP_ATTEMPTS, moved)
    try:
        g.dcs.cancel_initialize()
    except DCSError as exc:
        log.error("bootstrap: could not cancel the initialize claim: %s", exc)


def claim_initialize(g: ActionHost, decision: Decision, local: LocalState) -> None:
    if not local.sysid:
        raise ActionFailed("cannot read the system identifier of the existing data directory")
    if not g.dcs.claim_initialize(local.sysid):
        raise ActionFailed("another member initialized the cluster first")
    log.info("cluster initialized from this member's existing data (system identifier %s)", local.sysid)


def clone(g: ActionHost, decision: Decision, local: LocalState) -> None:
    """pg_basebackup from the leader, or from the replica tagged clonefrom the decision names;
    either way the new standby then streams from the leader."""
    address = g.leader_address(decision.leader)
    if address is None:
        raise ActionFailed(f"leader {decision.leader} has published no address")
    source = decision.source or decision.leader
    copy_from = g.leader_address(source) if decision.source else address
    if copy_from is None:
        raise ActionFailed(f"{source} has published no address")
    g.mem.activity = "creating replica"
    publish.publish(g, local)
    methods = g.pg.archive.create_replica_methods
    for method in methods:
        try:
            if method == "pgbackrest":
                log.info("creating replica %s from the pgBackRest repository (stanza %s)", g.pg.data_dir,
                         g.pg.archive.pgbackrest.stanza if g.pg.archive.pgbackrest else "?")
                with g.notify.keep_alive_while("restoring from pgBackRest"):
                    g.disk.pgbackrest_restore()
                restored = g.disk.controldata().sysid
                if g.cluster is not None and restored != g.cluster.initialize:
                    raise pgbootstrap.BootstrapError(
                        f"the repository's backup is of another cluster (system identifier {restored}, this "
                        f"cluster has {g.cluster.initialize}): does stanza {g.pg.archive.pgbackrest.stanza} "
                        "belong to another cluster?")
            else:
                log.info("cloning %s from %s at %s:%s with pg_basebackup", g.pg.data_dir, source, *copy_from)
                with g.notify.keep_alive_while(f"cloning {source} with pg_basebackup"):
                    try:
                        g.disk.basebackup(*copy_from)
                    except pgbootstrap.BootstrapError:
                        g.mem.clone_failed_from = decision.source    # the next attempt copies from another
                        raise
            break
        except pgbootstrap.BootstrapError as exc:
            # What a failed method left behind (the directory was empty: clone_* cases) must
            # not be taken for a data directory.
            if g.disk.exists():
                g.disk.empty()
            if method == methods[-1]:
                raise
            log.warning("creating the replica with %s failed (%s); trying %s", method, exc,
                        methods[methods.index(method) + 1])
    g.mem.clone_failed_from = None
    g.data_replaced()
    g.start_postgres(standby_of=address)
    log.info("clone finished (%s): streaming from %s", method, decision.leader)


def reinitialize(g: ActionHost, decision: Decision, local: LocalState) -> None:
    g.server.close()
    g.controller.stop("immediate")
    g.disk.empty()
    g.data_replaced()
    g.mem.sysid_cache = None
    log.info("reinitialize: %s removed; the next loop clones %s", g.pg.data_dir, decision.leader)


def set_up_stanza(pg: PostgresConfig, command: str = "stanza-create") -> None:
    """pgBackRest's stanza for the new cluster (stanza-upgrade: for the cluster a major upgrade
    made), in the background: the first backup needs it, and archive_command fails until it
    matches the cluster (the archiver retries). An error is logged with pgBackRest's own words
    and leaves the cluster running."""
    def run() -> None:
        try:
            log.info("%s", pgbootstrap.pgbackrest_stanza(pg, command=command))
        except pgbootstrap.BootstrapError as exc:
            log.error("pgBackRest: %s; WAL is not archived until that is fixed (then run pgbackrest "
                      "--stanza=%s %s as postgres)", exc, pg.archive.pgbackrest.stanza
                      if pg.archive.pgbackrest else "?", command)
    threading.Thread(target=run, name="pgbackrest-stanza", daemon=True).start()


# What pgBackRest's restore wrote into postgresql.auto.conf for the recovery: it would override
# governor's settings (the new cluster's own restore_command) if left.
RECOVERY_SETTINGS = ("restore_command", "recovery_target", "recovery_target_time", "recovery_target_lsn",
                     "recovery_target_xid", "recovery_target_name", "recovery_target_inclusive",
                     "recovery_target_action", "recovery_target_timeline")


def recover_under_lock(g: ActionHost) -> None:
    """A restored backup recovers (replays the source's archive) under the lock this member took
    before starting it, renewed every loop_wait, until PostgreSQL promotes itself at its target;
    nothing is writable before. A recovery that stops PostgreSQL (a target the archive does not
    reach) fails the bootstrap."""
    with g.notify.keep_alive_while("recovering the restored backup"):
        while True:
            try:
                if not g.server.query("SELECT pg_is_in_recovery()")[0][0]:
                    break
            except psycopg2.Error:
                pass   # not consistent yet
            if g.stopping.is_set():
                raise ActionFailed("governor is stopping: the recovery of the restored backup is abandoned")
            if not g.controller.is_running():
                raise ActionFailed("PostgreSQL stopped while recovering the restored backup (is "
                                   "recovery_target_time within the archive?); see PostgreSQL's log")
            clock.sleep(min(g.config.loop_wait, 1.0))
            sent = clock.monotonic()
            if not g.dcs.renew_leader(g.name):
                raise ActionFailed("lost the leader lock while recovering the restored backup")
            g.lock.taken(sent)
    for name in RECOVERY_SETTINGS:
        g.server.query(f"ALTER SYSTEM RESET {name}")
    g.server.query("SELECT pg_reload_conf()")
    log.info("bootstrap: the restored backup recovered and promoted itself; pgBackRest's recovery settings removed")
