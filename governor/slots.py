"""Which physical replication slots the leader keeps: decided without I/O.

A slot per member that has a member record (a valid name and address) and streams from the
leader, so a replica that falls behind keeps its WAL (a member that streams from another replica,
replicatefrom, has its slot there); the operator's permanent slots; and a slot nobody uses any more only until
it has been without a member, and inactive, for member_slots_ttl seconds (0: never dropped).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Dict, Iterable, List, Tuple

from governor.cluster import Cluster, parse_conn_url
from governor.settings import slot_name_for


@dataclass(frozen=True)
class SlotPlan:
    create: Tuple[str, ...]
    drop: Tuple[Tuple[str, float], ...]      # (slot, seconds it was orphaned)
    orphan_since: Dict[str, float]           # the memory to keep for the next pass


def wanted_slots(cluster: Cluster, me: str) -> set:
    """The leader's: a slot per member that streams from it (not through another replica)."""
    return {slot_name_for(m.name) for m in cluster.members
            if m.name != me and m.conn_url is not None and parse_conn_url(m.conn_url)
            and cluster.upstream_of(m.name) in (None, me)}


def copies_to_advance(mine: Dict[str, int], leaders: Dict[str, int], permanent: Iterable[str],
                      segment: int) -> Dict[str, int]:
    """A replica's copies of permanent slots that are behind the leader's: slot -> the start of
    the WAL segment holding the leader's position (`segment`: wal_segment_size, 0 for none). A
    consumer may confirm a lower position than before within its segment (pg_receivewal does when
    it stops, keeping a .partial file), and a slot never moves back: a copy at the segment's start
    is never ahead of what the consumer confirmed, and holds the same WAL (whole segments are kept)."""
    targets = {s: leaders[s] - (leaders[s] % segment if segment > 0 else 0) for s in permanent if s in leaders}
    return {s: target for s, target in targets.items() if s in mine and mine[s] < target}


def cascade_slots(cluster: Cluster, me: str) -> set:
    """A replica's: a slot per member that streams from it (replicatefrom)."""
    return {slot_name_for(m.name) for m in cluster.members if m.name != me and cluster.upstream_of(m.name) == me}


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
