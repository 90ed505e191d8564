"""The synchronous replication rules (governor/sync.py), without a cluster."""
from __future__ import annotations

import json

from governor import sync
from governor.sync import Standby, SyncState

A, B, C = (Standby("a", True, 300), Standby("b", True, 200), Standby("c", True, 100))


def test_on_mode_picks_the_most_advanced_and_keeps_a_current_choice():
    chosen = sync.wanted("on", 1, False, "L", [C, B, A], None)
    assert (chosen.members, chosen.quorum) == (("a",), 1)
    current = SyncState("L", ("c",), 1)
    assert sync.wanted("on", 1, False, "L", [A, B, C], current).members == ("c",), "no churn"
    two = sync.wanted("on", 2, False, "L", [A, B, C], None)
    assert (two.members, two.quorum) == (("a", "b"), 2)


def test_quorum_mode_lists_every_streaming_standby():
    chosen = sync.wanted("quorum", 2, False, "L", [A, B, C], None)
    assert (chosen.members, chosen.quorum) == (("a", "b", "c"), 2)
    assert sync.standby_names("quorum", chosen) == 'ANY 2 ("a", "b", "c")'
    assert chosen.voters_needed == 2
    fewer = sync.wanted("quorum", 2, False, "L", [A], None)
    assert (fewer.members, fewer.quorum) == (("a",), 1)


def test_without_standbys_non_strict_degrades_and_strict_keeps_waiting():
    gone = [Standby("a", False, 300)]
    current = SyncState("L", ("a",), 1)
    degraded = sync.wanted("on", 1, False, "L", gone, current)
    assert not degraded.synchronous and sync.standby_names("on", degraded) == ""
    strict = sync.wanted("on", 1, True, "L", gone, current)
    assert (strict.members, strict.quorum) == (("a",), 1)
    assert sync.standby_names("on", strict) == 'FIRST 1 ("a")'
    nobody = sync.wanted("on", 1, True, "L", [], None)
    assert nobody.synchronous and not nobody.members
    assert sync.standby_names("on", nobody) == f'FIRST 1 ("{sync.NO_STANDBY}")'


def test_a_change_is_promised_widely_first_and_narrowed_only_after_catching_up():
    old, new = SyncState("L", ("a",), 1), SyncState("L", ("b",), 1)
    middle = sync.widened(old, new)
    assert (middle.members, middle.quorum) == (("a", "b"), 1)
    assert middle.voters_needed == 2, "either may hold a commit: both must be compared"
    assert not sync.caught_up(new, [Standby("b", True, 99)], switch_lsn=100)
    assert sync.caught_up(new, [Standby("b", True, 100)], switch_lsn=100)
    to_async = sync.widened(old, SyncState("L", (), 0))
    assert not to_async.synchronous


def test_voters_count_only_answering_sync_members():
    promise = SyncState("L", ("me", "b", "c"), 2)
    known, needed = sync.voters(promise, "me", 10, [("b", 12), ("c", None), ("x", 50)])
    assert known == [("me", 10), ("b", 12)] and needed == 2


def test_the_dcs_value_round_trips_and_garbage_is_ignored():
    state = SyncState("L", ("a", "b"), 1, index=7)
    assert SyncState.from_json(json.dumps(state.as_dict()), 7) == state
    assert SyncState.from_json("not json") is None
    assert sync.describe(state) == "synchronous: 1 of a, b"
