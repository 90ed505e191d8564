"""The checks before a major-version upgrade, as judged from etcd and from the leader's findings
(governor/upgrade.py): each problem names the member and the reason."""
from __future__ import annotations

import json
from dataclasses import replace

import pytest

from governor import upgrade
from governor.cluster import Cluster, Leader, Member, Switchover, UpgradeRecord

MB = 2**20


def member(name: str, role: str = "replica", lsn: int = 100 * MB, majors=(15, 17), state: str = "running") -> Member:
    return Member(name=name, role=role, state=state, lsn=lsn, pg_majors=tuple(majors))


def healthy(**changes) -> Cluster:
    base = dict(initialize="7", leader=Leader("db1"),
                members=(member("db1", "primary"), member("db2"), member("db3")))
    base.update(changes)
    return Cluster(**base)


def test_a_healthy_cluster_with_the_target_installed_everywhere_passes():
    assert upgrade.cluster_problems(healthy(), 17, "db1") == []


def test_each_member_without_the_target_is_named_with_what_it_has():
    cluster = healthy(members=(member("db1", "primary"), member("db2", majors=(15,)), member("db3", majors=())))
    problems = upgrade.cluster_problems(cluster, 17, "db1")
    assert problems == [
        "db2: PostgreSQL 17 is not installed (found 15): install the postgresql-17 package there",
        "db3: does not report which PostgreSQL versions are installed (its governor is older than this one): "
        "upgrade governor there first"]


def test_replicas_must_run_and_stream_close_behind():
    behind = 200 * MB - upgrade.LAG_MAX - 1
    cluster = healthy(members=(member("db1", "primary", lsn=200 * MB), member("db2", lsn=behind),
                               member("db3", state="starting"), member("db4", lsn=None)))
    problems = upgrade.cluster_problems(cluster, 17, "db1")
    assert problems == [f"db2: {upgrade.LAG_MAX + 1} bytes behind the leader (at most {upgrade.LAG_MAX} when the "
                        "upgrade starts)", "db3: not a running replica (replica, starting)",
                        "db4: its position or the leader's is unknown"]


def test_replicas_must_also_replay_close_behind_as_the_leader_sees_them():
    """A replica may receive everything and replay far behind (a standby query holding replay):
    stopped then, it stops short of the leader's last checkpoint and cannot link its files. The
    leader's pg_stat_replication says how far each one has replayed."""
    replaying = {"db2": upgrade.LAG_MAX + 1, "db3": None, "db1": 10**12, "pg_basebackup": 10**12}
    problems = upgrade.cluster_problems(healthy(), 17, "db1", replay_behind=replaying)
    assert problems == [f"db2: replays {upgrade.LAG_MAX + 1} bytes behind the leader (at most {upgrade.LAG_MAX} "
                        "when the upgrade starts: it would stop short of the leader's last checkpoint and be cloned "
                        "instead of linked)",
                        "db3: the leader does not know how far it has replayed"]
    assert upgrade.cluster_problems(healthy(), 17, "db1", replay_behind={"db2": upgrade.LAG_MAX, "db3": 0}) == []


def test_maintenance_mode_and_a_pending_switchover_refuse():
    problems = upgrade.cluster_problems(healthy(paused=True, switchover=Switchover("db1", "db2", 0.0)), 17, "db1")
    assert problems[:2] == ["maintenance mode is on: resume first (governorctl resume)",
                            "a switchover is pending: let it finish or cancel it first"]
    assert upgrade.cluster_problems(None, 17, "db1") == ["etcd is not reachable from the leader"]


def test_the_leaders_findings_each_become_a_problem_naming_it():
    facts = upgrade.LeaderFacts(data_major=15, target_bin=None, prepared=2, long_transactions=("pid 7 (app)",),
                                missing_extensions=("postgis (database shop)",), free_bytes=10 * MB,
                                needed_bytes=256 * MB, pg_upgrade="Checking for reg* data types ... fatal",
                                errors=("could not ask PostgreSQL (timeout)",))
    problems = upgrade.leader_problems(facts, 17, "db1")
    assert all(p.startswith("db1 (leader): ") for p in problems), problems
    text = "\n".join(problems)
    for expected in ("could not ask PostgreSQL", "no binaries of PostgreSQL 17", "2 prepared transaction(s)",
                     "open for more than 60 s: pid 7", "extension postgis (database shop) is not installed for "
                     "PostgreSQL 17", "10 MB free", "pg_upgrade --check: Checking for reg*"):
        assert expected in text
    assert len(problems) == 7
    fine = upgrade.LeaderFacts(data_major=15, target_bin="/usr/lib/postgresql/17/bin", free_bytes=10**12)
    assert upgrade.leader_problems(fine, 17, "db1") == []
    assert upgrade.leader_problems(fine, 15, "db1") == [
        "the cluster runs PostgreSQL 15: --to must name a later major version"]


@pytest.mark.parametrize("value", [True, "17", 9, 100, 17.0, None])
def test_a_target_that_is_no_major_version_is_refused(value):
    assert upgrade.target_problem(value).startswith("to: expected a PostgreSQL major version")


@pytest.mark.parametrize("raw,parsed", [([15, 17], (15, 17)), ([17, 15, 17], (15, 17)), ("15", ()),
                                        ([True, -1, 1000, "17", 16], (16,)), (list(range(1, 40)), ())])
def test_the_installed_versions_in_a_member_key_are_parsed_as_hostile(raw, parsed):
    assert Member.from_json("db1", json.dumps({"role": "replica", "pg_majors": raw})).pg_majors == parsed


def test_cleanup_finds_only_old_clusters_set_aside_beside_a_newer_one(tmp_path):
    from governor import upgrade_cleanup

    def cluster(path, major, running=False):
        path.mkdir()
        (path / "PG_VERSION").write_text(f"{major}\n")
        if running:
            (path / "postmaster.pid").write_text("1\n")
        return str(path)
    data = cluster(tmp_path / "main", 17)
    old = cluster(tmp_path / "main.pg15", 15)
    cluster(tmp_path / "main.pg16", 15)             # not what its name says
    cluster(tmp_path / "main.pg14", 14, running=True)
    cluster(tmp_path / "main.pg15x", 15)
    (tmp_path / "main.pg13").write_text("a file")
    assert upgrade_cleanup.leftovers(data) == [(old, 15)]
    (tmp_path / "main.analyze.log").write_text("done")
    assert upgrade_cleanup.remove(data) == [old, f"{data}.analyze.log"]
    assert not (tmp_path / "main.pg15").exists() and (tmp_path / "main.pg16").exists()
    assert upgrade_cleanup.leftovers(cluster(tmp_path / "other", 15)) == [], "nothing beside a cluster not upgraded"


def test_settings_the_target_refuses_are_named_before_anything_stops():
    from governor import upgrade_probe
    from governor.postgres.catalogue import catalogue
    from tests.harness import PG_BIN
    refused = upgrade_probe.refused_parameters({"work_mem": "4MB", "no_such_setting": "1", "max_connections": "x"},
                                               catalogue(PG_BIN))
    assert [r.split(":")[0] for r in refused] == ["no_such_setting", "max_connections"], refused
    facts = upgrade.LeaderFacts(data_major=15, target_bin="/x", free_bytes=10**12, parameters=refused[:1])
    assert upgrade.leader_problems(facts, 17, "db1") == [
        f"db1 (leader): postgresql.parameters.{refused[0]} (PostgreSQL 17): change it in the files and the dynamic "
        "configuration first; the new version would not start with it"]


def test_a_replica_without_room_for_a_second_copy_is_named():
    """A replica keeps its old data directory and clones the upgraded leader beside it (a first
    bench run filled a container's disk that way, after the point of no return)."""
    cramped = replace(member("db2"), disk_free=900 * MB)
    roomy = replace(member("db3"), disk_free=10**12)
    cluster = healthy(members=(member("db1", "primary"), cramped, roomy))
    assert upgrade.cluster_problems(cluster, 17, "db1", database_bytes=1024 * MB) == [
        "db2: 900 MB free beside its data directory; it clones the upgraded leader there while keeping its old "
        "directory: about 1484 MB needed"]
    assert upgrade.cluster_problems(cluster, 17, "db1", database_bytes=100 * MB) == []


@pytest.mark.parametrize("text", [
    "", "null", "[]", "{", '"x"',
    json.dumps({"to": 10**30, "from": 15, "leader": "a", "sysid": "1", "step": "started"}),
    json.dumps({"to": 17, "from": 15, "leader": "a", "sysid": "1", "step": "exploded"}),
    json.dumps({"to": 17, "from": 15, "leader": "a", "sysid": "1; rm -rf /", "step": "stopped"}),
    json.dumps({"to": True, "from": 15, "leader": "a", "sysid": "1", "step": "stopped"}),
    json.dumps({"to": 17, "from": 15, "leader": "a", "sysid": "1", "step": "stopped", "initdb": ["--waldir=/etc"]}),
    json.dumps({"to": 17, "from": 15, "leader": "a", "sysid": "1", "step": "stopped", "initdb": ["-X", "/tmp"]}),
    json.dumps({"to": 17, "from": 15, "leader": "a", "sysid": "1", "step": "stopped", "initdb": [{"a": 1}]}),
    "\udcff" * 10, "[" * 100000,
])
def test_a_hostile_upgrade_record_is_unknown_and_everyone_holds(text):
    """The record comes from etcd: anything but what a leader writes is unknown (no step is taken, no
    failover either), and no initdb option that chooses where files go or what runs gets through."""
    from governor import ha
    from governor.dcs.keys import Entry, build_cluster
    assert UpgradeRecord.from_json(text, 3) is None
    cluster = build_cluster([Entry("initialize", "1", 1), Entry("upgrade", text, 3)], 3)
    assert cluster.upgrade is None and cluster.upgrade_unreadable
    state = ha.LocalState(name="b", data=ha.POSTGRES, sysid="1", running=True, role="replica")
    assert ha.decide(cluster, state).case == "upgrade_unknown"


def test_the_record_a_leader_writes_reads_back():
    record = UpgradeRecord(to=17, source=15, leader="db1", sysid="7", step="stopped",
                           initdb=("-U", "postgres", "-A", "trust", "--encoding=UTF8", "--lc-collate=C.UTF-8",
                                   "--lc-ctype=C.UTF-8", "--locale-provider=icu", "--icu-locale=en-US",
                                   "--data-checksums"))
    assert UpgradeRecord.from_json(json.dumps(record.as_dict()), 5) == replace(record, index=5)
