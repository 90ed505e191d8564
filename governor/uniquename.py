"""Before a member touches anything: its name is its own in etcd."""
from __future__ import annotations

import logging
from typing import TYPE_CHECKING

from governor.observe import observe_dcs
from governor.watchdogfeed import pass_limit

if TYPE_CHECKING:
    from governor.ports import NodeHost


def wait_for_unique_name(g: NodeHost) -> None:
    """Before touching anything: if etcd holds a live member key of our name that another
    governor wrote (it publishes other addresses), two members share a name and would take each
    other's slot, key and lock. Wait, doing nothing, until that key expires; say so loudly."""
    ours = (g.pg.conn_url, g.config.restapi.api_url)
    while not g.stopping.is_set():
        cluster = observe_dcs(g)
        member = cluster.member(g.name) if cluster is not None else None
        # Patroni's record of this member (its API had this port, so it is gone): a takeover
        patronis = member is not None and (member.conn_url, member.api_url) == (ours[0], f"{ours[1]}/patroni")
        if member is None or (member.conn_url, member.api_url) == ours or patronis:
            g.once("duplicate", f"member key {g.name} is Patroni's record of this member (same PostgreSQL, "
                   "its API was on this port): taking it over" if patronis else None, logging.INFO)
            g.mem.name_is_ours = True
            return
        g.once("duplicate", f"another governor runs as member {g.name} (PostgreSQL at {member.conn_url}, "
               f"API at {member.api_url}; this one would be {ours[0]}, {ours[1]}): give every member its "
               "own postgresql.name. Doing nothing until its member key expires", logging.ERROR)
        g.feeder.expect_within(max(1.0, g.config.loop_wait) + pass_limit(g.config.retry_timeout))
        g.wake.wait(max(1.0, g.config.loop_wait))
        g.wake.clear()
