"""An idle member's key stays as it is: each change is a put to etcd, and a fleet on one etcd pays
it for every member (bench/fleet.py --model: 1,000 idle clusters made 46 puts/s, each member
rewriting its key once a minute because the free bytes beside its data directory had moved).
The free space is published rounded down to its 6 leading bits (steps of 1/32 to 1/64 of it):
what an upgrade's space check needs, never more than is free."""
from __future__ import annotations

import collections

from governor import upgrade_probe

Usage = collections.namedtuple("Usage", "total used free")


def published(monkeypatch, free: int) -> int:
    monkeypatch.setattr(upgrade_probe.shutil, "disk_usage", lambda path: Usage(0, 0, free))
    upgrade_probe._free_seen.clear()
    return upgrade_probe.free_beside("/var/lib/postgresql/15/main")


def test_the_disk_churn_of_a_working_host_does_not_change_the_member_key(monkeypatch):
    base = 77 * 2**30 + 123_456_789
    seen = {published(monkeypatch, base + delta) for delta in range(0, 200 * 2**20, 16 * 2**20)}
    assert len(seen) <= 2           # WAL segments and logs come and go: one boundary crossed at most
    assert all(base - base // 32 <= value <= base for value in seen)


def test_the_published_figure_is_never_above_what_is_free_and_close_to_it(monkeypatch):
    for free in (0, 1, 4095, 5 * 2**30 + 7, 77 * 2**30 + 123_456_789, 3 * 2**40 + 1):
        value = published(monkeypatch, free)
        assert value <= free and value >= free - free // 32


def test_unknown_stays_unknown(monkeypatch):
    def fail(path):
        raise OSError("gone")
    monkeypatch.setattr(upgrade_probe.shutil, "disk_usage", fail)
    upgrade_probe._free_seen.clear()
    assert upgrade_probe.free_beside("/nonexistent/main") is None
