"""`governorctl generate-config`: a valid per-host local.yml, private from its first byte, with
the same passwords on every host of a cluster; bad input changes nothing and exits 2."""
from __future__ import annotations

import os
import stat

import yaml

from governor import config
from governor.ctl import main

ETCD = "10.0.0.11:2379,10.0.0.12:2379,10.0.0.13:2379"


def generate(tmp_path, name, address, *extra) -> tuple:
    out = tmp_path / f"{name}.yml"
    code = main(["generate-config", "--name", name, "--address", address, "--etcd", ETCD,
                 "--data-dir", str(tmp_path / name), "--output", str(out), *extra])
    return code, out


def test_three_hosts_get_valid_files_with_one_set_of_passwords(tmp_path):
    code, first = generate(tmp_path, "db1", "10.0.0.11")
    assert code == 0
    assert stat.S_IMODE(os.stat(first).st_mode) == 0o640
    cfg = config.load(str(first))
    assert cfg.postgresql.conn_url == "postgres://10.0.0.11:5432/postgres"
    assert cfg.restapi.api_url == "http://10.0.0.11:8008"
    assert cfg.etcd.api == 3 and len(cfg.etcd.hosts) == 3
    assert cfg.postgresql.replication_network == "10.0.0.0/24"
    for name, address in (("db2", "10.0.0.12"), ("db3", "10.0.0.13")):
        code, other = generate(tmp_path, name, address, "--passwords-from", str(first))
        assert code == 0
        got = config.load(str(other))
        assert got.postgresql.name == name
        assert got.postgresql.replication.password == cfg.postgresql.replication.password
        assert got.postgresql.superuser.password == cfg.postgresql.superuser.password
        assert (got.restapi.username, got.restapi.password) == (cfg.restapi.username, cfg.restapi.password)
        assert got.restapi.authenticated, "control over the network needs the API credentials"
    fresh_code, fresh = generate(tmp_path, "db9", "10.0.0.19")
    assert config.load(str(fresh)).postgresql.replication.password != cfg.postgresql.replication.password


def test_bad_input_writes_nothing_and_exits_2(tmp_path, capsys):
    assert generate(tmp_path, "db1", "10.0.0.11", "--etcd", "not a host:port:x")[0] == 2
    assert generate(tmp_path, "db1", "db1.example")[0] == 2          # a host name needs --network
    assert "--network" in capsys.readouterr().err
    assert generate(tmp_path, "bad name!", "10.0.0.11")[0] == 2       # refused by the validator
    assert "postgresql.name" in capsys.readouterr().err
    assert not list(tmp_path.glob("*.yml"))


def test_an_existing_file_is_kept_unless_forced(tmp_path):
    code, out = generate(tmp_path, "db1", "10.0.0.11")
    before = out.read_text()
    assert generate(tmp_path, "db1", "10.0.0.11")[0] == 2
    assert out.read_text() == before
    assert generate(tmp_path, "db1", "10.0.0.11", "--force")[0] == 0
    assert yaml.safe_load(out.read_text())["postgresql"]["replication"]["password"] != \
        yaml.safe_load(before)["postgresql"]["replication"]["password"]


def test_a_first_host_file_without_api_credentials_cannot_seed_the_others(tmp_path, capsys):
    """A file from before the API needed credentials: its members could not call each other."""
    code, first = generate(tmp_path, "db1", "10.0.0.11")
    data = yaml.safe_load(first.read_text())
    data["restapi"] = {"authentication": "none"}
    first.write_text(yaml.safe_dump(data))
    assert generate(tmp_path, "db2", "10.0.0.12", "--passwords-from", str(first))[0] == 2
    assert "no restapi.password to take over" in capsys.readouterr().err


def test_an_instance_gets_its_own_directory_scope_data_and_ports_no_other_file_uses(tmp_path, monkeypatch):
    """governor@NAME reads /etc/governor/NAME.d/: --instance writes there, with a scope and data
    directory of its own and PostgreSQL, API and exporter ports that neither the host's main
    configuration nor another instance uses."""
    from governor import ctl_instance
    monkeypatch.setattr(ctl_instance, "port_in_use", lambda port: port == 9548)   # say, a node exporter
    root = tmp_path / "etc-governor"
    root.mkdir()
    code, main_file = generate(tmp_path, "db1", "10.0.0.11", "--output", str(root / "local.yml"))
    assert code == 0
    taken = root / "other.d"
    taken.mkdir()
    (taken / "governor.yml").write_text("postgresql: {listen: '0.0.0.0:5433'}\nrestapi: {listen: '0.0.0.0:8009'}\n")
    out = root / "reporting.d" / "governor.yml"
    code = main(["generate-config", "--instance", "reporting", "--name", "db1-reporting", "--address", "10.0.0.11",
                 "--etcd", ETCD, "--passwords-from", str(root / "local.yml"), "--output", str(out),
                 "--data-dir", str(tmp_path / "reporting")])
    assert code == 0
    assert stat.S_IMODE(os.stat(out.parent).st_mode) == 0o750
    cfg = config.load(str(out.parent))
    first = config.load(str(root / "local.yml"))
    assert cfg.etcd.scope == "reporting" and cfg.postgresql.name == "db1-reporting"
    assert (cfg.postgresql.port, cfg.restapi.port, cfg.metrics.port) == (5434, 8010, 9549)
    assert cfg.postgresql.conn_url == "postgres://10.0.0.11:5434/postgres"
    assert cfg.restapi.api_url == "http://10.0.0.11:8010"
    assert cfg.postgresql.replication.password == first.postgresql.replication.password
    defaults = main(["generate-config", "--instance", "x", "--name", "n", "--address", "10.0.0.11", "--etcd", ETCD,
                     "--output", "-"])
    assert defaults == 0


def test_an_instance_name_must_be_a_plain_name(tmp_path, capsys):
    code = main(["generate-config", "--instance", "../evil", "--name", "n", "--address", "10.0.0.11", "--etcd", ETCD,
                 "--output", str(tmp_path / "x.yml")])
    assert code == 2 and "--instance: expected" in capsys.readouterr().err
    assert not (tmp_path / "x.yml").exists()
