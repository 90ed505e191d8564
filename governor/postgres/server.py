"""SQL access to the local PostgreSQL over its Unix socket, with one cached connection."""
from __future__ import annotations

import base64
import hashlib
import hmac
import logging
import os
from dataclasses import dataclass
from typing import Dict, Iterable, List, Optional

import psycopg2
import psycopg2.extensions

from governor import clock
from governor.config import PostgresConfig
from governor.status import Archiver

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ServerState:
    role: str                    # "primary" or "replica"
    sysid: str
    timeline: Optional[int]
    lsn: Optional[int]           # primary: current WAL insert position; replica: received
    replay_lsn: Optional[int]
    receiving_from: Optional[str]  # replica: "host:port" of its upstream, when streaming
    pending_restart: bool = False  # a changed setting takes effect only after a restart
    started_at: Optional[float] = None  # postmaster start, Unix time


# One round trip: role, system identifier, positions, timeline, upstream, pending restart, start.
STATE_QUERY = """
    SELECT pg_is_in_recovery(),
           (SELECT system_identifier::text FROM pg_control_system()),
           CASE WHEN pg_is_in_recovery() THEN NULL
                ELSE pg_current_wal_lsn() - '0/0' END,
           pg_last_wal_receive_lsn() - '0/0',
           pg_last_wal_replay_lsn() - '0/0',
           CASE WHEN pg_is_in_recovery()
                THEN (SELECT received_tli FROM pg_stat_get_wal_receiver())
                ELSE ('x' || substr(pg_walfile_name(pg_current_wal_lsn()), 1, 8))::bit(32)::int
           END,
           (SELECT sender_host || ':' || sender_port FROM pg_stat_get_wal_receiver()
             WHERE status = 'streaming'),
           greatest((SELECT timeline_id FROM pg_control_checkpoint()),
                    (SELECT max(('x' || substr(name, 1, 8))::bit(32)::int) FROM pg_ls_waldir()
                      WHERE name ~ '^[0-9A-F]{24}$')),
           (SELECT coalesce(bool_or(pending_restart), false) FROM pg_settings),
           extract(epoch FROM pg_postmaster_start_time())::float8"""


class Server:
    def __init__(self, cfg: PostgresConfig):
        self.cfg = cfg
        self._conn: Optional[psycopg2.extensions.connection] = None

    def connect(self) -> psycopg2.extensions.connection:
        if self._conn is None or self._conn.closed:
            self._conn = psycopg2.connect(
                host=self.cfg.socket_dir, port=self.cfg.port, dbname="postgres",
                user=self.cfg.superuser.username, password=self.cfg.superuser.password,
                connect_timeout=3, application_name="governor",
                # Its own writes (roles, slots) never wait for a synchronous standby.
                options="-c statement_timeout=10000 -c synchronous_commit=local")
            self._conn.autocommit = True
        return self._conn

    def refuses_new_connections(self, timeout: int = 2) -> Optional[str]:
        """Why a new session cannot start now (None: one did, and was closed). The cached session
        answering says nothing of this: a frozen postmaster (SIGSTOP, stuck in the kernel) keeps
        existing sessions alive while every new client hangs."""
        try:
            psycopg2.connect(host=self.cfg.socket_dir, port=self.cfg.port, dbname="postgres",
                             user=self.cfg.superuser.username, password=self.cfg.superuser.password,
                             connect_timeout=timeout, application_name="governor-probe").close()
        except psycopg2.Error as exc:
            return str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        return None

    def close(self) -> None:
        if self._conn is not None:
            try:
                self._conn.close()
            except psycopg2.Error:
                pass
            self._conn = None

    def query(self, sql: str, params: Iterable = ()) -> List[tuple]:
        try:
            with self.connect().cursor() as cur:
                cur.execute(sql, tuple(params))
                return cur.fetchall() if cur.description else []
        except psycopg2.Error:
            self.close()
            raise

    def state(self) -> ServerState:
        """One round trip: role, positions and upstream."""
        row = self.query(STATE_QUERY)[0]
        in_recovery, sysid, current, received, replayed, tli, upstream, checkpoint_tli, pending, started = row
        if in_recovery:
            # Without a WAL receiver PostgreSQL tells no current timeline: the restartpoint's lags
            # behind a switch this standby followed, but the WAL segments it received since are
            # named after their timeline (a standby that cannot follow a new timeline has none).
            lsn = max(int(received or 0), int(replayed or 0)) or None
            return ServerState("replica", sysid, max(t for t in (tli, checkpoint_tli, 0) if t is not None) or None, lsn,
                               int(replayed) if replayed is not None else None, upstream, bool(pending), started)
        return ServerState("primary", sysid, tli, int(current), None, None, bool(pending), started)

    def replication(self) -> List[tuple]:
        """On a primary: (application_name, state, sync_state, lag in bytes behind our position,
        flushed position). A standby that has not replied for three of its status intervals
        (wal_receiver_status_interval, at least 1 s; its connection may stay open for
        wal_sender_timeout) is 'unresponsive', not 'streaming': commits waiting for it stall."""
        return self.query("""
            SELECT application_name,
                   CASE WHEN state = 'streaming' AND current_setting('wal_receiver_status_interval') <> '0'
                             AND reply_time < now() - 3 * greatest(
                                 current_setting('wal_receiver_status_interval')::interval, interval '1 s')
                        THEN 'unresponsive' ELSE state END,
                   sync_state,
                   (pg_current_wal_lsn() - coalesce(replay_lsn, flush_lsn, write_lsn, sent_lsn))::bigint,
                   (flush_lsn - '0/0')::bigint
              FROM pg_stat_replication ORDER BY application_name""")

    def archiver(self) -> Optional[Archiver]:
        """pg_stat_archiver and the count of segments waiting for archive_command; None when
        archive_mode is off."""
        row = self.query("""
            SELECT current_setting('archive_mode'), archived_count, last_archived_wal,
                   extract(epoch FROM last_archived_time)::float8, failed_count, last_failed_wal,
                   extract(epoch FROM last_failed_time)::float8,
                   (SELECT count(*) FROM pg_ls_archive_statusdir() WHERE name LIKE '%%.ready')
              FROM pg_stat_archiver""")[0]
        if row[0] == "off":
            return None
        return Archiver(int(row[1]), row[2], row[3], int(row[4]), row[5], row[6], int(row[7]))

    def current_lsn(self) -> int:
        return int(self.query("SELECT (pg_current_wal_lsn() - '0/0')::bigint")[0][0])

    def setting(self, name: str) -> str:
        return str(self.query("SELECT current_setting(%s)", (name,))[0][0])

    def version(self) -> int:
        return int(self.query("SHOW server_version_num")[0][0])

    def promote(self, timeout: float = 60, poll: float = 0.01) -> bool:
        """Promote and wait until PostgreSQL accepts writes. pg_promote(wait => true) looks only
        every 100 ms; a promotion itself takes a few ms, so this asks every `poll` seconds."""
        if not self.query("SELECT pg_promote(false)")[0][0]:
            return False
        deadline = clock.monotonic() + timeout
        while self.query("SELECT pg_is_in_recovery()")[0][0]:
            if clock.monotonic() > deadline:
                return False
            clock.sleep(poll)
        return True

    def replication_slots(self) -> Dict[str, bool]:
        """Physical slots: name -> active."""
        rows = self.query("SELECT slot_name, active FROM pg_replication_slots WHERE slot_type = 'physical'")
        return {name: bool(active) for name, active in rows}

    def slot_positions(self) -> Dict[str, int]:
        """Physical slots that hold WAL: name -> restart_lsn (bytes)."""
        rows = self.query("SELECT slot_name, (restart_lsn - '0/0'::pg_lsn)::bigint FROM pg_replication_slots "
                          "WHERE slot_type = 'physical' AND restart_lsn IS NOT NULL")
        return {name: int(lsn) for name, lsn in rows}

    def wal_segment_size(self) -> int:
        """Bytes per WAL segment (fixed at initdb; 0 when the server does not say)."""
        rows = self.query("SELECT setting FROM pg_settings WHERE name = 'wal_segment_size'")
        return int(rows[0][0]) if rows and str(rows[0][0]).isdigit() else 0

    def advance_slot(self, name: str, lsn: int) -> None:
        """Move a slot forward to `lsn` (on a standby PostgreSQL caps it at what was replayed)."""
        self.query("SELECT pg_replication_slot_advance(%s, %s::pg_lsn)", (name, f"{lsn >> 32:X}/{lsn & 0xFFFFFFFF:X}"))

    def logical_slot_names(self) -> List[str]:
        return [row[0] for row in self.query("SELECT slot_name FROM pg_replication_slots WHERE slot_type = 'logical'")]

    def create_logical_slot(self, name: str, database: str, plugin: str, failover: bool) -> None:
        """In `database` (a slot belongs to one); with failover (PostgreSQL 17) standbys that
        run sync_replication_slots keep a copy at the position its consumer confirmed."""
        conn = psycopg2.connect(host=self.cfg.socket_dir, port=self.cfg.port, dbname=database,
                                user=self.cfg.superuser.username, password=self.cfg.superuser.password,
                                connect_timeout=3, application_name="governor",
                                options="-c statement_timeout=30000 -c synchronous_commit=local")
        try:
            conn.autocommit = True
            with conn.cursor() as cur:
                if failover:
                    cur.execute("SELECT pg_create_logical_replication_slot(%s, %s, false, false, true)",
                                (name, plugin))
                else:
                    cur.execute("SELECT pg_create_logical_replication_slot(%s, %s)", (name, plugin))
        finally:
            conn.close()

    def drop_slot(self, name: str) -> None:
        self.query("SELECT pg_drop_replication_slot(%s)", (name,))

    def checkpoint(self) -> None:
        self.query("CHECKPOINT")

    def create_physical_slot(self, name: str) -> None:
        self.query("SELECT pg_create_physical_replication_slot(%s, true)", (name,))

    def create_role(self, name: str, password: Optional[str], replication: bool = False) -> None:
        """Create or update a login role; the password goes over the wire as a SCRAM verifier only,
        so it can appear in no server log."""
        exists = self.query("SELECT 1 FROM pg_roles WHERE rolname = %s", (name,))
        verb = "ALTER" if exists else "CREATE"
        sql = f"{verb} ROLE {quote_ident(name)} WITH LOGIN{' REPLICATION' if replication else ''}"
        params: tuple = ()
        if password:
            sql += " PASSWORD %s"
            params = (scram_verifier(password),)
        self.query(sql, params)

    def set_password(self, name: str, password: str) -> None:
        self.query(f"ALTER ROLE {quote_ident(name)} PASSWORD %s", (scram_verifier(password),))


def quote_ident(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


def scram_verifier(password: str, iterations: int = 4096, salt: Optional[bytes] = None) -> str:
    """The SCRAM-SHA-256 secret PostgreSQL stores (RFC 5803 format)."""
    salt = salt if salt is not None else os.urandom(16)
    salted = hashlib.pbkdf2_hmac("sha256", password.encode("utf-8"), salt, iterations)
    client_key = hmac.new(salted, b"Client Key", hashlib.sha256).digest()
    stored_key = hashlib.sha256(client_key).digest()
    server_key = hmac.new(salted, b"Server Key", hashlib.sha256).digest()

    def b64(raw: bytes) -> str:
        return base64.b64encode(raw).decode("ascii")

    return f"SCRAM-SHA-256${iterations}:{b64(salt)}${b64(stored_key)}:{b64(server_key)}"
