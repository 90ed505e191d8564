"""What the leader keeps in order each pass: replication slots and roles, synchronous standbys."""
from __future__ import annotations

import logging
import time
from typing import TYPE_CHECKING

from governor.actions.base import ActionFailed
from governor.cluster import parse_conn_url
from governor.ha import Decision, LocalState
from governor.settings import slot_name_for
from governor.syncrep import PromiseNotWritten

if TYPE_CHECKING:
    from governor.daemon import Governor

log = logging.getLogger("governor")


def ensure_slots(g: Governor, decision: Decision, local: LocalState) -> None:
    """A physical slot per member; slots of members gone for member_slots_ttl are dropped."""
    if g.cluster is None:
        return
    if not g.mem.roles_checked:
        ensure_roles(g)
    # Only for members whose key is a member record governor wrote (a valid name, an address).
    wanted = {slot_name_for(m.name) for m in g.cluster.members
              if m.name != g.name and m.conn_url is not None and parse_conn_url(m.conn_url)}
    existing = g.server.replication_slots()
    for slot in sorted(wanted - set(existing)):
        g.server.create_physical_slot(slot)
        log.info("created replication slot %s", slot)
    now = time.monotonic()
    keep = wanted | set(g.pg.permanent_slots)
    g.mem.orphan_slots = {s: t for s, t in g.mem.orphan_slots.items() if s in existing and s not in keep}
    ttl = g.pg.member_slots_ttl
    for slot, active in sorted(existing.items()):
        if slot in keep or active:
            continue
        since = g.mem.orphan_slots.setdefault(slot, now)
        if ttl and now - since >= ttl:
            g.server.drop_slot(slot)
            del g.mem.orphan_slots[slot]
            log.info("dropped replication slot %s: no member has used it for %ss (member_slots_ttl)",
                     slot, int(now - since))


def ensure_roles(g: Governor) -> None:
    """Once per leadership: the replication role, and the superuser's password, exist as
    configured (a cluster adopted from an existing data directory has neither)."""
    g.server.create_role(g.pg.replication.username, g.pg.replication.password, replication=True)
    if g.pg.superuser.password:
        g.server.set_password(g.pg.superuser.username, g.pg.superuser.password)
    g.mem.roles_checked = True


def manage_sync(g: Governor, decision: Decision, local: LocalState) -> None:
    if g.cluster is None or not (local.running and local.role == "primary"):
        return   # e.g. paused with PostgreSQL stopped by the operator
    try:
        g.syncrep.manage(g.cluster)
    except PromiseNotWritten as exc:
        raise ActionFailed(f"synchronous replication: {exc}") from exc
