"""A model of each member's PostgreSQL, and the three ports the real daemon reaches it through:
the process controller (start, stop, reload), the SQL connection (Server) and the data directory
(DataDirectory: the files PostgreSQL reads at start, pg_controldata, pg_rewind, pg_basebackup).

The WAL is a tuple of write ids, a position its length. What the model keeps of PostgreSQL:
a standby starts in recovery when standby.signal is there and streams from primary_conninfo's
server while its WAL is a prefix of that server's (else it cannot follow: divergence); a primary
writes on a new timeline after promotion; a reload applies primary_conninfo and
synchronous_standby_names; a commit on a primary with synchronous_standby_names waits until the
standbys it names hold it (`FIRST k (...)` / `ANY k (...)`); pg_rewind cuts the WAL back to what it
shares with the source and takes the source's timeline, and fails when the source is not running.
"""
from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Dict, Iterable, List, Optional, Tuple

import psycopg2

from governor.postgres import datadir
from governor.postgres.bootstrap import BootstrapError
from governor.postgres.controller import ProcessController
from governor.postgres.server import Server

if TYPE_CHECKING:
    from tests.sim.world import World

SYSID = "7000000000000000001"
REMOTE = "site-a"          # the other site's PostgreSQL (standby clusters)
NAMES_RE = re.compile(r'^(FIRST|ANY) (\d+) \((.*)\)$')


@dataclass
class Pg:
    """One member's PostgreSQL: what is on disk, and the server when it runs."""
    name: str
    wal: Tuple[int, ...] = ()
    timeline: int = 1
    restart_tli: int = 1                        # pg_control: the last checkpoint's (restartpoint's) timeline
    running: bool = False
    in_recovery: bool = True
    standby_signal: bool = True
    conf_upstream: Optional[str] = None        # primary_conninfo's host in postgresql.conf
    conf_sync: str = ""                         # synchronous_standby_names in postgresql.conf
    upstream: Optional[str] = None              # what the running server streams from
    sync_names: str = ""                        # what the running server applies
    shut_down_cleanly: bool = True              # pg_control: last stop was a clean one
    last_primary: bool = False                  # pg_control: "in production" / "shut down"
    stalled_until: float = 0.0                  # the WAL receiver gets nothing (a fault)
    slots: Dict[str, int] = field(default_factory=dict)
    stamp: int = 0                              # changes with pg_control
    empty: bool = False                         # the data directory was emptied (reinitialize, a failed rewind)
    promote_fails_until: float = 0.0            # pg_promote() does not finish in time (a fault)

    @property
    def lsn(self) -> int:
        return len(self.wal)

    def writable(self) -> bool:
        return self.running and not self.in_recovery

    def required(self) -> Tuple[int, Tuple[str, ...], bool]:
        """(how many, of which standbys, any of them) a commit waits for; (0, (), False): none."""
        match = NAMES_RE.match(self.sync_names.strip())
        if not match:
            return 0, (), False
        names = tuple(n.strip().strip('"') for n in match.group(3).split(","))
        return int(match.group(2)), names, match.group(1) == "ANY"


class SimController(ProcessController):
    def __init__(self, world: World, pg: Pg):
        self.world, self.pg = world, pg

    def start(self, timeout: float, wait: bool = True) -> None:
        pg = self.pg
        if pg.running:
            return
        pg.running = True
        pg.in_recovery = pg.standby_signal
        pg.upstream, pg.sync_names = pg.conf_upstream, pg.conf_sync
        pg.stamp += 1
        if not pg.in_recovery:
            pg.last_primary = True
            self.world.became_writable(pg.name)

    def stop(self, mode: str = "fast", timeout: float = 60) -> None:
        self.world.stop_postgres(self.pg.name, mode)

    def postmaster_pid(self) -> Optional[int]:
        return 4242 if self.pg.running else None

    def reload(self) -> None:
        if self.pg.running:
            self.pg.upstream, self.pg.sync_names = self.pg.conf_upstream, self.pg.conf_sync


class SimServer(Server):
    """The SQL connection: answers while PostgreSQL runs, raises psycopg2.OperationalError when not.
    The real state() runs: its query is answered from the model as PostgreSQL would (a standby
    without a WAL receiver tells no current timeline; its restartpoint's lags behind a switch it
    followed, the WAL segments it received since are named after theirs)."""

    def __init__(self, world: World, pg: Pg):
        self.world, self.pg = world, pg

    def query(self, sql: str, params: Iterable = ()) -> List[tuple]:
        pg = self._up()
        if "pg_control_system()" not in sql:
            raise NotImplementedError(f"query not modelled by the simulator: {sql[:60]}")
        if not pg.in_recovery:
            return [(False, SYSID, pg.lsn, None, None, pg.timeline, None, pg.restart_tli, False, None)]
        streaming = self.world.streams(pg)
        # the highest timeline of a segment in pg_wal: the one it is on (it has streamed or been
        # rewound onto it)
        segments = pg.timeline if "pg_ls_waldir()" in sql else None
        return [(True, SYSID, None, pg.lsn or None, pg.lsn or None, pg.timeline if streaming else None,
                 f"{pg.upstream}:5432" if streaming else None,
                 max(t for t in (pg.restart_tli, segments) if t is not None), False, None)]

    def _up(self) -> Pg:
        if not self.pg.running:
            raise psycopg2.OperationalError("connection to server on socket failed: No such file or directory")
        return self.pg

    def close(self) -> None:
        pass

    def refuses_new_connections(self, timeout: int = 2) -> Optional[str]:
        self._up()
        return None

    def promote(self, timeout: float = 60, poll: float = 0.01) -> bool:
        """pg_promote(); one time in ten it does not finish in time (the server stays a standby)."""
        pg = self._up()
        if pg.in_recovery:
            if self.world.rng.random() < 0.1 or self.world.now < pg.promote_fails_until:
                return False
            self.world.promoted(pg.name)
        return True

    def checkpoint(self) -> None:
        pg = self._up()
        pg.stamp += 1
        if not pg.in_recovery:
            pg.restart_tli = pg.timeline

    def replication(self) -> List[tuple]:
        pg = self._up()
        rows = []
        for other in self.world.pgs.values():
            if other is not pg and other.running and other.in_recovery and other.upstream == pg.name \
                    and self.world.streams(other):
                rows.append((other.name, "streaming", "async", pg.lsn - other.lsn, other.lsn))
        return sorted(rows)

    def setting(self, name: str) -> str:
        assert name == "synchronous_standby_names", name
        return self._up().sync_names

    def current_lsn(self) -> int:
        return self._up().lsn

    def version(self) -> int:
        self._up()
        return 170000

    def archiver(self) -> None:
        self._up()
        return None

    def replication_slots(self) -> Dict[str, bool]:
        pg = self._up()
        return {s: any(o.upstream == pg.name and o.name == s and o.running for o in self.world.pgs.values())
                for s in pg.slots}

    def slot_positions(self) -> Dict[str, int]:
        return dict(self._up().slots)

    def wal_segment_size(self) -> int:
        return 16

    def create_physical_slot(self, name: str) -> None:
        self._up().slots.setdefault(name, 0)

    def drop_slot(self, name: str) -> None:
        self._up().slots.pop(name, None)

    def create_role(self, name: str, password: Optional[str], replication: bool = False) -> None:
        self._up()

    def set_password(self, name: str, password: str) -> None:
        self._up()


class SimDisk:
    """The data directory and the tools that change it."""

    def __init__(self, world: World, pg: Pg):
        self.world, self.pg = world, pg

    def kind(self) -> str:
        return datadir.EMPTY if self.pg.empty else datadir.POSTGRES

    def exists(self) -> bool:
        return True

    def is_standby(self) -> bool:
        return self.pg.standby_signal

    def control_stamp(self) -> Optional[Tuple[int, int]]:
        return (1, self.pg.stamp)

    def controldata(self) -> datadir.ControlData:
        pg = self.pg
        state = "in production" if pg.last_primary else "shut down in recovery"
        return datadir.ControlData(SYSID, state, pg.timeline)

    def write_conf(self, standby_of: Optional[tuple], synchronous_standby_names: Optional[str],
                   slot_sync: Optional[str], standby_slots: Optional[str]) -> bool:
        upstream = standby_of[0] if standby_of else None
        names = synchronous_standby_names or ""
        changed = (upstream, names) != (self.pg.conf_upstream, self.pg.conf_sync)
        self.pg.conf_upstream, self.pg.conf_sync = upstream, names
        return changed

    def write_pgpass(self) -> None:
        pass

    def write_pg_hba(self) -> None:
        pass

    def set_standby_signal(self, standby: bool) -> None:
        self.pg.standby_signal = standby

    def rewind(self, host: str, port: int) -> str:
        return self.world.rewind(self.pg.name, host)

    def source_refuses(self, host: str, port: int) -> Optional[str]:
        source = self.world.pgs.get(host)
        reached = source is not None and source.running and not self.world.split(self.pg.name, host)
        return None if reached else "connection refused"

    def empty(self) -> None:
        pg = self.pg
        pg.wal, pg.timeline, pg.slots, pg.empty, pg.last_primary, pg.standby_signal = (), 1, {}, True, False, False
        pg.stamp += 1

    def basebackup(self, host: str, port: int) -> None:
        self.world.clone(self.pg.name, host)

    def _unmodelled(self, *args: object) -> None:
        raise BootstrapError("not modelled by the simulator")

    move_aside = initdb = pgbackrest_restore = pgbackrest_restore_cluster = _unmodelled
