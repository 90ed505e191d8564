"""Observing: what etcd holds (a Cluster snapshot) and what the local PostgreSQL is (a LocalState).

The only I/O before decide(): a range read from etcd, a few SQL queries or pg_controldata, and,
during a leader race, the other members' /status answers and their servers' own word on whether
they take writes.
"""
from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Dict, Optional, Tuple

import psycopg2

from governor import bindir, clock, standby
from governor.cluster import Cluster, parse_conn_url
from governor.dcs import DCSError
from governor.ha import LocalState
from governor.memory import timer
from governor.peers import peer_status  # noqa: F401 - re-exported (tests)
from governor.postgres import datadir
from governor.postgres.server import ServerState

if TYPE_CHECKING:
    from governor.ports import NodeHost

log = logging.getLogger("governor")


def observe_dcs(g: NodeHost) -> Optional[Cluster]:
    """The scope's keys as one snapshot; None when etcd cannot be read (logged once per change)."""
    try:
        cluster = g.dcs.get_cluster()
    except DCSError as exc:
        g.mem.dcs_error = str(exc)
        g.once("dcs", str(exc), logging.ERROR if "different etcd clusters" in str(exc) else logging.WARNING)
        return None
    g.mem.dcs_error = None
    g.once("dcs", f"etcd reachable ({g.dcs.describe()})")
    g.once("dcs-values", "values in etcd that do not parse, taken as unknown: " + "; ".join(cluster.problems)
           if cluster.problems else None, logging.WARNING)
    return cluster


def observe_local(g: NodeHost) -> LocalState:
    kind = g.disk.kind()
    if kind != datadir.POSTGRES:
        g.mem.sysid_cache = g.server_state = None
        g.mem.rewind_pending = g.mem.rewind_failed = False
        return LocalState(**_local_base(g, kind))
    running = g.controller.is_running()
    if running:
        try:
            # Replaced only once read: the API answers from it meanwhile (vouch.answer), and a
            # read in progress says nothing new about this server.
            st = g.server_state = g.server.state()
            g.mem.recovering_standby = False
            g.once("pg", f"PostgreSQL running as {st.role}")
            _new_sessions(g)
            timeline = st.timeline
            not_streaming_for = None
            if st.role == "primary":
                g.mem.rewind_pending = True
            else:
                timeline = _replica_timeline(g, st)
                not_streaming_for = _not_streaming_for(g, st)
            return LocalState(**_local_base(g, kind), sysid=st.sysid, running=True, role=st.role,
                              timeline=timeline, lsn=st.lsn, not_streaming_for=not_streaming_for,
                              remote_timeline=_remote_timeline(g, st, not_streaming_for))
        except psycopg2.Error as exc:
            g.server_state = None
            g.once("pg", f"PostgreSQL is running but does not answer: {str(exc).strip()}", logging.WARNING)
            control = _controldata(g)
            # In archive recovery (standby mode), it becomes writable only if governor promotes it.
            g.mem.recovering_standby = control.state == "in archive recovery"
            return LocalState(**_local_base(g, kind), sysid=control.sysid, running=True)
    g.mem.recovering_standby = False
    g.server_state = None
    g.server.close()
    g.once("pg", "PostgreSQL is not running")
    control = _controldata(g)
    if datadir.was_primary(control):
        g.mem.rewind_pending = True
    return LocalState(**_local_base(g, kind), sysid=control.sysid)


def _new_sessions(g: NodeHost) -> None:
    """Said once when PostgreSQL answers on governor's session but starts no new one (a frozen
    postmaster: clients hang), and once when it does again."""
    refused = g.server.refuses_new_connections()
    was = g.mem.refusing_sessions
    g.mem.refusing_sessions = refused is not None
    if refused is not None:
        pid = g.controller.postmaster_pid()
        g.once("pg-sessions", f"PostgreSQL answers on governor's open session but starts no new one ({refused}): "
               f"clients cannot connect; its postmaster (PID {pid}) may be frozen (SIGSTOP, stuck in the kernel) "
               "or out of connection slots", logging.ERROR)
    elif was:
        g.once("pg-sessions", "PostgreSQL starts new sessions again", logging.WARNING)


def _replica_timeline(g: NodeHost, st: ServerState) -> Optional[int]:
    """The timeline a replica is on. PostgreSQL tells it while the WAL receiver runs; without
    one, only the last restartpoint's timeline is left, which lags behind a timeline switch
    this replica has long followed. So the highest timeline seen streaming is remembered
    (until the data directory is replaced), and the larger of the two is the answer."""
    if st.receiving_from and st.timeline:
        g.mem.streamed_tli = max(g.mem.streamed_tli or 0, st.timeline)
    known = [t for t in (st.timeline, g.mem.streamed_tli) if t]
    return max(known) if known else None


def _not_streaming_for(g: NodeHost, st: ServerState) -> Optional[float]:
    """Seconds this replica has gone without streaming while another member leads, or while it
    leads a standby cluster (None while it streams or nobody else leads): decide() judges
    divergence from it."""
    leader = g.cluster.leader if g.cluster is not None else None
    waiting = not st.receiving_from and leader is not None and (
        leader.name != g.name or standby.of(g.cluster)[1] is not None)
    # Time without streaming from the old leader is no time without streaming from a new one: right
    # after a failover this replica has not even been pointed at the new leader yet.
    leader_name = leader.name if leader is not None else None
    if leader_name != g.mem.not_streaming_from:
        g.mem.not_streaming_since, g.mem.not_streaming_from = None, leader_name
    g.mem.not_streaming_since, seconds = timer(g.mem.not_streaming_since, waiting, clock.monotonic())
    return seconds


def _remote_timeline(g: NodeHost, st: ServerState, not_streaming_for: Optional[float]) -> Optional[int]:
    """A standby leader that has not streamed for a while asks the primary cluster for its timeline
    (decide() judges divergence from it); an answer from another system is no answer."""
    if not_streaming_for is None or not_streaming_for < standby.DIVERGED_AFTER or g.cluster is None \
            or g.cluster.leader is None or g.cluster.leader.name != g.name:
        return None
    settings = standby.of(g.cluster)[1]
    if settings is None:
        return None
    answer = g.peers.identify(g.pg, settings.host, settings.port)
    return answer[1] if answer is not None and answer[0] == st.sysid else None


def _local_base(g: NodeHost, kind: str) -> dict:
    cfg, pg, mem = g.config, g.pg, g.mem
    return dict(name=g.name, data=kind, tags=cfg.tags, data_dir=pg.data_dir,
                loop_wait=cfg.loop_wait, retry_timeout=cfg.retry_timeout,
                remove_data_directory_on_rewind_failure=pg.remove_data_directory_on_rewind_failure,
                primary_start_timeout=cfg.primary_start_timeout,
                maximum_lag_on_failover=pg.maximum_lag_on_failover,
                rewind_pending=mem.rewind_pending, rewind_failed=mem.rewind_failed,
                bootstrap_failures=mem.bootstrap_failures, data_major=bindir.data_major(pg.data_dir))


def _controldata(g: NodeHost) -> datadir.ControlData:
    """pg_controldata of the stopped data directory, re-read when pg_control changes."""
    key = g.disk.control_stamp()
    if key is None:
        return datadir.ControlData(None, None, None)
    if g.mem.sysid_cache is None or g.mem.sysid_cache[0] != key:
        g.mem.sysid_cache = (key, g.disk.controldata())
    return g.mem.sysid_cache[1]


def race_facts(g: NodeHost, cluster: Cluster, sysid: Optional[str]) -> dict:
    """What a replica asks before a leader race, all at once with short timeouts: every other
    member's API for its position (LocalState.peers), and every other server of the cluster it
    knows of, directly, whether it still takes writes (writable_elsewhere, unknown_elsewhere)."""
    others = {m.name: m.api_url for m in cluster.members if m.name != g.name and m.api_url}
    servers = other_servers(g, cluster)
    peers, answers = g.peers.ask_all(others, list(servers), g.pg, sysid or "", g.config.restapi.cafile)
    # A server that cannot say (still starting up) whose own governor answers that it is a standby
    # in recovery: only that governor could promote it, and it holds no lock. Without this, a
    # replica waiting for WAL from the leader that died kept every other member from promoting.
    standby = {parse_conn_url(m.conn_url) for m in cluster.members
               if m.conn_url and getattr(peers.get(m.name), "recovering_standby", False) is True}
    said = [(label, answer, address in standby) for (address, label), answer in zip(servers.items(), answers)]
    return dict(peers=peers, writable_elsewhere=tuple(label for label, answer, _ in said if answer is True),
                unknown_elsewhere=tuple(label for label, answer, standby in said if answer is None and not standby))


def remember_leader(g: NodeHost, cluster: Cluster) -> None:
    """Where the last leader's PostgreSQL listens: its member key expires with its lock, and a
    leader race asks that server whether it still takes writes."""
    leader = cluster.leader.name if cluster.leader is not None else None
    address = g.leader_address(leader) if leader and leader != g.name else None
    if address is not None:
        g.mem.last_leader_at = (leader, address)


def other_servers(g: NodeHost, cluster: Cluster) -> Dict[Tuple[str, int], str]:
    """Addresses of the cluster's other PostgreSQL servers this member knows of, each with a label:
    the members in etcd, the last leader it saw (whose key expired with its lock) and the server
    this replica streams from."""
    found: Dict[Tuple[str, int], str] = {}
    if g.mem.last_leader_at is not None:
        name, address = g.mem.last_leader_at
        if name != g.name:
            found[address] = f"{name} ({address[0]}:{address[1]})"
    for m in cluster.members:
        address = parse_conn_url(m.conn_url) if m.name != g.name and m.conn_url else None
        if address is not None:
            found[address] = f"{m.name} ({address[0]}:{address[1]})"
    upstream = g.server_state.receiving_from if g.server_state is not None else None
    host, _, port = (upstream or "").rpartition(":")
    if host and port.isdigit() and 0 < int(port) < 65536:
        found.setdefault((host, int(port)), f"the upstream {upstream}")
    return found


def settled(g: NodeHost) -> Optional[ServerState]:
    """A PostgreSQL that was just started, promoted or re-pointed as it is once it has arrived:
    running, answering, and a primary or streaming from the upstream it was just pointed at (right
    after a re-point the WAL receiver of the old upstream may still show); None before. A cheap
    local look, no etcd."""
    try:
        if not g.controller.is_running():
            return None
        st = g.server.state()
    except (psycopg2.Error, OSError):
        return None
    if st.role == "primary":
        return st
    target = g.mem.conf_target
    arrived = bool(st.receiving_from) and (not target or st.receiving_from == f"{target[0]}:{target[1]}")
    return st if arrived else None
