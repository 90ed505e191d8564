"""Configuration loading and validation: every problem named with file, key and expectation."""
from __future__ import annotations

import os
import subprocess
import sys

import pytest
import yaml

from governor import config

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PG_BIN = "/usr/lib/postgresql/15/bin"


def write(path, data) -> str:
    with open(path, "w") as fh:
        fh.write(data if isinstance(data, str) else yaml.safe_dump(data))
    return str(path)


def minimal(tmp_path) -> dict:
    return {
        "etcd": {"scope": "demo", "host": "127.0.0.1:2379"},
        "postgresql": {"name": "node1", "listen": "127.0.0.1:5432", "data_dir": str(tmp_path / "data"),
                       "bin_dir": PG_BIN, "replication": {"password": "secret"}},
    }


API_CREDENTIALS = {"username": "governor", "password": "api-Secret-3"}


def problems(path) -> list:
    with pytest.raises(config.ConfigError) as info:
        config.load(path)
    return info.value.problems


def test_minimal_config_gets_sane_defaults(tmp_path):
    cfg = config.load(write(tmp_path / "g.yml", minimal(tmp_path)))
    assert (cfg.loop_wait, cfg.retry_timeout, cfg.etcd.ttl) == (10, 10, 30)
    assert cfg.etcd.hosts == (("127.0.0.1", 2379),)
    pg = cfg.postgresql
    assert pg.replication.username == "replicator"
    assert pg.superuser.username == "postgres"
    assert pg.maximum_lag_on_failover == 1048576
    assert "--data-checksums" in pg.initdb
    assert pg.connect_host == "127.0.0.1" and pg.port == 5432
    assert pg.conn_url == "postgres://127.0.0.1:5432/postgres"


def test_original_governor_keys_are_accepted(tmp_path):
    raw = minimal(tmp_path)
    raw["loop_wait"] = 10
    raw["etcd"]["ttl"] = 30
    raw["postgresql"].update({
        "maximum_lag_on_failover": 1048576,
        "replication": {"username": "replicator", "password": "rep-pass", "network": "127.0.0.1/32"},
        "recovery_conf": {"restore_command": "cp ../wal_archive/%f %p"},
        "parameters": {"archive_mode": "on", "wal_level": "hot_standby", "max_wal_senders": 5},
    })
    cfg = config.load(write(tmp_path / "postgres0.yml", raw))
    assert cfg.postgresql.recovery_conf == {"restore_command": "cp ../wal_archive/%f %p"}
    assert cfg.postgresql.parameters["max_wal_senders"] == 5


def test_passwords_stay_out_of_repr(tmp_path):
    raw = minimal(tmp_path)
    raw["etcd"].update({"username": "gov", "password": "etcd-pw"})
    raw["postgresql"]["superuser"] = {"password": "su-pw"}
    cfg = config.load(write(tmp_path / "g.yml", raw))
    text = repr(cfg)
    for secret in ("etcd-pw", "su-pw", "secret"):
        assert secret not in text


def test_directory_merges_files_in_name_order(tmp_path):
    base = minimal(tmp_path)
    write(tmp_path / "00-base.yml", base)
    write(tmp_path / "10-node.yml", {"postgresql": {"name": "node2", "listen": "10.0.0.7:5433"},
                                      "etcd": {"host": ["10.0.0.1:2379", "10.0.0.2"]}, "restapi": API_CREDENTIALS})
    write(tmp_path / "notes.txt", "ignored: [")
    cfg = config.load(str(tmp_path))
    assert cfg.postgresql.name == "node2"
    assert cfg.postgresql.port == 5433
    assert cfg.postgresql.replication.password == "secret"  # merged, not replaced
    assert cfg.etcd.hosts == (("10.0.0.1", 2379), ("10.0.0.2", 2379))


def test_every_problem_is_reported_with_file_and_key(tmp_path):
    base = minimal(tmp_path)
    base["loop_wait"] = "ten"
    base["retry_timout"] = 5
    base["etcd"]["ttl"] = 2.5
    base["postgresql"]["data_dir"] = "/nonexistent/parent/data"
    base["postgresql"]["maximum_lag_on_failover"] = "lots"
    base["postgresql"]["replication"]["network"] = "not-a-net"
    base["postgresql"]["parameters"] = {"port": 5433}
    base["postgresql"]["recovery_conf"] = {"primary_conninfo": "host=x"}
    path = write(tmp_path / "bad.yml", base)
    found = problems(path)
    expected = {
        "loop_wait": "expected a number of seconds, got a string 'ten'",
        "retry_timout": "unknown setting",
        "etcd.ttl": "expected an integer",
        "postgresql.data_dir": "the parent directory /nonexistent/parent does not exist",
        "postgresql.maximum_lag_on_failover": "expected a size in bytes",
        "postgresql.replication.network": "expected a network",
        "postgresql.parameters.port": "set by governor from postgresql.listen",
        "postgresql.recovery_conf.primary_conninfo": "not allowed",
    }
    for key, message in expected.items():
        assert any(p.startswith(f"{path}: {key}: ") and message in p for p in found), (key, found)
    assert len(found) == len(expected), found


def test_timing_rule_is_enforced(tmp_path):
    raw = minimal(tmp_path)
    raw.update({"loop_wait": 10, "retry_timeout": 10})
    raw["etcd"]["ttl"] = 25
    found = problems(write(tmp_path / "g.yml", raw))
    assert len(found) == 1
    assert "etcd.ttl: expected loop_wait + 2 * retry_timeout <= ttl" in found[0]


def test_problem_names_the_file_that_set_the_key(tmp_path):
    write(tmp_path / "00-base.yml", minimal(tmp_path))
    bad = write(tmp_path / "20-override.yml", {"postgresql": {"listen": "0.0.0.0:99999"}})
    found = problems(str(tmp_path))
    assert found == [f"{bad}: postgresql.listen: expected 'host:port' such as 0.0.0.0:5432, got '0.0.0.0:99999'"]


def test_wildcard_listen_needs_connect_address(tmp_path):
    raw = minimal(tmp_path)
    raw["postgresql"]["listen"] = "0.0.0.0:5432"
    raw["restapi"] = API_CREDENTIALS
    found = problems(write(tmp_path / "g.yml", raw))
    assert len(found) == 1 and "postgresql.connect_address: required when postgresql.listen is a wildcard" in found[0]
    raw["postgresql"]["connect_address"] = "10.0.0.5:5432"
    cfg = config.load(write(tmp_path / "g.yml", raw))
    assert cfg.postgresql.conn_url == "postgres://10.0.0.5:5432/postgres"


@pytest.mark.parametrize("listen, connect, api_listen, api_url, metrics_listen", [
    ("127.0.0.1:5432", None, ("127.0.0.1", 8008), "http://127.0.0.1:8008", ("127.0.0.1", 9547)),
    ("10.0.0.5:5432", None, ("10.0.0.5", 8008), "http://10.0.0.5:8008", ("10.0.0.5", 9547)),
    ("0.0.0.0:5432", "10.0.0.5:5432", ("0.0.0.0", 8008), "http://10.0.0.5:8008", ("0.0.0.0", 9547)),
    ("*:5432", "pg1.example:5432", ("0.0.0.0", 8008), "http://pg1.example:8008", ("0.0.0.0", 9547)),
    ("[fd00::5]:5432", None, ("fd00::5", 8008), "http://[fd00::5]:8008", ("fd00::5", 9547)),
])
def test_api_and_exporter_listen_where_postgresql_does_by_default(tmp_path, listen, connect, api_listen, api_url,
                                                                   metrics_listen):
    """Three hosts that set only postgresql.listen (and connect_address) publish an API address
    their peers can reach, not 127.0.0.1 (which made a member ask itself during the race)."""
    raw = minimal(tmp_path)
    raw["postgresql"]["listen"] = listen
    raw["restapi"] = API_CREDENTIALS
    if connect:
        raw["postgresql"]["connect_address"] = connect
    cfg = config.load(write(tmp_path / "g.yml", raw))
    assert (cfg.restapi.listen_host, cfg.restapi.port) == api_listen
    assert cfg.restapi.api_url == api_url
    assert (cfg.metrics.listen_host, cfg.metrics.port) == metrics_listen
    assert not any("restapi" in w for w in cfg.warnings)


def test_an_api_only_on_loopback_of_a_member_reached_elsewhere_is_refused(tmp_path):
    raw = minimal(tmp_path)
    raw["postgresql"].update(listen="0.0.0.0:5432", connect_address="10.0.0.5:5432")
    raw["restapi"] = {"listen": "127.0.0.1:8008"}
    found = problems(write(tmp_path / "g.yml", raw))
    assert len(found) == 1 and "restapi.listen" in found[0] and "10.0.0.5" in found[0] and "loopback" in found[0]
    raw["restapi"] = {"listen": "0.0.0.0:8008", "connect_address": "localhost:8008", **API_CREDENTIALS}
    found = problems(write(tmp_path / "g.yml", raw))
    assert len(found) == 1 and "restapi.connect_address" in found[0]


def test_a_loopback_postgresql_address_with_etcd_on_another_host_is_refused(tmp_path):
    raw = minimal(tmp_path)
    raw["etcd"]["host"] = ["10.0.0.1:2379", "10.0.0.2:2379"]
    raw["restapi"] = API_CREDENTIALS
    found = problems(write(tmp_path / "g.yml", raw))
    assert len(found) == 1 and "postgresql.listen" in found[0] and "10.0.0.1" in found[0]
    raw["postgresql"].update(listen="0.0.0.0:5432", connect_address="127.0.0.1:5432")
    found = problems(write(tmp_path / "g.yml", raw))
    assert len(found) == 1 and "postgresql.connect_address" in found[0]
    raw["postgresql"]["connect_address"] = "10.0.0.5:5432"
    assert config.load(write(tmp_path / "g.yml", raw)).restapi.api_url == "http://10.0.0.5:8008"


def test_an_api_beyond_loopback_needs_credentials_unless_the_files_say_otherwise(tmp_path):
    """Control requests (switchover, restart, PATCH /config) from the network need credentials."""
    raw = minimal(tmp_path)
    raw["postgresql"].update(listen="0.0.0.0:5432", connect_address="10.0.0.5:5432")
    found = problems(write(tmp_path / "g.yml", raw))
    assert len(found) == 1 and found[0].startswith(f"{tmp_path / 'g.yml'}: restapi.listen: the API listens on "
                                                   "0.0.0.0:8008, beyond this host"), found
    assert "restapi.username and restapi.password" in found[0] and "restapi.authentication: none" in found[0]
    raw["restapi"] = {"authentication": "none"}
    cfg = config.load(write(tmp_path / "g.yml", raw))
    assert not cfg.restapi.authenticated
    assert any("restapi.authentication: none: anyone who reaches 0.0.0.0:8008 may switch over" in w
               for w in cfg.warnings)
    raw["restapi"] = {"authentication": "none", **API_CREDENTIALS}
    assert "none contradicts" in problems(write(tmp_path / "g.yml", raw))[0]
    raw["restapi"] = {"authentication": "off"}
    assert "restapi.authentication: expected none" in problems(write(tmp_path / "g.yml", raw))[0]
    raw["restapi"] = {"verify_client": "required"}
    assert "restapi.verify_client: required needs restapi.certfile" in "".join(problems(write(tmp_path / "g.yml", raw)))
    raw["restapi"] = dict(API_CREDENTIALS)
    assert config.load(write(tmp_path / "g.yml", raw)).restapi.authenticated
    on_loopback = config.load(write(tmp_path / "l.yml", minimal(tmp_path)))   # the 2015 template's layout
    assert not on_loopback.restapi.authenticated and not on_loopback.warnings


def test_missing_required_keys(tmp_path):
    path = write(tmp_path / "g.yml", {"etcd": {}, "postgresql": {}})
    found = problems(path)
    for key in ("etcd.scope", "postgresql.name", "postgresql.data_dir", "postgresql.replication.password"):
        assert any(p.startswith(f"{path}: {key}: required") for p in found), (key, found)


def test_yaml_syntax_error_names_line(tmp_path):
    path = write(tmp_path / "g.yml", "etcd:\n  scope: [unclosed\n")
    found = problems(path)
    assert len(found) == 1 and found[0].startswith(f"{path}: not valid YAML (line")


def test_wrong_shapes(tmp_path):
    raw = minimal(tmp_path)
    raw["etcd"]["host"] = ["127.0.0.1:2379", "bad:port:x"]
    raw["postgresql"]["name"] = "node/1"
    raw["postgresql"]["initdb"] = "data-checksums"
    raw["tags"] = {"nofailover": "yes"}
    path = write(tmp_path / "g.yml", raw)
    found = problems(path)
    assert any("etcd.host: expected 'host:port', got 'bad:port:x'" in p for p in found)
    assert any("postgresql.name: expected letters" in p for p in found)
    assert any("postgresql.initdb: expected a list of initdb options" in p for p in found)
    assert any("tags.nofailover: expected true or false" in p for p in found)
    assert len(found) == 4


def test_sizes():
    assert config.parse_size("16MB") == 16 * 1024 * 1024
    assert config.parse_size(1024) == 1024
    assert config.parse_size("1 GB") == 1024**3
    assert config.parse_size("-5") is None
    assert config.parse_size("lots") is None


def run_cli(*args):
    return subprocess.run([sys.executable, "-m", "governor", *args], capture_output=True, text=True, cwd=REPO,
                          env={**os.environ, "PYTHONPATH": REPO})


def test_validate_config_cli_exit_codes(tmp_path):
    good = write(tmp_path / "good.yml", minimal(tmp_path))
    result = run_cli("--validate-config", good)
    assert result.returncode == 0, result.stderr
    assert "configuration is valid" in result.stdout

    raw = minimal(tmp_path)
    raw["loop_wait"] = -1
    raw["bogus"] = True
    bad = write(tmp_path / "bad.yml", raw)
    result = run_cli("--validate-config", bad)
    assert result.returncode == 2
    assert f"{bad}: loop_wait: expected a number greater than 0 and at most 300, got -1" in result.stderr
    assert f"{bad}: bogus: unknown setting" in result.stderr
    assert "2 problems" in result.stderr


def test_daemon_refuses_to_start_on_bad_config(tmp_path):
    raw = minimal(tmp_path)
    raw["etcd"]["ttl"] = "soon"
    result = run_cli(write(tmp_path / "bad.yml", raw))
    assert result.returncode == 2
    assert "etcd.ttl: expected an integer" in result.stderr
    assert not (tmp_path / "data").exists(), "nothing was started or created"


def test_shipped_example_is_valid(tmp_path):
    raw, origin = config.read_raw(os.path.join(REPO, "etc", "governor", "governor.yml"))
    raw["postgresql"]["data_dir"] = str(tmp_path / "data")  # the example's parent exists only once installed
    raw["postgresql"]["bin_dir"] = PG_BIN
    cfg = config.validate(raw, origin, "governor.yml")
    assert cfg.etcd.scope and cfg.postgresql.name


def _secret(path, text: str, mode: int = 0o600) -> str:
    path.write_text(text)
    os.chmod(path, mode)
    return str(path)


def test_passwords_come_from_files_or_systemd_credentials_and_none_is_in_the_yaml(tmp_path, monkeypatch):
    raw = minimal(tmp_path)
    del raw["postgresql"]["replication"]["password"]
    raw["postgresql"]["replication"]["password_file"] = _secret(tmp_path / "repl", "from-a-file\n")
    raw["restapi"] = {"username": "governor", "password_file": _secret(tmp_path / "api", "api-secret", 0o640)}
    creds = tmp_path / "credentials"
    creds.mkdir()
    _secret(creds / "postgresql.superuser.password", "from-systemd\r\n", 0o400)
    monkeypatch.setenv("CREDENTIALS_DIRECTORY", str(creds))
    cfg = config.load(write(tmp_path / "g.yml", raw))
    assert cfg.postgresql.replication.password == "from-a-file"
    assert cfg.postgresql.superuser.password == "from-systemd"
    assert cfg.restapi.password == "api-secret"
    assert "secret" not in open(tmp_path / "g.yml").read() and "from-" not in open(tmp_path / "g.yml").read()


def test_a_secrets_file_others_can_read_is_refused_without_showing_it(tmp_path, monkeypatch):
    monkeypatch.delenv("CREDENTIALS_DIRECTORY", raising=False)
    raw = minimal(tmp_path)
    del raw["postgresql"]["replication"]["password"]
    raw["postgresql"]["replication"]["password_file"] = _secret(tmp_path / "repl", "do-not-show-me", 0o644)
    found = problems(write(tmp_path / "g.yml", raw))
    assert len(found) == 1 and "postgresql.replication.password_file" in found[0], found
    assert "can be read or written by any user (mode 0644)" in found[0] and "do-not-show-me" not in found[0]
    raw["postgresql"]["replication"]["password_file"] = str(tmp_path / "missing")
    assert "cannot read the file" in problems(write(tmp_path / "g.yml", raw))[0]
    raw["postgresql"]["replication"]["password_file"] = _secret(tmp_path / "two", "a\nb\n")
    assert "control characters" in problems(write(tmp_path / "g.yml", raw))[0]
    raw["postgresql"]["replication"]["password"] = "inline"
    assert "give either" in problems(write(tmp_path / "g.yml", raw))[0]
    del raw["postgresql"]["replication"]["password"], raw["postgresql"]["replication"]["password_file"]
    assert "or a systemd credential named postgresql.replication.password" in \
        problems(write(tmp_path / "g.yml", raw))[0]


def test_replication_tls_reaches_primary_conninfo_pg_basebackup_and_pg_hba(tmp_path):
    from governor import repltls
    from governor.postgres import datadir
    raw = minimal(tmp_path)
    root = _secret(tmp_path / "ca.pem", "not really a CA", 0o644)
    raw["postgresql"]["replication"].update(sslmode="verify-full", sslrootcert=root, hostssl=True,
                                            network="10.0.0.0/24")
    pg = config.load(write(tmp_path / "g.yml", raw)).postgresql
    assert "sslmode='verify-full'" in datadir.primary_conninfo(pg, "10.0.0.11", 5432)
    assert f"sslrootcert='{root}'" in datadir.primary_conninfo(pg, "10.0.0.11", 5432)
    assert repltls.environment(pg.replication_ssl) == {"PGSSLMODE": "verify-full", "PGSSLROOTCERT": root}
    os.makedirs(pg.data_dir)
    datadir.write_pg_hba(pg)
    hba = open(datadir.hba_path(pg)).read()
    assert "hostssl replication  replicator   10.0.0.0/24" in hba
    assert "hostssl all          all          10.0.0.0/24" in hba
    assert "host    all          all          127.0.0.1/32" in hba, "local logins need no TLS"
    del raw["postgresql"]["replication"]["sslrootcert"]
    assert "postgresql.replication.sslrootcert: required with sslmode verify-full" in \
        problems(write(tmp_path / "g.yml", raw))[0]
    raw["postgresql"]["replication"]["sslmode"] = "paranoid"
    assert "expected one of disable, allow, prefer" in problems(write(tmp_path / "g.yml", raw))[0]


def test_bin_dir_follows_the_data_directory_not_the_newest_major(tmp_path):
    """A second major installed (a Debian 12 -> 13 upgrade leaves 15 beside 17) changes nothing:
    the binaries are the data directory's (PG_VERSION); an explicit bin_dir of another major is
    refused, and so is a data directory whose major is not installed."""
    raw = minimal(tmp_path)
    del raw["postgresql"]["bin_dir"]
    data = tmp_path / "data"
    data.mkdir()
    (data / "PG_VERSION").write_text("15\n")
    assert config.load(write(tmp_path / "g.yml", raw)).postgresql.bin_dir == PG_BIN
    fake = tmp_path / "pg17" / "bin"
    fake.mkdir(parents=True)
    for tool, text in (("postgres", "#!/bin/sh\necho 'postgres (PostgreSQL) 17.2 (Debian 17.2-1)'\n"), ("pg_ctl", "")):
        (fake / tool).write_text(text)
        os.chmod(fake / tool, 0o755)
    raw["postgresql"]["bin_dir"] = str(fake)
    found = problems(write(tmp_path / "g.yml", raw))
    assert len(found) == 1 and f"postgresql.bin_dir: {fake} holds PostgreSQL 17, but {data} is a PostgreSQL 15 " \
        "data directory (PG_VERSION)" in found[0], found
    del raw["postgresql"]["bin_dir"]
    (data / "PG_VERSION").write_text("11\n")
    found = problems(write(tmp_path / "g.yml", raw))
    assert len(found) == 1 and "no PostgreSQL 11 binaries are installed" in found[0] and "postgresql-11" in found[0]


def test_a_path_that_needs_an_optional_module_says_which_package_brings_it():
    from governor.checker import needs_module
    assert needs_module(True, "no_such_module_for_governor", "python3-nothing") == (
        "needs the Python module no_such_module_for_governor, which is not installed (Debian: python3-nothing; "
        "EL: python3-nothing)")
    assert needs_module(False, "no_such_module_for_governor", "python3-nothing") is None
    assert needs_module(True, "etcd", "python3-etcd") is None      # installed here


def test_an_unreadable_configuration_directory_says_permission_denied(tmp_path):
    """governorctl run as an ordinary user against /etc/governor (0750 root:postgres)."""
    os.chmod(tmp_path, 0o755)          # like /etc: others may pass through
    d = tmp_path / "etc-governor"
    d.mkdir()
    write(d / "governor.yml", minimal(tmp_path))
    os.chmod(d, 0o750)
    script = (f"from governor import config\ntry:\n    config.load({str(d)!r})\nexcept config.ConfigError as e:\n"
              "    print(e.problems[0])\n")
    out = subprocess.run(["setpriv", "--reuid=nobody", "--regid=nogroup", "--clear-groups", sys.executable, "-c",
                          script], capture_output=True, text=True, cwd=os.path.dirname(os.path.dirname(__file__)),
                         env={**os.environ, "PYTHONPATH": os.path.dirname(os.path.dirname(__file__))})
    assert "permission denied" in out.stdout and "use sudo" in out.stdout, out.stdout + out.stderr


def test_major_in_the_data_directory_follows_the_cluster_there_and_refuses_to_guess(tmp_path):
    """`{major}` (majorpaths.py): the directory holding a cluster of its own version; two such that
    governor did not move between (Debian's own made by a package beside governor's) is refused,
    naming both, and a template in config_dir without one in data_dir is refused."""
    raw = minimal(tmp_path)
    del raw["postgresql"]["bin_dir"]
    installed = int(os.path.basename(os.path.dirname(PG_BIN)))     # /usr/lib/postgresql/15/bin
    raw["postgresql"]["data_dir"] = str(tmp_path / "{major}" / "main")
    mine = tmp_path / str(installed) / "main"
    mine.mkdir(parents=True)
    (mine / "PG_VERSION").write_text(f"{installed}\n")
    assert config.load(write(tmp_path / "g.yml", raw)).postgresql.data_dir == str(mine)
    other = tmp_path / str(installed + 1) / "main"
    other.mkdir(parents=True)
    (other / "PG_VERSION").write_text(f"{installed + 1}\n")
    found = problems(write(tmp_path / "g.yml", raw))
    assert len(found) == 1 and "postgresql.data_dir" in found[0] and str(mine) in found[0] and str(other) in found[0] \
        and "pg_dropcluster" in found[0], found
    (other / "PG_VERSION").unlink()
    other.rmdir()
    raw["postgresql"]["config_dir"] = str(tmp_path / "etc" / "{major}" / "main")
    raw["postgresql"]["data_dir"] = str(mine)
    found = problems(write(tmp_path / "g.yml", raw))
    assert any("postgresql.config_dir" in p and "needs postgresql.data_dir to have it too" in p for p in found), found
