"""Which physical replication slots the leader keeps: decided without I/O.

A slot per member that has a member record (a valid name and address), so a replica that falls
behind keeps its WAL; the operator's permanent slots; and a slot nobody uses any more only until
it has been without a member, and inactive, for member_slots_ttl seconds (0: never dropped).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Dict, Iterable, List, Tuple

from governor.cluster import Member, parse_conn_url
from governor.settings import slot_name_for


@dataclass(frozen=True)
class SlotPlan:
    create: Tuple[str, ...]
    drop: Tuple[Tuple[str, float], ...]      # (slot, seconds it was orphaned)
    orphan_since: Dict[str, float]           # the memory to keep for the next pass


def wanted_slots(members: Iterable[Member], me: str) -> set:
    return {slot_name_for(m.name) for m in members
            if m.name != me and m.conn_url is not None and parse_conn_url(m.conn_url)}


def plan(existing: Dict[str, bool], wanted: set, permanent: Iterable[str], orphan_since: Dict[str, float],
         now: float, ttl: float) -> SlotPlan:
    """`existing`: slot -> active. Slots to create, slots to drop, and since when each remaining
    unwanted slot has been orphaned."""
    keep = set(wanted) | set(permanent)
    since = {s: t for s, t in orphan_since.items() if s in existing and s not in keep}
    drop: List[Tuple[str, float]] = []
    for slot, active in sorted(existing.items()):
        if slot in keep or active:
            since.pop(slot, None)
            continue
        first = since.setdefault(slot, now)
        if ttl and now - first >= ttl:
            drop.append((slot, now - first))
            del since[slot]
    return SlotPlan(tuple(sorted(set(wanted) - set(existing))), tuple(drop), since)
