"""The 2015 Governor template's own files, unchanged: its postgres0.yml/postgres1.yml from three
points of its history and its haproxy.cfg.

The files are read at test time from ../shared/seed/template-files/ beside the project root (or
$GOVERNOR_TEMPLATE_FILES); the tests that need them skip, saying so, when that directory is absent.
Only their port numbers are rewritten, to ports free in this run, and the test checks that undoing
the rewrite gives back the original bytes.
"""
from __future__ import annotations

import itertools
import os
import re
import subprocess
import time
from typing import Dict, List

import psycopg2
import pytest
import yaml

from governor import config, template_layout
from tests import harness
from tests.harness import wait_until

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SEED = os.environ.get("GOVERNOR_TEMPLATE_FILES",
                      os.path.join(os.path.dirname(REPO), "shared", "seed", "template-files"))
VERSIONS = ("2015-05-557bad3", "2015-07-e305a68", "2016-03-583afd6")
TEMPLATE_PORTS = (4001, 5000, 5432, 5433, 15432, 15433)
PG_BIN = "/usr/lib/postgresql/15/bin"


def seed_dir(version: str) -> str:
    path = os.path.join(SEED, version)
    if not os.path.isdir(path):
        pytest.skip(f"the 2015 template's files are not here: {path} is absent (set GOVERNOR_TEMPLATE_FILES "
                    "to the template-files directory)")
    return path


def _ports_pattern(ports: Dict[int, int]) -> re.Pattern:
    """Port numbers standing alone (not inside a longer number, a name or a dotted address)."""
    return re.compile(r"(?<![\w.])(" + "|".join(str(p) for p in ports) + r")(?![\w.])")


def copy_with_ports(version: str, dest: str, ports: Dict[int, int]) -> None:
    """Copy the version's files to `dest`, replacing only the template's port numbers."""
    back = {new: old for old, new in ports.items()}
    pattern, undo = _ports_pattern(ports), _ports_pattern(back)
    os.makedirs(dest, exist_ok=True)
    for name in sorted(os.listdir(seed_dir(version))):
        with open(os.path.join(SEED, version, name), encoding="utf-8") as fh:
            original = fh.read()
        text = pattern.sub(lambda m: str(ports[int(m.group(1))]), original)
        undone = undo.sub(lambda m: str(back[int(m.group(1))]), text)
        assert undone == original, f"{name}: the port rewrite changed more than port numbers"
        with open(os.path.join(dest, name), "w", encoding="utf-8") as fh:
            fh.write(text)


# --------------------------------------------------------------------------- unit: the translation


@pytest.mark.parametrize("version", VERSIONS)
def test_each_template_pair_is_valid_with_a_warning_per_translation(version, tmp_path):
    ports = {p: p for p in TEMPLATE_PORTS}       # as in the files: nothing listens during validation
    copy_with_ports(version, str(tmp_path), ports)
    for n in (0, 1):
        with open(tmp_path / f"postgres{n}.yml") as fh:
            name = yaml.safe_load(fh)["postgresql"]["name"]
        cfg = config.load(str(tmp_path / f"postgres{n}.yml"))
        said = "\n".join(cfg.warnings)
        assert cfg.postgresql.name == name
        assert (cfg.restapi.listen_host, cfg.restapi.port) == ("127.0.0.1", 15432 + n)
        assert cfg.metrics.enabled is False and "metrics: not set" in said
        assert cfg.postgresql.port == 5432 + n
        assert cfg.postgresql.data_dir.startswith(str(tmp_path / "data") + os.sep)
        assert not (tmp_path / "data").exists(), "validation must not create directories"
        assert cfg.etcd.hosts[0][1] == 4001 and cfg.etcd.protocol == "http" and cfg.etcd.api == 0
        params = cfg.postgresql.parameters
        assert "hot_standby" not in params and params["wal_level"] == "replica"
        assert params["wal_keep_size"] == "128MB" and "wal_keep_segments" not in params
        for key in ("postgresql.parameters.hot_standby", "postgresql.parameters.wal_level",
                    "postgresql.parameters.wal_keep_segments", "postgresql.data_dir"):
            assert f"postgres{n}.yml: {key}: " in said, (key, said)
        if version.startswith("2016"):
            assert cfg.retry_timeout == 10 and "etcd.timeout: read as retry_timeout: 10" in said
            assert "etcd.endpoint: read as etcd.host: localhost:4001" in said
            assert params["synchronous_standby_names"] == "*"
        if version.startswith("2015-05"):
            assert "PostgreSQL's port + 10000" in said
        else:
            assert "haproxy_status.listen: the REST API listens here" in said


def governor_style(tmp_path) -> dict:
    return {"etcd": {"scope": "demo", "host": "127.0.0.1:2379"},
            "postgresql": {"name": "node1", "listen": "127.0.0.1:5432", "data_dir": "data/node1",
                           "bin_dir": PG_BIN, "replication": {"password": "secret"}}}


def load(tmp_path, raw: dict, cwd=None) -> config.Config:
    path = tmp_path / "g.yml"
    path.write_text(yaml.safe_dump(raw))
    if cwd:
        os.makedirs(cwd, exist_ok=True)
    old = os.getcwd()
    os.chdir(cwd or old)
    try:
        return config.load(str(path))
    finally:
        os.chdir(old)


def test_a_governor_style_file_keeps_its_meaning(tmp_path):
    """No template key: the API on 8008, the exporter on, a relative data_dir from the working
    directory (as before), and a missing parent is still refused."""
    work = tmp_path / "work"
    (work / "data").mkdir(parents=True)
    cfg = load(tmp_path, governor_style(tmp_path), cwd=work)
    assert (cfg.restapi.port, cfg.metrics.enabled) == (8008, True)
    assert cfg.postgresql.data_dir == str(work / "data" / "node1")
    assert not [w for w in cfg.warnings if "template" in w]
    raw = governor_style(tmp_path)
    raw["postgresql"]["data_dir"] = "missing/node1"
    with pytest.raises(config.ConfigError) as info:
        load(tmp_path, raw, cwd=work)
    assert "the parent directory" in str(info.value)


def test_hot_standby_on_is_accepted_anywhere_and_off_is_refused(tmp_path):
    raw = governor_style(tmp_path)
    (tmp_path / "data").mkdir()
    raw["postgresql"]["data_dir"] = str(tmp_path / "data" / "node1")
    raw["postgresql"]["parameters"] = {"hot_standby": "on"}
    raw["restapi"] = {"listen": "127.0.0.1:8008"}
    cfg = load(tmp_path, raw)
    assert "hot_standby" not in cfg.postgresql.parameters and cfg.restapi.port == 8008
    raw["postgresql"]["parameters"] = {"hot_standby": "off"}
    with pytest.raises(config.ConfigError) as info:
        load(tmp_path, raw)
    assert info.value.problems == [f"{tmp_path / 'g.yml'}: postgresql.parameters.hot_standby: governor runs "
                                   "replicas with hot_standby on (it reads their position from them); got "
                                   "'off', remove it"]


def template_style(tmp_path) -> dict:
    raw = governor_style(tmp_path)
    raw["etcd"] = {"scope": "demo", "endpoint": "http://127.0.0.1:4001", "timeout": 5}
    raw["haproxy_status"] = {"listen": "127.0.0.1:15432"}
    return raw


def test_a_relative_data_dir_in_the_template_layout_is_beside_the_file_and_its_parent_made_at_start(tmp_path):
    raw = template_style(tmp_path)
    cfg = load(tmp_path, raw, cwd=tmp_path / "elsewhere")
    assert cfg.postgresql.data_dir == str(tmp_path / "data" / "node1")
    assert template_layout.missing_data_dir_parent(cfg.postgresql.data_dir) == str(tmp_path / "data")
    raw["postgresql"]["data_dir"] = "../outside/node1"   # not inside the file's directory: refused
    with pytest.raises(config.ConfigError) as info:
        load(tmp_path, raw)
    assert f"the parent directory {tmp_path.parent / 'outside'} does not exist" in str(info.value)


BAD_TEMPLATE_VALUES = [
    ("etcd.endpoint", "127.0.0.1:4001", "etcd.endpoint: expected a URL such as http://127.0.0.1:2379"),
    ("etcd.endpoint", "ftp://127.0.0.1:4001", "etcd.endpoint: expected a URL"),
    ("etcd.endpoint", "http://127.0.0.1", "etcd.endpoint: expected a URL"),
    ("etcd.endpoint", "http://127.0.0.1:99999", "etcd.endpoint: expected a URL"),
    ("etcd.endpoint", "http://user:pw@127.0.0.1:4001", "etcd.endpoint: expected a URL"),
    ("etcd.endpoint", "http://127.0.0.1:4001/v2/keys", "etcd.endpoint: expected a URL"),
    ("etcd.endpoint", ["http://127.0.0.1:4001"], "etcd.endpoint: expected a URL"),
    ("etcd.timeout", "five", "etcd.timeout: expected a number of seconds from 0 to 300"),
    ("etcd.timeout", -1, "etcd.timeout: expected a number of seconds"),
    ("etcd.timeout", True, "etcd.timeout: expected a number of seconds"),
    ("etcd.timeout", 1e308, "etcd.timeout: expected a number of seconds"),
    ("haproxy_status", "127.0.0.1:15432", "haproxy_status: expected a mapping with listen"),
    ("haproxy_status", {"listen": "127.0.0.1:15432", "port": 1}, "haproxy_status.port: unknown setting"),
    ("haproxy_status", {"listen": "127.0.0.1:99999"}, "haproxy_status.listen: expected 'host:port'"),
    ("haproxy_status", {"listen": 15432}, "haproxy_status.listen: expected 'host:port'"),
]


@pytest.mark.parametrize("key,value,expected", BAD_TEMPLATE_VALUES)
def test_a_bad_template_value_is_named_and_nothing_starts(tmp_path, key, value, expected):
    raw = template_style(tmp_path)
    section, _, name = key.partition(".")
    if name:
        raw[section][name] = value
    else:
        raw[section] = value
    path = tmp_path / "g.yml"
    path.write_text(yaml.safe_dump(raw))
    with pytest.raises(config.ConfigError) as info:
        config.load(str(path))
    assert len(info.value.problems) == 1 and expected in info.value.problems[0], info.value.problems
    assert str(path) in info.value.problems[0]


def test_template_keys_that_contradict_governor_keys_are_refused(tmp_path):
    raw = template_style(tmp_path)
    raw["etcd"]["host"] = "127.0.0.1:2379"
    raw["restapi"] = {"listen": "127.0.0.1:8008"}
    with pytest.raises(config.ConfigError) as info:
        load(tmp_path, raw)
    said = "\n".join(info.value.problems)
    assert "etcd.endpoint: give etcd.host or etcd.endpoint" in said
    assert "haproxy_status.listen: the 2015 template's name for restapi.listen: give only restapi" in said
    raw = template_style(tmp_path)
    raw["etcd"]["protocol"] = "https"
    with pytest.raises(config.ConfigError) as info:
        load(tmp_path, raw)
    assert info.value.problems[0].endswith("etcd.endpoint: its scheme 'http' differs from etcd.protocol 'https'")


def test_cli_validates_a_template_file_with_exit_0_and_says_what_it_translated(tmp_path):
    version = VERSIONS[-1]
    copy_with_ports(version, str(tmp_path), {p: p for p in TEMPLATE_PORTS})
    out = subprocess.run([harness.PYTHON, "-m", "governor", "--validate-config", "postgres0.yml"], cwd=tmp_path,
                         capture_output=True, text=True, env={**os.environ, "PYTHONPATH": REPO})
    assert out.returncode == 0, out.stderr
    assert "configuration is valid (member postgresql0, scope batman)" in out.stdout
    assert "governor: note: postgres0.yml: etcd.endpoint: read as etcd.host: localhost:4001" in out.stderr
    assert not (tmp_path / "data").exists()


# --------------------------------------------------------------------------- integration: a real pair


class TemplatePair:
    """Two governors started as the template's README says (`governor postgres0.yml` in the
    directory holding the files), the template's haproxy.cfg in front, an etcd on its port."""

    def __init__(self, version: str, base_dir: str, src_dir: str):
        self.dir = os.path.join(base_dir, f"template-{version}")
        self.etcd = harness.Etcd(self.dir).start()
        pg = [harness.free_port_pair(10000) for _ in range(2)]
        self.ports = {4001: self.etcd.port, 5000: harness.free_port(), 5432: pg[0], 5433: pg[1],
                      15432: pg[0] + 10000, 15433: pg[1] + 10000}
        self.files = os.path.join(self.dir, "files")
        copy_with_ports(version, self.files, self.ports)
        for name in os.listdir(self.files):
            harness.chown_to_runner(os.path.join(self.files, name))
        harness.chown_to_runner(self.files)
        self.cluster = harness.TestCluster(self.etcd, self.dir, src_dir, "batman")
        self.nodes: List[harness.Node] = []
        for n in (0, 1):
            with open(os.path.join(self.files, f"postgres{n}.yml")) as fh:
                raw = yaml.safe_load(fh)
            node = harness.Node(self.cluster, raw["postgresql"]["name"])
            node.config_path = os.path.join(self.files, f"postgres{n}.yml")
            node.dir = self.files                   # cwd and HOME: where the template is run from
            node.data_dir = os.path.join(self.files, raw["postgresql"]["data_dir"])
            node.port, node.api_port = pg[n], pg[n] + 10000
            self.cluster.nodes[node.name] = node
            self.nodes.append(node)
        self.haproxy = None
        self.numbers = itertools.count(1)
        self.acked: List[int] = []

    def leader(self) -> harness.Node:
        value = self.etcd.get("/service/batman/leader", api=3)
        return next(n for n in self.nodes if value and n.name == value["value"])

    def start_haproxy(self) -> None:
        self.haproxy = subprocess.Popen(["haproxy", "-db", "-f", os.path.join(self.files, "haproxy.cfg")],
                                        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
        harness._processes.append(self.haproxy)

    def write_through_haproxy(self) -> int:
        """INSERT one numbered row through the template's haproxy; remembers it when acknowledged and
        returns the port of the server that took it."""
        value = next(self.numbers)
        conn = psycopg2.connect(host="127.0.0.1", port=self.ports[5000], user="postgres", dbname="postgres",
                                password=harness.SUPERUSER_PASSWORD, connect_timeout=2)
        try:
            conn.autocommit = True
            with conn.cursor() as cur:
                cur.execute("INSERT INTO template_writes VALUES (%s) RETURNING inet_server_port()", (value,))
                port = cur.fetchone()[0]
        finally:
            conn.close()
        self.acked.append(value)
        return port

    def teardown(self) -> None:
        if self.haproxy and self.haproxy.poll() is None:
            self.haproxy.terminate()
            self.haproxy.wait(10)
        self.cluster.teardown()
        self.etcd.stop()


def psql_as_postgres(port: int, sql: str) -> None:
    """What the template's user does first: connect on the local socket as the postgres OS user."""
    subprocess.run(["runuser", "-u", "postgres", "--", f"{PG_BIN}/psql", "-X", "-q", "-v", "ON_ERROR_STOP=1",
                    "-h", "/var/run/postgresql", "-p", str(port), "-d", "postgres", "-c", sql],
                   check=True, capture_output=True, timeout=30)


@pytest.mark.integration
@pytest.mark.parametrize("version", VERSIONS)
def test_the_template_pair_forms_a_cluster_behind_its_haproxy_and_fails_over(version, base_dir, src_dir):
    seed_dir(version)
    pair = TemplatePair(version, base_dir, src_dir)
    try:
        for node in pair.nodes:
            node.start()
        wait_until(lambda: pair.etcd.get("/service/batman/leader", api=3), 60, "a leader")
        leader = pair.leader()
        replica = next(n for n in pair.nodes if n is not leader)
        wait_until(lambda: leader.api("/")[0] == 200 and replica.api("/")[0] == 503, 60,
                   "GET / to answer 200 on the leader and 503 on the replica")
        psql_as_postgres(leader.port, f"ALTER ROLE postgres PASSWORD '{harness.SUPERUSER_PASSWORD}'; "
                                      "CREATE TABLE template_writes (id int PRIMARY KEY)")
        pair.cluster.wait_for_streaming([replica.name], 60)
        for node in pair.nodes:
            text = node.log_text()
            assert "2015 template's layout" in text and "wal_keep_size: 128MB" in text, text[-3000:]
        assert os.path.isdir(os.path.join(pair.files, "data")), "the template's data/ directory was made"

        pair.start_haproxy()
        # haproxy starts with every server up and learns the replica is down after its checks
        # (the template's: every 2 s, 3 failures): until then a write may land on the replica.
        wait_until(lambda: all(pair.write_through_haproxy() == leader.port for _ in range(5)), 30,
                   "writes through the template's haproxy.cfg to land on the leader only")
        for _ in range(20):
            assert pair.write_through_haproxy() == leader.port
        wait_until(lambda: replica.sql("SELECT count(*) FROM template_writes")[0][0] == len(pair.acked), 30,
                   "the replica to replay every acknowledged row")

        watch = harness.PrimaryWatch(pair.cluster)
        watch.start()
        crashed = time.monotonic()
        leader.crash()
        wait_until(lambda: replica.role() == "primary", 30 + 30, "the replica to be promoted after ttl")
        wait_until(lambda: pair.write_through_haproxy() == replica.port, 30,
                   "haproxy to route writes to the new leader")
        promoted = watch.first_writable_after(replica.name, crashed)
        assert promoted, "the watch never saw the replica writable"
        rows = {r[0] for r in replica.sql("SELECT id FROM template_writes")}
        assert rows == set(pair.acked), "an acknowledged write was lost"

        leader.start()      # the old leader rejoins as a replica of the new one, by itself
        wait_until(lambda: leader.is_streaming(), 90, "the old leader to rejoin as a streaming replica")
        assert leader.api("/")[0] == 503 and replica.api("/")[0] == 200
        watch.stop()
        assert watch.two_primaries() == []
        print(f"{version}: writes back on the new leader {promoted - crashed:.1f}s after the crash (ttl 30)")
    finally:
        pair.teardown()
