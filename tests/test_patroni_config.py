"""`governorctl migrate --from-patroni`: Patroni's documented configuration keys become governor's
files; each key that is not carried over is named with why; a key whose loss would change what is
safe is refused (exit 2, nothing written)."""
from __future__ import annotations

import grp
import json
import os
import stat

import pytest
import yaml

from governor import config as config_mod
from governor import dynamic, patroni_config, patroni_keys
from governor.ctl import main as ctl
from governor.settings import slot_name_for
from tests.harness import PG_BIN


@pytest.fixture
def host(tmp_path):
    """What a Patroni host has: a data directory's parent, callback scripts, certificates."""
    (tmp_path / "pg").mkdir()
    for script in ("cb.sh", "pre_promote.sh", "stop.sh"):
        path = tmp_path / script
        path.write_text("#!/bin/sh\nexit 0\n")
        path.chmod(0o755)
    for name in ("api.crt", "api.key", "ca.crt"):
        (tmp_path / name).write_text("-")
    return tmp_path


def patroni_yml(d) -> dict:
    """A Patroni member's file with the keys Patroni's documentation lists for a three-host etcd setup."""
    return {
        "scope": "shop", "namespace": "/service/", "name": "db1",
        "log": {"level": "INFO", "type": "json", "dir": "/var/log/patroni", "file_num": 4},
        "restapi": {"listen": "0.0.0.0:8008", "connect_address": "10.0.0.11:8008",
                    "authentication": {"username": "admin", "password": "api-secret"},
                    "certfile": str(d / "api.crt"), "keyfile": str(d / "api.key"), "cafile": str(d / "ca.crt"),
                    "verify_client": "optional", "allowlist": ["10.0.0.0/24"], "http_extra_headers": {"X": "y"}},
        "ctl": {"insecure": False, "cacert": str(d / "ca.crt")},
        "etcd3": {"hosts": ["10.0.0.11:2379", "10.0.0.12:2379", "10.0.0.13:2379"], "protocol": "https",
                  "cacert": str(d / "ca.crt"), "cert": str(d / "api.crt"), "key": str(d / "api.key"),
                  "username": "patroni", "password": "etcd-secret"},
        "bootstrap": {
            "dcs": {"ttl": 30, "loop_wait": 10, "retry_timeout": 10, "maximum_lag_on_failover": 1048576,
                    "synchronous_mode": False, "failsafe_mode": True, "check_timeline": True,
                    "postgresql": {"use_pg_rewind": True, "use_slots": True,
                                   "parameters": {"max_connections": 200, "wal_keep_size": "512MB"}},
                    "slots": {"backup": {"type": "physical"},
                              "cdc": {"type": "logical", "database": "shop", "plugin": "pgoutput"}},
                    "member_slots_ttl": "30min"},
            "initdb": [{"encoding": "UTF8"}, "data-checksums"],
            "post_bootstrap": "/usr/local/bin/setup.sh",
        },
        "postgresql": {
            "listen": "0.0.0.0:5432", "connect_address": "10.0.0.11:5432", "data_dir": str(d / "pg" / "data"),
            "bin_dir": PG_BIN, "pgpass": str(d / "pgpass"),
            "authentication": {"superuser": {"username": "postgres", "password": "su-secret"},
                               "replication": {"username": "replicator", "password": "repl-secret",
                                               "sslmode": "require"},
                               "rewind": {"username": "rewind_user", "password": "rw-secret"}},
            "parameters": {"unix_socket_directories": "/var/run/postgresql", "shared_buffers": "256MB"},
            "pg_hba": ["host all all 10.0.0.0/24 scram-sha-256"],
            "pg_ident": ["map1 alice postgres"],
            "callbacks": {"on_role_change": str(d / "cb.sh"), "on_start": f"{d / 'cb.sh'} --quiet"},
            "pre_promote": str(d / "pre_promote.sh"), "before_stop": str(d / "stop.sh"),
            "create_replica_methods": ["pgbackrest", "basebackup"],
            "pgbackrest": {"command": "/usr/bin/pgbackrest --stanza=shop --delta restore", "keep_data": True,
                           "no_params": True},
            "basebackup": {"max-rate": "100M", "checkpoint": "fast"},
            "pg_ctl_timeout": 60, "use_unix_socket": True, "remove_data_directory_on_rewind_failure": False,
        },
        "watchdog": {"mode": "automatic", "device": "/dev/watchdog", "safety_margin": 5},
        "tags": {"nofailover": False, "noloadbalance": False, "clonefrom": True, "nosync": False,
                 "failover_priority": 2, "sync_priority": 1, "datacenter": "east"},
    }


def test_a_documented_patroni_file_becomes_a_governor_file_governor_accepts(host):
    t = patroni_config.translate(patroni_yml(host))
    assert t.refused == []
    f = t.files
    assert f["etcd"] == {"scope": "shop", "api": 3, "host": ["10.0.0.11:2379", "10.0.0.12:2379", "10.0.0.13:2379"],
                         "protocol": "https", "cacert": str(host / "ca.crt"), "cert": str(host / "api.crt"),
                         "key": str(host / "api.key"), "username": "patroni", "password": "etcd-secret", "ttl": 30}
    assert f["restapi"] == {"listen": "0.0.0.0:8008", "connect_address": "10.0.0.11:8008",
                            "certfile": str(host / "api.crt"), "keyfile": str(host / "api.key"),
                            "cafile": str(host / "ca.crt"), "username": "admin", "password": "api-secret",
                            "verify_client": "required"}
    pg = f["postgresql"]
    assert (pg["name"], pg["listen"], pg["connect_address"], pg["bin_dir"]) == \
        ("db1", "0.0.0.0:5432", "10.0.0.11:5432", PG_BIN)
    assert pg["superuser"] == {"username": "postgres", "password": "su-secret"}
    assert pg["replication"] == {"username": "replicator", "password": "repl-secret", "sslmode": "require"}
    assert pg["parameters"] == {"unix_socket_directories": "/var/run/postgresql", "shared_buffers": "256MB",
                                "max_connections": 200, "wal_keep_size": "512MB",
                                # what Patroni put on postgres' command line: the values the servers run with
                                "max_wal_senders": 10, "max_prepared_transactions": 0, "max_locks_per_transaction": 64,
                                "track_commit_timestamp": "off", "max_replication_slots": 10,
                                "max_worker_processes": 8, "wal_log_hints": "on"}
    assert pg["permanent_slots"] == ["backup"]
    assert pg["logical_slots"] == [{"name": "cdc", "database": "shop", "plugin": "pgoutput"}]
    assert pg["member_slots_ttl"] == 1800
    assert pg["create_replica_methods"] == ["pgbackrest", "basebackup"]
    assert pg["archive"] == {"pgbackrest": {"stanza": "shop"}}
    assert pg["initdb"] == ["--encoding=UTF8", "--data-checksums"]
    assert (pg["start_timeout"], pg["use_pg_rewind"], pg["maximum_lag_on_failover"]) == (60, True, 1048576)
    assert f["callbacks"] == {"on_role_change": str(host / "cb.sh"), "on_start": [str(host / "cb.sh"), "--quiet"],
                              "pre_promote": str(host / "pre_promote.sh"), "before_stop": str(host / "stop.sh")}
    assert (f["loop_wait"], f["retry_timeout"], f["synchronous_mode"], f["failsafe_mode"]) == (10, 10, False, True)
    assert f["tags"] == {"nofailover": False, "noloadbalance": False, "clonefrom": True, "nosync": False,
                         "failover_priority": 2}
    assert (f["log_level"], f["log_format"], f["watchdog"]) == ("INFO", "json", {"mode": "automatic",
                                                                                 "device": "/dev/watchdog"})
    notes = "\n".join(t.notes)
    for key in ("log.dir,file_num", "restapi.allowlist", "restapi.http_extra_headers", "restapi.verify_client",
                "ctl", "bootstrap.dcs.check_timeline", "postgresql.authentication.rewind", "postgresql.pg_ident",
                "postgresql.basebackup", "postgresql.use_unix_socket", "bootstrap.post_bootstrap",
                "tags.sync_priority", "tags.datacenter", "watchdog.safety_margin", "postgresql.pgbackrest",
                "postgresql.callbacks.on_role_change", "postgresql.pre_promote"):
        assert f"\n{key}: " in f"\n{notes}", f"{key} is not reported:\n{notes}"
    assert "ACTION ROLE SCOPE, which Patroni did not give" in notes     # pre_promote's arguments differ
    assert "never master, standby_leader or demoted" in notes
    config_mod.validate(t.files, {}, "translated")      # governor accepts what it wrote


def test_a_members_own_value_of_a_command_line_setting_is_what_patroni_ignored(host):
    p = patroni_yml(host)
    p["postgresql"]["parameters"]["max_connections"] = 30       # Patroni runs the cluster's 200
    t = patroni_config.translate(p)
    assert t.files["postgresql"]["parameters"]["max_connections"] == 200
    assert any(n.startswith("postgresql.parameters.max_connections: Patroni ignored this member's 30") for n in t.notes)


def test_the_configuration_in_etcd_wins_over_bootstrap_dcs(host):
    dynamic = {"ttl": 20, "loop_wait": 5, "retry_timeout": 5, "synchronous_mode": "quorum",
               "synchronous_node_count": 1, "maximum_lag_on_syncnode": -1, "pause": True,
               "postgresql": {"parameters": {"max_connections": 300}, "use_slots": False}}
    t = patroni_config.translate(patroni_yml(host), dynamic)
    f = t.files
    assert (f["etcd"]["ttl"], f["loop_wait"], f["synchronous_mode"], f["synchronous_node_count"]) == \
        (20, 5, "quorum", 1)
    assert f["postgresql"]["parameters"]["max_connections"] == 300
    assert "wal_keep_size" not in f["postgresql"]["parameters"], "bootstrap.dcs is not mixed in"
    notes = "\n".join(t.notes)
    assert "bootstrap.dcs: the cluster's configuration in etcd was used instead" in notes
    assert "config (etcd).maximum_lag_on_syncnode:" in notes
    assert "config (etcd).postgresql.use_slots: governor always gives each replica a slot" in notes
    assert "config (etcd).pause:" in notes


@pytest.mark.parametrize("change,refused", [
    (lambda p: (p.pop("etcd3"), p.update(consul={"host": "127.0.0.1:8500"})), "consul: governor keeps its leader lock"),
    (lambda p: (p.pop("etcd3"), p.update(kubernetes={"namespace": "db"})), "kubernetes: governor keeps"),
    (lambda p: (p.pop("etcd3"), p.update(raft={"data_dir": "/x"})), "raft: governor keeps"),
    (lambda p: p.update(zookeeper={"hosts": ["z:2181"]}), "zookeeper: governor keeps"),
    (lambda p: p.update(citus={"group": 0, "database": "citus"}), "citus: governor does not manage Citus"),
    (lambda p: p.update(namespace="/db/"), "namespace: '/db/': governor keeps every cluster's keys under /service/"),
    (lambda p: p["restapi"].pop("authentication") and p["restapi"].pop("verify_client"),
     "restapi.authentication: the API listens on 0.0.0.0:8008 and takes control requests without credentials"),
    (lambda p: p.pop("scope"), "scope: missing"),
    (lambda p: p.pop("name"), "name: missing"),
    (lambda p: p.update(etcd3={"srv": "etcd.example.com"}), "etcd3.srv: governor needs etcd's endpoints listed"),
    (lambda p: p.pop("etcd3"), "etcd3: no etcd3 (or etcd) section"),
])
def test_what_would_change_safety_is_refused(host, change, refused):
    p = patroni_yml(host)
    change(p)
    t = patroni_config.translate(p)
    assert any(r.startswith(refused) for r in t.refused), t.refused


def test_an_api_on_loopback_only_needs_no_credentials_and_etcd_v2_is_named(host):
    p = patroni_yml(host)
    p["restapi"] = {"listen": "127.0.0.1:8008", "connect_address": "127.0.0.1:8008"}
    p["etcd"] = {"host": "127.0.0.1:2379"}
    p.pop("etcd3")
    t = patroni_config.translate(p)
    assert t.refused == []
    assert t.files["etcd"]["api"] == 2 and t.files["etcd"]["host"] == "127.0.0.1:2379"
    assert any(n.startswith("etcd: Patroni used etcd's v2 API") and "a live takeover needs v3" in n for n in t.notes)


def test_governorctl_writes_the_file_0640_group_postgres_once_and_refuses_what_it_cannot_translate(host, capsys):
    source, out = host / "patroni.yml", host / "governor.yml"
    source.write_text(yaml.safe_dump(patroni_yml(host)))
    assert ctl(["migrate", "--from-patroni", str(source), "--no-etcd", "--output", str(out)]) == 0
    assert stat.S_IMODE(os.stat(out).st_mode) == 0o640
    assert os.stat(out).st_gid == grp.getgrnam("postgres").gr_gid, "governor (postgres) reads it, nobody else"
    loaded = config_mod.load(str(out))
    assert (loaded.etcd.scope, loaded.postgresql.name, loaded.restapi.username) == ("shop", "db1", "admin")
    said = capsys.readouterr().err
    assert "note: postgresql.pg_ident:" in said and "wrote " in said
    assert "api-secret" not in said and "su-secret" not in said, "no password among the notes"
    assert ctl(["migrate", "--from-patroni", str(source), "--no-etcd", "--output", str(out)]) == 2
    assert "an existing file is not replaced" in capsys.readouterr().err

    p = patroni_yml(host)
    p["zookeeper"] = {"hosts": ["z:2181"]}
    source.write_text(yaml.safe_dump(p))
    other = host / "other.yml"
    assert ctl(["migrate", "--from-patroni", str(source), "--no-etcd", "--output", str(other)]) == 2
    assert "zookeeper: governor keeps its leader lock in etcd only" in capsys.readouterr().err
    assert not other.exists()
    source.write_text("scope: [unclosed\n")
    assert ctl(["migrate", "--from-patroni", str(source)]) == 2
    assert str(source) in capsys.readouterr().err
    assert ctl(["migrate"]) == 2
    assert "--from-patroni" in capsys.readouterr().err


def test_the_dynamic_configuration_is_read_from_the_clusters_etcd(host, etcd, capsys):
    p = patroni_yml(host)
    p["etcd3"] = {"hosts": [f"127.0.0.1:{etcd.port}"]}
    p["scope"] = f"patroni{os.getpid()}"
    source = host / "patroni.yml"
    source.write_text(yaml.safe_dump(p))
    etcd.put(f"/service/{p['scope']}/config", json.dumps({"ttl": 25, "loop_wait": 7, "retry_timeout": 9,
                                                          "postgresql": {"parameters": {"work_mem": "8MB"}}}))
    assert ctl(["migrate", "--from-patroni", str(source)]) == 0
    captured = capsys.readouterr()
    files = yaml.safe_load(captured.out)
    assert (files["etcd"]["ttl"], files["loop_wait"], files["retry_timeout"]) == (25, 7, 9)
    assert files["postgresql"]["parameters"]["work_mem"] == "8MB"
    assert "# the cluster-wide settings came from the cluster's configuration in etcd" in captured.out


def test_patronis_keys_become_governors_at_the_takeovers_end():
    new, left = patroni_keys.dynamic_config({
        "ttl": 30, "loop_wait": 10, "retry_timeout": 10, "maximum_lag_on_failover": 1048576, "pause": True,
        "synchronous_mode": "bogus", "check_timeline": True, "standby_cluster": {"host": "x", "port": 5432,
                                                                                 "restore_command": "cp %f %p"},
        "postgresql": {"use_pg_rewind": True, "parameters": {"work_mem": "8MB", "archive_command": "cp %p /a/%f",
                                                              "port": 5433}}})
    assert new == {"ttl": 30, "loop_wait": 10, "retry_timeout": 10, "maximum_lag_on_failover": 1048576,
                   "standby_cluster": {"host": "x", "port": 5432}, "postgresql": {"parameters": {"work_mem": "8MB"}}}
    assert dynamic.validate(new) == []
    said = "\n".join(left)
    for key in ("pause", "check_timeline", "postgresql.use_pg_rewind", "postgresql.parameters.archive_command",
                "postgresql.parameters.port", "config: synchronous_mode"):
        assert f"{key}:" in said, (key, said)
    assert patroni_keys.history([[1, 67108864, "no recovery target specified", "2026-12-01T10:00:00+00:00", "db2"],
                                 [2, 83886080, "switchover"], "junk", [True, 1, "x"], ["1", 2, "x"]]) == [
        {"timeline": 2, "lsn": 67108864, "reason": "no recovery target specified",
         "time": "2026-12-01T10:00:00+00:00", "leader": "db2", "from": "patroni"},
        {"timeline": 3, "lsn": 83886080, "reason": "switchover", "time": None, "leader": None, "from": "patroni"}]


def test_a_takeover_on_etcds_v2_api_is_refused_with_what_to_do_instead(host, etcd, capsys):
    config = host / "governor.yml"
    config.write_text(yaml.safe_dump({"etcd": {"scope": f"v2{os.getpid()}", "host": f"127.0.0.1:{etcd.port}",
                                               "api": 2},
                                      "postgresql": {"name": "db1", "data_dir": str(host / "pg" / "data"),
                                                     "bin_dir": PG_BIN, "replication": {"password": "x"}}}))
    assert ctl(["-c", str(config), "migrate", "--takeover", "check"]) == 1
    assert "a live takeover needs v3" in capsys.readouterr().err


def test_member_slot_names_are_patronis_for_every_name_governor_accepts():
    # Patroni: lower case, '-' and '.' as '_' (other characters, which governor refuses in names, as uNNNN)
    assert [slot_name_for(n) for n in ("db1", "DB-2.east", "a_b")] == ["db1", "db_2_east", "a_b"]


def test_a_takeover_is_not_prepared_while_patroni_has_a_switchover_pending(host, etcd, capsys):
    scope = f"pending{os.getpid()}"
    config = host / "governor.yml"
    config.write_text(yaml.safe_dump({"etcd": {"scope": scope, "host": f"127.0.0.1:{etcd.port}", "api": 3},
                                      "postgresql": {"name": "db1", "data_dir": str(host / "pg" / "data"),
                                                     "bin_dir": PG_BIN, "replication": {"password": "x"}}}))
    etcd.put(f"/service/{scope}/config", json.dumps({"ttl": 30, "pause": True}))
    etcd.put(f"/service/{scope}/failover", json.dumps({"leader": "db1", "member": "db2",
                                                       "scheduled_at": "2026-12-08T01:00:00+00:00"}))
    assert ctl(["-c", str(config), "migrate", "--takeover", "prepare"]) == 1
    said = capsys.readouterr().out
    assert "a switchover or failover is pending in Patroni" in said, said
    assert etcd.get(f"/service/{scope}/pause") is None, "nothing changed"
