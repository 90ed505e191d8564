"""What another PostgreSQL server says about itself over a replication connection: the primary
cluster of a standby cluster, or a member that may still run as primary."""
from __future__ import annotations

import socket
from typing import Optional, Tuple

import psycopg2
import psycopg2.extras

from governor.settings import PostgresConfig


def identify(cfg: PostgresConfig, host: str, port: int, timeout: int = 2) -> Optional[Tuple[str, int]]:
    """(system identifier, timeline) of the server at host:port as its IDENTIFY_SYSTEM answers
    the replication user (the password from the passfile); None when it does not answer, or
    answers something that is not that."""
    try:
        conn = psycopg2.connect(host=host, port=port, user=cfg.replication.username, passfile=cfg.pgpass,
                                dbname="replication", connect_timeout=timeout, application_name=cfg.name,
                                connection_factory=psycopg2.extras.PhysicalReplicationConnection,
                                **cfg.replication_ssl)
    except psycopg2.Error:
        return None
    try:
        with conn.cursor() as cur:
            cur.execute("IDENTIFY_SYSTEM")
            row = cur.fetchone()
    except psycopg2.Error:
        return None
    finally:
        conn.close()
    if not row or len(row) < 2:
        return None
    sysid, timeline = str(row[0]), row[1]
    if not sysid.isdigit() or isinstance(timeline, bool) or not isinstance(timeline, int) or not 0 < timeline < 2**32:
        return None
    return sysid, timeline


REACH_TIMEOUT = 0.5    # seconds for the TCP handshake: a live server on the members' network answers it
#                        within milliseconds; a host that is gone costs no more than this


def answers_writable(cfg: PostgresConfig, host: str, port: int, sysid: str) -> Optional[bool]:
    """Whether the server at host:port runs as a primary of the system `sysid` that takes writes.

    False when nothing answers there (stopped, or the host is gone), when it is read-only (a
    standby), or when it belongs to another system; None when a server answers but cannot say (a
    refused login, too many connections, starting up or shutting down): unknown, which is never
    read as "not a primary"."""
    try:
        socket.create_connection((host, port), timeout=REACH_TIMEOUT).close()
    except OSError:
        return False
    try:
        conn = psycopg2.connect(host=host, port=port, user=cfg.replication.username, passfile=cfg.pgpass,
                                dbname="replication", connect_timeout=2, application_name=f"{cfg.name}-check",
                                connection_factory=psycopg2.extras.PhysicalReplicationConnection,
                                **cfg.replication_ssl)
    except psycopg2.Error as exc:
        # libpq prefixes what the server said with FATAL; anything else is the connection's own
        # failure (refused, reset, timed out): nothing listens there any more.
        return None if "FATAL:" in str(exc) else False
    try:
        # in_hot_standby (PostgreSQL 14+, told at login) is 'on' exactly while it is in recovery;
        # before 14, transaction_read_only is 'on' in every standby's transactions.
        standby = conn.get_parameter_status("in_hot_standby")
        with conn.cursor() as cur:
            cur.execute("IDENTIFY_SYSTEM")
            system = cur.fetchone()
            if standby is None:
                cur.execute("SHOW transaction_read_only")
                row = cur.fetchone()
                standby = row[0] if row else None
    except psycopg2.Error:
        return None
    finally:
        conn.close()
    if not system or not str(system[0]).isdigit() or standby not in ("on", "off"):
        return None
    return str(system[0]) == sysid and standby == "off"
