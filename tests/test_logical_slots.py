"""postgresql.logical_slots: validated in the configuration; the settings governor writes for them
(wal_level logical; on PostgreSQL 17 the standbys sync failover slots and the primary waits for
the streaming standbys' slots). The live test through a failover runs on Debian 13's PostgreSQL 17
(tests/test_logical_failover.py)."""
from __future__ import annotations

import pytest

from governor import config
from governor.postgres import datadir

PG = {"name": "pg1", "data_dir": "/tmp/none", "bin_dir": "/usr/lib/postgresql/15/bin",
      "replication": {"password": "p"}, "permanent_slots": ["archiver"]}


def validated(slots) -> config.Config:
    return config.validate({"etcd": {"scope": "s"}, "postgresql": dict(PG, logical_slots=slots)}, {}, "governor.yml")


def test_logical_slots_are_read_with_the_default_plugin():
    cfg = validated([{"name": "cdc", "database": "shop"},
                     {"name": "audit", "database": "shop", "plugin": "test_decoding"}])
    assert cfg.postgresql.logical_slots == (("cdc", "shop", "pgoutput"), ("audit", "shop", "test_decoding"))


@pytest.mark.parametrize("slots,said", [
    ({"name": "cdc"}, "postgresql.logical_slots: expected a list"),
    (["cdc"], "postgresql.logical_slots[0]: expected {name: SLOT, database: DB"),
    ([{"name": "cdc"}], "postgresql.logical_slots[0]: expected {name: SLOT, database: DB"),
    ([{"name": "cdc", "database": "shop", "slot_type": "x"}], "postgresql.logical_slots[0]: expected {name"),
    ([{"name": "Bad-Name", "database": "shop"}], "postgresql.logical_slots[0]: expected a slot name"),
    ([{"name": "archiver", "database": "shop"}], "postgresql.logical_slots[0]: expected a slot name"),
    ([{"name": "cdc", "database": "a"}, {"name": "cdc", "database": "b"}], "postgresql.logical_slots[1]: expected a"),
    ([{"name": "cdc", "database": "shop", "plugin": "x; rm"}], "expected a database name and an output plugin"),
])
def test_a_bad_logical_slot_is_refused(slots, said):
    with pytest.raises(config.ConfigError) as err:
        validated(slots)
    assert said in str(err.value)


def conf(tmp_path, **kwargs) -> str:
    cfg = validated([{"name": "cdc", "database": "shop"}]).postgresql
    from dataclasses import replace
    cfg = replace(cfg, data_dir=str(tmp_path))
    datadir.write_postgresql_conf(cfg, **kwargs)
    with open(datadir.conf_path(cfg)) as fh:
        return fh.read()


def test_a_standby_syncs_failover_slots_and_the_primary_waits_for_streaming_standbys(tmp_path):
    standby = conf(tmp_path, standby_of=("10.0.0.1", 5432), slot_sync="shop")
    assert "wal_level = 'logical'" in standby and "sync_replication_slots = 'on'" in standby
    assert "hot_standby_feedback = 'on'" in standby and "dbname=''shop''" in standby
    primary = conf(tmp_path, standby_of=None, slot_sync="shop", standby_slots="pg2,pg3")
    assert "synchronized_standby_slots = 'pg2,pg3'" in primary and "sync_replication_slots" not in primary
    before_17 = conf(tmp_path, standby_of=("10.0.0.1", 5432))      # no slot sync on PostgreSQL < 17
    assert "sync_replication_slots" not in before_17 and "dbname" not in before_17
