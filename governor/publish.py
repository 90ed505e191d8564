"""What a member tells others: its member key and leader position in etcd, and the NodeStatus the
API, the exporter and systemd's status line are answered from."""
from __future__ import annotations

import logging
from dataclasses import replace
from typing import TYPE_CHECKING, Optional

import psycopg2

from governor import __version__, bindir, clock, upgrade_probe, vouch
from governor.dcs import DCSError
from governor.ha import Decision, LocalState
from governor.postgres import datadir
from governor.postgres.server import ServerState
from governor.status import NodeStatus, ReplicaLag
from governor.supervisor import under_systemd

if TYPE_CHECKING:
    from governor.ports import NodeHost

log = logging.getLogger("governor")


def arrived(g: NodeHost, st: ServerState) -> None:
    """A PostgreSQL that was just started or re-pointed streams (or runs as primary): the status
    board says so at once, before the pass that follows publishes everything else."""
    g.board.set(replace(g.board.get(), running=True, role=st.role, streaming=bool(st.receiving_from),
                        upstream=st.receiving_from, timeline=st.timeline, lsn=st.lsn, replay_lsn=st.replay_lsn))


def member_data(g: NodeHost, local: LocalState) -> dict:
    if local.data == datadir.EMPTY:
        role = "uninitialized"
    else:
        role = local.role or ("stopped" if not local.running else "unknown")
    state = g.mem.activity or \
        ("running" if local.running and local.role else ("starting" if local.running else "stopped"))
    pending = bool(local.running and g.server_state and g.server_state.pending_restart)
    return {"role": role, "state": state, "conn_url": g.pg.conn_url, "api_url": g.config.restapi.api_url,
            "timeline": local.timeline, "lsn": local.lsn, "tags": g.config.tags,
            "pending_restart": pending, "version": __version__, "failsafe": failsafe_state(g),
            "pre_promote_refused": g.mem.pre_promote_refused(),
            "slots": g.mem.permanent_positions if g.mem.holds_lock else {}, "pg_version": g.pg_version,
            "pg_majors": list(bindir.installed_majors()), "upgrade_blockers": upgrade_blockers(g),
            "disk_free": upgrade_probe.free_beside(g.pg.data_dir),
            "scheduled_restart": g.mem.scheduled_restart[0] if g.mem.scheduled_restart else None}


def upgrade_blockers(g: NodeHost) -> list:
    """What in this member's configuration keeps `governorctl upgrade` from carrying out a major
    upgrade (the leader's checks name them)."""
    out = []
    if g.pg.bin_dir_set:
        out.append("postgresql.bin_dir is set in its files: remove it (governor takes the binaries matching the "
                   "data directory's PG_VERSION), or after the upgrade governor would not start")
    t = g.pg.major_templates
    if t is not None and not under_systemd():
        out.append("{major} moves the data directory at the upgrade, and outside systemd governor's parent "
                   "process fences the one it started with: run governor as its systemd unit")
    fixed = [key for key, value, template in (("data_dir", g.pg.data_dir, t and t.data_dir),
                                              ("config_dir", g.pg.config_dir, t and t.config_dir),
                                              ("systemd_unit", g.pg.systemd_unit, t and t.systemd_unit))
             if value and not template]
    if (g.pg.systemd_unit or g.pg.config_dir) and fixed:
        out.append(f"postgresql.{', '.join(fixed)} name(s) one version, and the distribution's layout puts each "
                   "version in its own place: write {major} there instead (postgresql@{major}-main, "
                   "/etc/postgresql/{major}/main, /var/lib/postgresql/{major}/main), then restart governor "
                   "keeping PostgreSQL running")
    return out


def publish(g: NodeHost, local: LocalState) -> None:
    try:
        g.dcs.touch_member(g.name, member_data(g, local))
        if g.mem.holds_lock and local.role == "primary" and local.lsn is not None \
                and local.lsn != g.mem.published_lsn:
            g.dcs.write_leader_lsn(local.lsn)
            g.mem.published_lsn = local.lsn
    except DCSError as exc:
        g.mem.dcs_failed = True
        g.once("dcs", str(exc), logging.WARNING)


def publish_status(g: NodeHost, local: LocalState, decision: Decision) -> None:
    """Hand what this loop saw to the API and the metrics exporter."""
    st = g.server_state
    if local.role == "primary" and g.mem.holds_lock:
        try:
            g.replicas = tuple(ReplicaLag(*row) for row in g.server.replication())
        except psycopg2.Error:
            g.replicas = ()
    else:
        g.replicas = ()
    g.archiver = None
    if local.running and local.role:
        try:
            g.archiver = g.server.archiver()
        except psycopg2.Error:
            pass
    # Asked again whenever the postmaster is another one: a restart on new binaries (a minor
    # release, a major upgrade) changes what runs.
    started = st.started_at if st else None
    if local.running and local.role and (g.pg_version is None or g.mem.pg_version_of != started):
        try:
            g.pg_version, g.mem.pg_version_of = g.server.version(), started
        except psycopg2.Error:
            pass
    member = member_data(g, local)
    g.board.set(NodeStatus(
        name=g.name, scope=g.config.etcd.scope, role=member["role"], state=member["state"],
        running=local.running, timeline=local.timeline, lsn=local.lsn,
        replay_lsn=st.replay_lsn if st else None, streaming=bool(st and st.receiving_from),
        upstream=st.receiving_from if st else None, holds_lock=g.mem.holds_lock,
        lock_deadline=g.mem.lock_deadline if g.mem.holds_lock else None,
        leader=g.cluster.leader.name if g.cluster and g.cluster.leader else None,
        dcs_reachable=g.cluster is not None, dcs_error=g.mem.dcs_error if g.cluster is None else None,
        etcd_split=bool(getattr(getattr(g.dcs, "clusters", None), "split", None)), tags=g.config.tags,
        etcd_cluster_id=getattr(getattr(g.dcs, "clusters", None), "current", None),
        decision=decision.case,
        message=decision.message, loop_finished=clock.monotonic(), loop_finished_wall=clock.wall(),
        cluster=g.cluster, replicas=g.replicas, pg_version=g.pg_version,
        paused=bool(g.cluster and g.cluster.paused), pending_restart=member["pending_restart"],
        synchronous_mode=g.config.synchronous_mode,
        started_at=st.started_at if st else None,
        api_url=g.config.restapi.api_url, conn_url=g.pg.conn_url, failsafe=failsafe_state(g),
        pre_promote_refused=member["pre_promote_refused"], scheduled_restart=member["scheduled_restart"],
        recovering_standby=bool(local.running and not local.role and g.mem.recovering_standby),
        archiver=g.archiver))


def failsafe_state(g: NodeHost) -> Optional[str]:
    if g.mem.failsafe_since is not None:
        return "primary on its members' promises: etcd cannot be used"
    promised = vouch.promised_to(g)
    return f"vouched for {promised}: not racing for the lock" if promised else None


def status_line(g: NodeHost) -> str:
    """One line for `systemctl status`."""
    st = g.board.get()
    if st.is_primary:
        streaming = sum(1 for r in st.replicas if r.state == "streaming")
        return f"primary, leader of {st.scope}: {streaming} of {len(st.replicas)} replicas streaming"
    if st.is_replica:
        lag = st.lag_bytes()
        return (f"replica of {st.leader or 'nobody'}, {'streaming' if st.streaming else 'not streaming'}"
                + (f", lag {lag} bytes" if lag is not None else ""))
    return f"{st.decision}: {st.message}"[:200]
