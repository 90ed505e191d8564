"""A standby cluster's guards outside decide(): a promotion decided before demote-cluster is not
carried out, demote-cluster --wait waits for a decision taken under the setting, and the standby
leader's configuration streams from the remote with its own slot (or none)."""
from __future__ import annotations

import os
from types import SimpleNamespace

import pytest

from governor import config, ctl_standby, standby
from governor.actions import roles
from governor.actions.base import ActionFailed
from governor.cluster import Cluster, Leader, Member
from governor.ha import Action, Decision, LocalState
from governor.postgres import datadir
from tests.test_config import minimal, write

SITE_A = {"standby_cluster": {"host": "site-a", "port": 5000}}


def test_a_promotion_decided_before_demote_cluster_is_not_carried_out():
    fresh = Cluster(initialize="1", leader=Leader("node1"), config=SITE_A)
    g = SimpleNamespace(dcs=SimpleNamespace(get_cluster=lambda: fresh))
    decision = Decision("lock_held_promote", "promoting", (Action.RENEW_LOCK, Action.PROMOTE))
    with pytest.raises(ActionFailed, match="standby_cluster was set since the decision"):
        roles.promote(g, decision, LocalState(name="node1", data="postgres"))


@pytest.mark.parametrize("role, decision, demoted", [
    ("replica", "lock_held_promote", False),     # a promotion in flight: not done
    ("primary", "standby_leader_demote", False),
    ("replica", "standby_leader_follow_remote", True),
    ("replica", "standby_leader_start", True),
])
def test_demote_cluster_waits_for_a_decision_under_the_setting(monkeypatch, role, decision, demoted):
    monkeypatch.setattr(ctl_standby, "http_json", lambda url, timeout: (200, {"role": role, "decision": decision}))
    leader = Member(name="node1", role="replica", state="running", api_url="http://127.0.0.1:1")
    assert ctl_standby._demoted(leader) is demoted


def test_the_standby_leader_streams_from_the_remote_with_its_slot_and_the_files_restore_command(tmp_path):
    raw = minimal(tmp_path)
    raw["standby_cluster"] = {"restore_command": "cp /archive/%f %p"}     # only the command: no seed
    cfg = config.load(write(tmp_path / "g.yml", raw))
    pg = cfg.postgresql
    assert cfg.standby_cluster is None and pg.standby_restore_command == "cp /archive/%f %p"
    os.makedirs(pg.data_dir, exist_ok=True)
    remote = standby.StandbyCluster("site-a", 5000, "siteb").upstream
    datadir.write_postgresql_conf(pg, standby_of=remote)
    text = open(datadir.conf_path(pg)).read()
    assert "host=''site-a'' port=''5000''" in text   # conninfo quotes, doubled in the file
    assert "primary_slot_name = 'siteb'" in text and "restore_command = 'cp /archive/%f %p'" in text
    datadir.write_postgresql_conf(pg, standby_of=standby.StandbyCluster("site-a").upstream)
    text = open(datadir.conf_path(pg)).read()
    assert "primary_slot_name" not in text and "port=''5432''" in text
    datadir.write_postgresql_conf(pg, standby_of=("10.0.0.2", 5432))      # a member: not from its archive
    text = open(datadir.conf_path(pg)).read()
    assert f"primary_slot_name = '{pg.slot_name}'" in text and "cp /archive" not in text


def test_a_restore_command_in_the_files_seed_stays_out_of_etcd(tmp_path):
    raw = minimal(tmp_path)
    raw["standby_cluster"] = {"host": "site-a", "port": 5000, "restore_command": "cp /archive/%f %p"}
    cfg = config.load(write(tmp_path / "g.yml", raw))
    assert cfg.standby_cluster == {"host": "site-a", "port": 5000}
    assert cfg.postgresql.standby_restore_command == "cp /archive/%f %p"


def test_the_files_standby_cluster_section_is_checked(tmp_path):
    raw = minimal(tmp_path)
    raw["standby_cluster"] = {"host": "site a", "port": 0, "slot": "x"}
    with pytest.raises(config.ConfigError) as info:
        config.load(write(tmp_path / "g.yml", raw))
    text = "\n".join(info.value.problems)
    assert "standby_cluster.host: expected a host name" in text and "standby_cluster.port: expected a port" in text
    assert "standby_cluster.slot: not a setting" in text and "g.yml" in text
    raw["standby_cluster"] = {"host": "site-a", "port": 5000}
    assert config.load(write(tmp_path / "g.yml", raw)).standby_cluster == {"host": "site-a", "port": 5000}


class FakeDCS:
    def __init__(self, cluster):
        self.cluster, self.written = cluster, []

    def set_config(self, data, index):
        self.written.append(data)
        self.cluster = Cluster(initialize=None, leader=None, config=data, config_index=1)
        return True

    def get_cluster(self):
        return self.cluster


def test_the_files_section_seeds_only_a_new_scope_from_an_empty_data_directory(tmp_path):
    from governor import reconfigure
    raw = minimal(tmp_path)
    raw["standby_cluster"] = {"host": "site-a"}
    cfg = config.load(write(tmp_path / "g.yml", raw))
    new_scope = Cluster(initialize=None, leader=None)
    g = SimpleNamespace(config=cfg, pg=cfg.postgresql, dcs=FakeDCS(new_scope), once=lambda *a: None)
    seeded = reconfigure.seed_standby(g, new_scope)
    assert g.dcs.written == [{"standby_cluster": {"host": "site-a"}}] and standby.of(seeded)[1].host == "site-a"
    for cluster in (Cluster(initialize="1", leader=None), Cluster(initialize="", leader=None),
                    Cluster(initialize=None, leader=None, config={"standby_cluster": {"host": "other"}})):
        g.dcs = FakeDCS(cluster)
        assert reconfigure.seed_standby(g, cluster) is cluster and g.dcs.written == []
    os.makedirs(os.path.join(cfg.postgresql.data_dir, "base"))       # data here: the files do not decide
    g.dcs = FakeDCS(new_scope)
    assert reconfigure.seed_standby(g, new_scope) is new_scope and g.dcs.written == []


@pytest.mark.parametrize("row, expected", [
    (("7000000000000000001", 3, "0/3000000", None), ("7000000000000000001", 3)),
    (("not-a-sysid", 3, "0/0", None), None), (("7000000000000000001", True, "", None), None),
    (("7000000000000000001", 2**40, "", None), None), (("7000000000000000001", "3", "", None), None),
    ((), None), (None, None)])
def test_an_identify_system_answer_that_does_not_make_sense_is_no_answer(monkeypatch, tmp_path, row, expected):
    from governor.postgres import remote

    class Cursor:
        def __enter__(self):
            return self

        def __exit__(self, *exc):
            return False

        def execute(self, sql):
            assert sql == "IDENTIFY_SYSTEM"

        def fetchone(self):
            return row

    conn = SimpleNamespace(cursor=Cursor, close=lambda: None)
    monkeypatch.setattr(remote.psycopg2, "connect", lambda **kw: conn)
    pg = config.load(write(tmp_path / "g.yml", minimal(tmp_path))).postgresql
    assert remote.identify(pg, "site-a", 5432) == expected
