"""The local data directory as a port: what the pass and the executors read and change on disk, and
the PostgreSQL tools that replace or repair it (initdb, pg_basebackup, pg_rewind, pgBackRest).

The daemon uses this one, over datadir.py and bootstrap.py; the simulator gives each member a model
of its own with the same methods."""
from __future__ import annotations

import os
from typing import Callable, Optional, Tuple

from governor.postgres import bootstrap, datadir
from governor.settings import PostgresConfig


class DataDirectory:
    def __init__(self, current: Callable[[], PostgresConfig]):
        self._current = current       # the member's configuration as it is now (a reload replaces it)

    @property
    def pg(self) -> PostgresConfig:
        return self._current()

    # ------------------------------------------------------------------ reading

    def kind(self) -> str:
        """datadir.EMPTY, POSTGRES or NOT_POSTGRES."""
        return datadir.classify(self.pg.data_dir)

    def exists(self) -> bool:
        return os.path.lexists(self.pg.data_dir)

    def is_standby(self) -> bool:
        """standby.signal is there: PostgreSQL starts as a standby."""
        return datadir.is_standby(self.pg.data_dir)

    def control_stamp(self) -> Optional[Tuple[int, int]]:
        """What changes whenever pg_control does (None: there is none); controldata() is re-read then."""
        try:
            st = os.stat(os.path.join(self.pg.data_dir, "global", "pg_control"))
        except OSError:
            return None
        return (st.st_ino, st.st_mtime_ns)

    def controldata(self) -> datadir.ControlData:
        return datadir.read_controldata(self.pg.bin_dir, self.pg.data_dir)

    # ------------------------------------------------------------------ the files PostgreSQL reads

    def write_conf(self, standby_of: Optional[tuple], synchronous_standby_names: Optional[str],
                   slot_sync: Optional[str], standby_slots: Optional[str]) -> bool:
        """postgresql.conf for a primary (None) or a standby of (host, port) / nobody (()); True when
        it changed."""
        return datadir.write_postgresql_conf(self.pg, standby_of=standby_of,
                                             synchronous_standby_names=synchronous_standby_names,
                                             slot_sync=slot_sync, standby_slots=standby_slots)

    def write_pgpass(self) -> None:
        datadir.write_pgpass(self.pg)

    def write_pg_hba(self) -> None:
        datadir.write_pg_hba(self.pg)

    def set_standby_signal(self, standby: bool) -> None:
        datadir.set_standby_signal(self.pg.data_dir, standby)

    # ------------------------------------------------------------------ replacing and repairing

    def empty(self) -> None:
        datadir.empty_directory(self.pg.data_dir)

    def move_aside(self) -> str:
        return bootstrap.move_aside(self.pg.data_dir)

    def initdb(self) -> None:
        bootstrap.initdb(self.pg)

    def basebackup(self, host: str, port: int) -> None:
        bootstrap.basebackup(self.pg, host, port)

    def pgbackrest_restore(self) -> None:
        bootstrap.pgbackrest_restore(self.pg)

    def pgbackrest_restore_cluster(self) -> None:
        bootstrap.pgbackrest_restore_cluster(self.pg)

    def rewind(self, host: str, port: int) -> str:
        """pg_rewind from the server at host:port; its report. BootstrapError when it failed."""
        return bootstrap.rewind(self.pg, host, port)

    def source_refuses(self, host: str, port: int) -> Optional[str]:
        """Why the server at host:port refuses the superuser's connection (None: it accepts it)."""
        return bootstrap.source_refuses(self.pg, host, port)
