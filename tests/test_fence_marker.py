"""The leader marker the ExecStopPost fence reads (governor/fence.py): present while the lock fence
is armed, so the fence stops a primary or a promotion in flight and leaves a lockless standby."""
from __future__ import annotations

import os

from governor.fence import LEADER_MARKER, LeaderMarker, lockless_standby


def dirs(tmp_path, standby: bool):
    run, data = tmp_path / "run", tmp_path / "data"
    run.mkdir()
    data.mkdir()
    if standby:
        (data / "standby.signal").write_text("")
    return str(run), str(data)


def test_the_marker_follows_the_lock_fence(tmp_path, monkeypatch):
    run, data = dirs(tmp_path, standby=True)
    monkeypatch.setenv("RUNTIME_DIRECTORY", run)
    marker = LeaderMarker(run, data)
    assert lockless_standby(data)
    marker(1234.5)                      # armed: the lock taken, before any promotion
    assert os.path.exists(os.path.join(run, LEADER_MARKER)) and not lockless_standby(data)
    marker(1240.0)                      # renewals write nothing new
    marker(None)                        # stood down
    assert not os.path.exists(os.path.join(run, LEADER_MARKER)) and lockless_standby(data)


def test_a_stale_marker_goes_when_this_governor_starts_from_a_stopped_standby(tmp_path):
    run, data = dirs(tmp_path, standby=True)
    open(os.path.join(run, LEADER_MARKER), "w").close()
    LeaderMarker(run, data)
    assert not os.path.exists(os.path.join(run, LEADER_MARKER))


def test_a_stale_marker_stays_while_a_standby_runs_that_may_be_promoting_still(tmp_path):
    run, data = dirs(tmp_path, standby=True)
    open(os.path.join(run, LEADER_MARKER), "w").close()
    open(os.path.join(data, "postmaster.pid"), "w").close()
    LeaderMarker(run, data)
    assert os.path.exists(os.path.join(run, LEADER_MARKER))


def test_a_stale_marker_stays_beside_a_former_primarys_data(tmp_path):
    run, data = dirs(tmp_path, standby=False)
    open(os.path.join(run, LEADER_MARKER), "w").close()
    LeaderMarker(run, data)
    assert os.path.exists(os.path.join(run, LEADER_MARKER))


def test_without_a_runtime_directory_or_standby_signal_the_fence_stops(tmp_path, monkeypatch):
    run, data = dirs(tmp_path, standby=False)
    monkeypatch.setenv("RUNTIME_DIRECTORY", run)
    assert not lockless_standby(data)                # a primary's data directory
    (tmp_path / "data" / "standby.signal").write_text("")
    monkeypatch.delenv("RUNTIME_DIRECTORY")
    assert not lockless_standby(data)                # not under systemd: nothing says who held the lock
