"""What the leader keeps in order each pass: replication slots and roles, synchronous standbys."""
from __future__ import annotations

import logging
from typing import TYPE_CHECKING

import psycopg2

from governor import clock, slots
from governor.actions.base import ActionFailed
from governor.ha import Decision, LocalState
from governor.syncrep import PromiseNotWritten

if TYPE_CHECKING:
    from governor.ports import ActionHost

log = logging.getLogger("governor")


def ensure_slots(g: ActionHost, decision: Decision, local: LocalState) -> None:
    """A physical slot per member; slots of members gone for member_slots_ttl are dropped."""
    if g.cluster is None:
        return
    if not g.mem.roles_checked:
        ensure_roles(g)
    wanted = slots.wanted_slots(g.cluster, g.name)
    _keep_slots(g, wanted | set(g.pg.permanent_slots))
    if g.pg.permanent_slots:    # published for the replicas' copies (replica_slots)
        positions = g.server.slot_positions()
        g.mem.permanent_positions = {s: positions[s] for s in g.pg.permanent_slots if s in positions}
    if g.pg.logical_slots:
        _logical_slots(g, wanted)


def _logical_slots(g: ActionHost, wanted: set) -> None:
    """postgresql.logical_slots on the leader: created if missing (with failover on PostgreSQL
    17, whose standbys then keep copies); logical decoding waits for the standbys that stream
    now (synchronized_standby_slots), so a consumer never gets ahead of a promotable standby."""
    failover = g.slot_sync_database() is not None
    existing = set(g.server.logical_slot_names())
    for name, database, plugin in g.pg.logical_slots:
        if name in existing:
            continue
        try:
            g.server.create_logical_slot(name, database, plugin, failover)
            log.info("created logical replication slot %s in database %s (%s)%s", name, database, plugin,
                     ", kept by the standbys across failover" if failover else "")
        except psycopg2.Error as exc:
            g.once(f"logical-{name}", f"could not create logical slot {name}: {str(exc).strip()}", logging.WARNING)
    if not failover:
        g.once("logical-failover", "logical slots are not kept across a failover before PostgreSQL 17 "
                                   "(sync_replication_slots): a promoted replica has none", logging.WARNING)
        return
    streaming = ",".join(sorted(s for s, active in g.server.replication_slots().items() if active and s in wanted))
    if streaming != g.mem.standby_slots:
        g.mem.standby_slots = streaming
        if g.write_conf(standby_of=None):
            g.controller.reload()
            log.info("logical decoding now waits for the standbys %s (synchronized_standby_slots)", streaming or "-")


def replica_slots(g: ActionHost, decision: Decision, local: LocalState) -> None:
    """A replica: a slot per member that streams from it (replicatefrom), and a copy of each
    permanent slot, moved forward to where the leader's is (so a promoted replica has it, holding
    what its consumer still needs); others it holds (from its time as leader, or for a member that
    moved) are dropped as on the leader."""
    if g.cluster is None or not (local.running and local.role == "replica"):
        return
    # A standby cluster's leader is the upstream of every member, as a primary is.
    standby_leader = g.cluster.leader is not None and g.cluster.leader.name == g.name
    members = slots.wanted_slots(g.cluster, g.name) if standby_leader else slots.cascade_slots(g.cluster, g.name)
    _keep_slots(g, members | set(g.pg.permanent_slots))
    leader = g.cluster.member(g.cluster.leader.name) if g.cluster.leader else None
    if leader is None or not g.pg.permanent_slots:
        return
    mine = g.server.slot_positions()
    segment = g.server.wal_segment_size()
    for slot, target in slots.copies_to_advance(mine, leader.slots, g.pg.permanent_slots, segment).items():
        try:
            g.server.advance_slot(slot, target)
        except psycopg2.Error as exc:
            g.once(f"advance-{slot}", f"could not move the copy of permanent slot {slot} forward: "
                                      f"{str(exc).strip()}", logging.WARNING)


def _keep_slots(g: ActionHost, wanted: set) -> None:
    todo = slots.plan(g.server.replication_slots(), wanted, g.pg.permanent_slots, g.mem.orphan_slots,
                      clock.monotonic(), g.pg.member_slots_ttl)
    for slot in todo.create:
        g.server.create_physical_slot(slot)
        log.info("created replication slot %s", slot)
    for slot, orphaned in todo.drop:
        g.server.drop_slot(slot)
        log.info("dropped replication slot %s: no member has used it for %ss (member_slots_ttl)", slot, int(orphaned))
    g.mem.orphan_slots = todo.orphan_since


def create_member_slots(g: ActionHost) -> None:
    """Just before a promotion, still a standby: the other members' slots, so that a replica
    that follows the new leader the moment the lock changes finds its slot (a slot being
    created is held by the creating session: a WAL receiver that meets it then can lose many
    seconds). Best effort: the promotion never waits on it; ensure_slots follows."""
    if g.cluster is None:
        return
    try:
        existing = g.server.replication_slots()
        for slot in sorted(slots.wanted_slots(g.cluster, g.name) - set(existing)):
            g.server.create_physical_slot(slot)
            log.info("created replication slot %s before promoting", slot)
    except psycopg2.Error as exc:
        log.warning("could not create the replicas' slots before promoting (%s); creating them after",
                    str(exc).strip())


def ensure_roles(g: ActionHost) -> None:
    """Once per leadership: the replication role, and the superuser's password, exist as
    configured (a cluster adopted from an existing data directory has neither)."""
    g.server.create_role(g.pg.replication.username, g.pg.replication.password, replication=True)
    if g.pg.superuser.password:
        g.server.set_password(g.pg.superuser.username, g.pg.superuser.password)
    g.mem.roles_checked = True


def manage_sync(g: ActionHost, decision: Decision, local: LocalState) -> None:
    if g.cluster is None or not (local.running and local.role == "primary"):
        return   # e.g. paused with PostgreSQL stopped by the operator
    try:
        g.syncrep.manage(g.cluster)
    except PromiseNotWritten as exc:
        raise ActionFailed(f"synchronous replication: {exc}") from exc
