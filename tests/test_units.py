"""The systemd units: valid for systemd itself, and consistent with governor's timing rules."""
from __future__ import annotations

import configparser
import os
import shutil
import subprocess
import time

import pytest

from governor import config
from tests.harness import REPO

UNITS = ("governor.service", "governor@.service")


def unit(name: str) -> configparser.ConfigParser:
    parser = configparser.ConfigParser(strict=False, interpolation=None)
    parser.optionxform = str
    parser.read(os.path.join(REPO, "systemd", name))
    return parser


@pytest.mark.skipif(not shutil.which("systemd-analyze"), reason="systemd-analyze is not installed")
def test_units_pass_systemd_analyze_verify(tmp_path):
    # A root holding systemd's own units, the governor units and an executable /usr/bin/governor.
    root = tmp_path / "root"
    shutil.copytree("/lib/systemd/system", root / "lib/systemd/system", symlinks=True)
    (root / "etc/systemd/system").mkdir(parents=True)
    (root / "usr/bin").mkdir(parents=True)
    (root / "bin").mkdir()
    shutil.copy("/bin/kill", root / "bin/kill")
    (root / "usr/bin/governor").write_text("#!/bin/sh\n")
    (root / "usr/bin/governor").chmod(0o755)
    for name in UNITS:
        shutil.copy(os.path.join(REPO, "systemd", name), root / "etc/systemd/system" / name)
    for name in ("governor.service", "governor@main.service"):
        result = subprocess.run(["systemd-analyze", "verify", "--man=no", f"--root={root}",
                                 f"/etc/systemd/system/{name}"], capture_output=True, text=True)
        assert result.returncode == 0 and not result.stderr.strip(), result.stderr


def test_watchdog_fits_the_default_timings(tmp_path):
    raw = {"etcd": {"scope": "s"}, "postgresql": {"name": "n", "data_dir": str(tmp_path / "data"),
                                                   "bin_dir": "/usr/lib/postgresql/15/bin",
                                                   "replication": {"password": "x"}}}
    cfg = config.validate(raw, {}, "defaults")
    ttl, loop_wait, retry_timeout = cfg.etcd.ttl, cfg.loop_wait, cfg.retry_timeout
    for name in UNITS:
        service = unit(name)["Service"]
        assert service["Type"] == "notify" and service["NotifyAccess"] == "main"
        assert service["User"] == "postgres"
        watchdog = int(service["WatchdogSec"].rstrip("s"))
        assert watchdog + 2 < ttl, "a hung leader must be fenced before its lock expires"
        assert watchdog > 2 * retry_timeout + 2, "a loop waiting twice on a slow etcd must not be killed"
        assert loop_wait < watchdog
        assert service["KillMode"] == "process", "restarting governor must not kill PostgreSQL"
        assert "--fence" in service["ExecStopPost"]
        with open(os.path.join(REPO, "systemd", name)) as fh:
            reloads = [line.split("=", 1)[1].strip() for line in fh if line.startswith("ExecReload=")]
        assert reloads[0].startswith("/usr/bin/governor --validate-config /etc/governor"), \
            "a file that does not validate must fail the reload, not be reported as reloaded"
        assert reloads[1:] == ["/bin/kill -HUP $MAINPID"]


def test_restart_marker_is_honoured_only_when_fresh(tmp_path, monkeypatch):
    from governor.daemon import RESTART_MARKER, consume_restart_marker

    monkeypatch.setenv("RUNTIME_DIRECTORY", str(tmp_path))
    marker = tmp_path / RESTART_MARKER
    assert consume_restart_marker(max_age=120) is False, "no marker: a clean stop"
    marker.touch()
    assert consume_restart_marker(max_age=120) is True
    assert not marker.exists(), "consumed"
    marker.touch()
    old = marker.stat().st_mtime - 600
    os.utime(marker, (old, old))
    assert consume_restart_marker(max_age=120) is False, "a stale marker does not keep PostgreSQL running"
    assert not marker.exists()
    monkeypatch.delenv("RUNTIME_DIRECTORY")
    assert consume_restart_marker(max_age=120) is False, "outside systemd there is no marker"


def test_failed_passes_back_off_and_a_success_resets():
    from governor.backoff import Backoff
    b = Backoff()
    delays = [b.next_delay(False, 10, started=0.0, now=0.0) for _ in range(10)]
    assert delays[:4] == [0.1, 0.2, 0.4, 0.8]
    assert max(delays) == 10, "capped at loop_wait"
    assert b.next_delay(True, 10, started=0.0, now=2.5) == 7.5, "after a success: the rest of loop_wait"
    assert b.next_delay(False, 10, started=0.0, now=0.0) == 0.1


def test_every_action_has_exactly_one_executor():
    from governor.actions import EXECUTORS
    from governor.daemon import Governor
    from governor.ha import Action
    assert set(EXECUTORS) == set(Action), set(Action) ^ set(EXECUTORS)
    assert len(set(EXECUTORS.values())) == len(EXECUTORS), "one function per action"
    assert all(EXECUTORS[a].__name__ == a.value for a in Action), "each named after its action"
    assert not [name for name in dir(Governor) if name.startswith("do_")], "no executor left on Governor"


def test_slot_plan_creates_for_members_and_drops_orphans_only_after_the_ttl():
    from governor import slots
    from governor.cluster import Member
    members = [Member("node1", conn_url="postgres://h1:5432/p"), Member("node2", conn_url="postgres://h2:5432/p"),
               Member("evil", conn_url="postgres://x' y:5432/p"), Member("ghost")]
    from governor.cluster import Cluster
    wanted = slots.wanted_slots(Cluster(initialize="1", leader=None, members=tuple(members)), "node1")
    assert wanted == {"node2"}, "only valid member records, never our own"
    existing = {"node2": True, "gone": False, "busy": True, "archiver": False}
    first = slots.plan(existing, wanted | {"node3"}, ["archiver"], {}, now=100.0, ttl=60)
    assert first.create == ("node3",) and first.drop == () and first.orphan_since == {"gone": 100.0}
    later = slots.plan(existing, wanted, ["archiver"], first.orphan_since, now=170.0, ttl=60)
    assert later.drop == (("gone", 70.0),) and later.orphan_since == {}
    never = slots.plan(existing, wanted, [], {"gone": 0.0}, now=10**6, ttl=0)
    assert never.drop == (), "member_slots_ttl 0 never drops"


def test_timer_measures_how_long_a_condition_has_held():
    from governor.memory import timer
    assert timer(None, False, 5.0) == (None, None)
    assert timer(None, True, 5.0) == (5.0, 0.0)
    assert timer(3.0, True, 5.0) == (3.0, 2.0)
    assert timer(3.0, False, 5.0) == (None, None), "ends when the condition does"


def test_a_wake_during_a_pass_is_not_lost(tmp_path):
    """A change the watch reports while a pass runs (the lock this pass took, an operator's
    request, a member that just became a running replica) makes the next pass run at once: the
    pass read etcd before it, so sleeping loop_wait would leave /status and the API's checks stale."""
    from governor.daemon import Governor
    raw = {"loop_wait": 10, "etcd": {"scope": "s", "api": 3},
           "postgresql": {"name": "n", "data_dir": str(tmp_path / "data"), "bin_dir": "/usr/lib/postgresql/15/bin",
                          "replication": {"password": "x"}}, "metrics": {"enabled": False}}
    g = Governor(config.validate(raw, {}, "defaults"))
    g.wake.set()                     # set by the watch thread while run_once was busy
    started = time.monotonic()
    g.sleep(10)
    assert time.monotonic() - started < 1
    g.wake.clear()
    started = time.monotonic()
    g.sleep(0.5)                     # nothing happened: the whole sleep
    assert time.monotonic() - started >= 0.45


def test_a_member_that_streams_from_a_replica_has_its_slot_there_and_not_on_the_leader():
    from governor import slots
    from governor.cluster import Cluster, Leader, Member

    def snapshot(node2_state: str) -> Cluster:
        return Cluster(initialize="1", leader=Leader("node1"), members=(
            Member("node1", role="primary", state="running", conn_url="postgres://h1:5432/p"),
            Member("node2", role="replica", state=node2_state, conn_url="postgres://h2:5432/p"),
            Member("node3", role="replica", state="running", conn_url="postgres://h3:5432/p",
                   tags={"replicatefrom": "node2"})))
    cascading = snapshot("running")
    assert slots.wanted_slots(cascading, "node1") == {"node2"}
    assert slots.cascade_slots(cascading, "node2") == {"node3"} and slots.cascade_slots(cascading, "node3") == set()
    fallen_back = snapshot("stopped")       # node2 down: node3 follows the leader, whose slot it needs again
    assert slots.wanted_slots(fallen_back, "node1") == {"node2", "node3"}
    assert slots.cascade_slots(fallen_back, "node2") == set()


def test_permanent_slot_copies_move_forward_to_the_leaders_position_never_back():
    from governor import slots
    mine = {"archiver": 100, "cdc": 500, "node3": 50}
    leaders = {"archiver": 300, "cdc": 400, "other": 900}
    assert slots.copies_to_advance(mine, leaders, ["archiver", "cdc", "missing"], segment=0) == {"archiver": 300}


def test_permanent_slot_copies_stop_at_the_start_of_the_leaders_segment():
    """pg_receivewal confirms mid-segment positions while it streams and, when it stops, only the
    end of its last complete segment: its slot moves back within the segment. A copy moved to a
    mid-segment position would then be ahead of what the consumer confirmed; at the segment's
    start it holds the same WAL (PostgreSQL keeps whole segments) and is never ahead."""
    from governor import slots
    mb16 = 16 * 2**20
    leaders = {"archiver": 4 * mb16 + 232}
    assert slots.copies_to_advance({"archiver": mb16}, leaders, ["archiver"], segment=mb16) == {"archiver": 4 * mb16}
    assert slots.copies_to_advance({"archiver": 4 * mb16}, leaders, ["archiver"], segment=mb16) == {}


def test_slot_positions_in_a_member_key_are_read_defensively():
    from governor.cluster import Member
    text = ('{"slots": {"archiver": 300, "Bad Name": 1, "neg": -1, "big": 18446744073709551616, "flag": true, '
            '"str": "5"}}')
    assert Member.from_json("node1", text).slots == {"archiver": 300}
    assert Member.from_json("node1", '{"slots": [1, 2]}').slots == {}


def test_hostile_member_keys_cannot_bend_cascading_or_versions():
    """Values another member's key may carry: a replicatefrom that is no name, a cycle through
    many members, a version that is no number — unknown, never an upstream or an error."""
    from governor.cluster import Cluster, Leader, Member
    from governor.ctl_view import _pg_version
    members = [Member("node1", role="primary", state="running", conn_url="postgres://h1:5432/p")]
    members += [Member(f"n{i}", role="replica", state="running", conn_url=f"postgres://h{i}:5432/p",
                       tags={"replicatefrom": f"n{(i + 1) % 200}"}) for i in range(200)]       # one long loop
    members += [Member("odd", role="replica", state="running", tags={"replicatefrom": ["n1"]})]
    cluster = Cluster(initialize="1", leader=Leader("node1"), members=tuple(members))
    assert cluster.upstream_of("n0") is None and cluster.upstream_of("odd") is None
    assert Member.from_json("x", '{"pg_version": 1e400, "version": {"a": 1}}').version is None
    assert _pg_version(10**30) is None and _pg_version(True) is None and _pg_version(150010) == "15.10"
