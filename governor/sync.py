"""Synchronous replication, decided without I/O.

The DCS `sync` key states a promise of the leader: every commit it acknowledged is on at least
`quorum` of `members`. The leader keeps the promise true at every moment while it changes
synchronous_standby_names (the daemon drives the steps; this module says what they are):

  1. widen the promise to cover both the old and the new standby set (DCS first when adding);
  2. point PostgreSQL at the new set;
  3. once enough new standbys have flushed past the position of the switch, narrow the
     promise to the new set (PostgreSQL first when removing).

A replica may take over from a dead leader only if the promise names it and it can prove it
holds every acknowledged commit: with `quorum` q of n members, any n - q + 1 of them include
one that has each acknowledged commit, so the candidate must see that many (itself included)
and have at least as much WAL as each of them.

quorum 0 means asynchronous (synchronous_mode off, or degraded with no standby left).
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Iterable, List, Optional, Sequence, Tuple

NO_STANDBY = "governor:no-standby"   # matches no member name (':' is not allowed in names)


@dataclass(frozen=True)
class SyncState:
    leader: Optional[str]
    members: Tuple[str, ...] = ()
    quorum: int = 0
    index: int = 0                    # DCS modification index, for compare-and-swap

    @property
    def synchronous(self) -> bool:
        return self.quorum > 0

    @property
    def voters_needed(self) -> int:
        """How many members must be compared to be sure to include one with every commit."""
        return len(self.members) - self.quorum + 1

    def no_stronger_than(self, other: SyncState) -> bool:
        """True when this promise holds whenever `other`'s does."""
        return set(other.members) <= set(self.members) and self.quorum <= other.quorum \
            or not self.synchronous

    def as_dict(self) -> dict:
        return {"leader": self.leader, "members": list(self.members), "quorum": self.quorum}

    @classmethod
    def from_json(cls, text: Optional[str], index: int = 0) -> Optional[SyncState]:
        """The promise in the `sync` key; None when it does not parse."""
        try:
            data = json.loads(text or "")
            members = data.get("members") or []
            quorum = data.get("quorum") or 0
            leader = data.get("leader")
        except (TypeError, ValueError, AttributeError, RecursionError):
            return None
        if not isinstance(members, list) or not all(isinstance(m, str) for m in members) \
                or isinstance(quorum, bool) or not isinstance(quorum, int) or not 0 <= quorum <= len(members) + 1 \
                or not (leader is None or isinstance(leader, str)):
            return None
        return cls(leader=leader, members=tuple(members), quorum=quorum, index=index)

    @classmethod
    def unknown(cls, index: int) -> SyncState:
        """A `sync` key that does not parse: a promise that may name anyone. Read as synchronous
        with no member known to hold every commit, so no member takes over on its own (an operator
        can still choose one); the leader rewrites or removes the key on its next loop."""
        return cls(leader=None, members=(), quorum=1, index=index)


@dataclass(frozen=True)
class Standby:
    """A standby connected to the leader, as pg_stat_replication shows it."""
    name: str
    streaming: bool
    flush_lsn: Optional[int]


def wanted(mode: str, count: int, strict: bool, leader: str, standbys: Sequence[Standby],
           current: Optional[SyncState]) -> SyncState:
    """The standby set the leader should wait for now, given the set PostgreSQL waits for
    (`current`). `standbys` holds only eligible ones (members, not tagged nosync)."""
    if mode == "off":
        return SyncState(leader, (), 0)
    ours = current if current is not None and current.leader == leader else None
    keep = set(ours.members) if ours else set()
    ready = [s for s in standbys if s.streaming]
    # Stable choice: members already synchronous first, then the most advanced.
    ready.sort(key=lambda s: (s.name not in keep, -(s.flush_lsn or 0), s.name))
    if mode == "quorum":
        names = tuple(sorted(s.name for s in ready))
        quorum = min(count, len(names))
    else:
        names = tuple(sorted(s.name for s in ready[:count]))
        quorum = len(names)
    if names:
        return SyncState(leader, names, quorum)
    if not strict:
        return SyncState(leader, (), 0)         # degraded: writes go on without a standby
    if ours and ours.synchronous:
        return SyncState(leader, ours.members, ours.quorum)   # wait for them to come back
    return SyncState(leader, (), 1)              # nobody yet: writes wait


def widened(*states: SyncState) -> SyncState:
    """One promise that holds whenever any of `states` holds (step 1 of a change)."""
    members = sorted({m for s in states for m in s.members})
    quorum = min(s.quorum for s in states)
    return SyncState(states[0].leader, tuple(members), quorum)


def standby_names(mode: str, state: SyncState) -> str:
    """synchronous_standby_names for the promise `state`."""
    if not state.synchronous:
        return ""
    if not state.members:
        return f'FIRST 1 ("{NO_STANDBY}")'
    listed = ", ".join('"' + name.replace('"', '""') + '"' for name in state.members)
    if mode == "quorum":
        return f"ANY {state.quorum} ({listed})"
    return f"FIRST {state.quorum} ({listed})"


def caught_up(state: SyncState, standbys: Iterable[Standby], switch_lsn: int) -> bool:
    """Step 3 may narrow the promise to `state` once `quorum` of its members flushed past the
    position at which PostgreSQL started waiting for them."""
    if not state.synchronous:
        return True
    flushed = [s for s in standbys if s.name in state.members and (s.flush_lsn or 0) >= switch_lsn]
    return len(flushed) >= state.quorum


def describe(state: Optional[SyncState]) -> str:
    if state is None or not state.synchronous:
        return "asynchronous"
    if not state.members:
        return "synchronous, no standby available (writes wait)"
    return f"synchronous: {state.quorum} of {', '.join(state.members)}"


def voters(state: SyncState, me: str, my_lsn: Optional[int],
           answers: Iterable[Tuple[str, Optional[int]]]) -> Tuple[List[Tuple[str, int]], int]:
    """Sync members whose position is known this loop (me included), and how many are needed."""
    known = [(me, my_lsn or 0)] + [(name, lsn) for name, lsn in answers
                                    if name in state.members and name != me and lsn is not None]
    return known, state.voters_needed
