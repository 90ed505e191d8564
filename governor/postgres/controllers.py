"""Which process controller runs this member's PostgreSQL: pg_ctl, pg_ctl bound to governor's life
(lifeline.py), or systemctl for the distribution's unit."""
from __future__ import annotations

from governor.postgres.controller import PgCtl, ProcessController, Systemctl
from governor.postgres.lifeline import BoundPgCtl
from governor.settings import PostgresConfig


def make_controller(pg: PostgresConfig, bind: bool = False) -> ProcessController:
    """pg_ctl by default; systemctl when postgresql.systemd_unit is set. `bind` (outside systemd):
    the postmasters it starts stop when this process dies."""
    if pg.systemd_unit:
        return Systemctl(pg.systemd_unit, pg.data_dir)
    if bind:
        return BoundPgCtl(pg.bin_dir, pg.data_dir, pg.log_file)
    return PgCtl(pg.bin_dir, pg.data_dir, pg.log_file)
