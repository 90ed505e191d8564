"""What the primary cluster of a standby cluster says about itself, over a replication connection."""
from __future__ import annotations

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
                                connection_factory=psycopg2.extras.PhysicalReplicationConnection)
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
