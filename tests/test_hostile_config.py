"""Hostile configuration files and values: each is refused with the file, key and reason, and exit 2
from the command line; none raises anything but ConfigError, none hangs."""
from __future__ import annotations

import json
import os
import string
import subprocess
import sys

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from governor import config, dynamic, pgparams
from governor.postgres.catalogue import catalogue

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PG_BIN = "/usr/lib/postgresql/15/bin"
CATALOGUE = catalogue(PG_BIN)


def minimal(tmp_path) -> dict:
    return {
        "etcd": {"scope": "demo", "host": "127.0.0.1:2379"},
        "postgresql": {"name": "node1", "listen": "127.0.0.1:5432", "data_dir": str(tmp_path / "data"),
                       "bin_dir": PG_BIN, "replication": {"password": "secret"}},
    }


def write_bytes(path, data: bytes) -> str:
    with open(path, "wb") as fh:
        fh.write(data)
    return str(path)


def problems_of(path) -> list:
    with pytest.raises(config.ConfigError) as info:
        config.load(str(path))
    return info.value.problems


def cli(*args: str, timeout: float = 30) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "governor", *args], capture_output=True, text=True, cwd=REPO,
                          timeout=timeout)


def test_non_utf8_byte_names_file_line_and_exits_2(tmp_path):
    text = yaml.safe_dump(minimal(tmp_path)) + "# caf\xe9 in Latin-1\n"
    path = write_bytes(tmp_path / "g.yml", text.encode("latin-1"))
    [problem] = problems_of(path)
    assert problem.startswith(f"{path}: not valid UTF-8 (byte 0xe9 at line ")
    result = cli("--validate-config", path)
    assert result.returncode == 2 and "Traceback" not in result.stderr


def test_duplicate_keys_are_refused_not_last_wins(tmp_path):
    text = yaml.safe_dump(minimal(tmp_path)) + "loop_wait: 5\nloop_wait: 7\n"
    [problem] = problems_of(write_bytes(tmp_path / "g.yml", text.encode()))
    assert "key 'loop_wait' appears twice" in problem and f"line {text.count(chr(10))}," in problem


def test_yaml_merge_keys_still_work(tmp_path):
    text = yaml.safe_dump(minimal(tmp_path)).replace(
        "replication:\n    password: secret", "replication: &r\n    password: secret")
    text += "tags: {nofailover: false}\n"
    assert config.load(write_bytes(tmp_path / "g.yml", text.encode())).postgresql.name == "node1"


def test_recursive_alias_is_refused(tmp_path):
    text = yaml.safe_dump(minimal(tmp_path)) + "tags: &t\n  loop: *t\n"
    [problem] = problems_of(write_bytes(tmp_path / "g.yml", text.encode()))
    assert "alias *t refers to the node that contains it" in problem


def test_alias_bomb_is_refused_quickly(tmp_path):
    levels = ["a0: &a0 [x, x, x, x, x, x, x, x, x, x]"]
    for i in range(1, 9):
        levels.append(f"a{i}: &a{i} [" + ", ".join([f"*a{i - 1}"] * 10) + "]")
    text = yaml.safe_dump(minimal(tmp_path)) + "\n".join(levels) + "\n"
    path = write_bytes(tmp_path / "g.yml", text.encode())
    result = cli("--validate-config", path, timeout=20)
    assert result.returncode == 2, result.stderr
    assert "aliases expand to more than" in result.stderr


def test_fifo_directory_and_huge_file_are_refused_without_hanging(tmp_path):
    fifo = tmp_path / "fifo.yml"
    os.mkfifo(fifo)
    result = cli("--validate-config", str(fifo), timeout=20)
    assert result.returncode == 2 and "not a regular file" in result.stderr
    huge = write_bytes(tmp_path / "huge.yml", b"# " + b"x" * (2 * 1024 * 1024) + b"\n")
    assert "larger than 1024 kB" in problems_of(huge)[0]


def test_deep_nesting_is_refused(tmp_path):
    path = write_bytes(tmp_path / "g.yml", b"tags: " + b"[" * 5000 + b"]" * 5000 + b"\n")
    result = cli("--validate-config", path)
    assert result.returncode == 2 and "Traceback" not in result.stderr, result.stderr


@pytest.mark.parametrize("key, value, expected", [
    ("loop_wait", 1e300, "loop_wait: expected a number greater than 0 and at most 300"),
    ("loop_wait", float("inf"), "loop_wait: expected a number greater than 0 and at most 300"),
    ("retry_timeout", float("nan"), "retry_timeout: expected a number greater than 0"),
    ("etcd.ttl", 10**30, "etcd.ttl: expected 5 to 3600 seconds"),
    ("etcd.ttl", 10**9, "etcd.ttl: expected 5 to 3600 seconds"),
    ("etcd.host", [], "etcd.host: expected at least one 'host:port'"),
    ("postgresql.name", "n" * 70, "postgresql.name: expected at most 63 characters"),
    ("postgresql.name", "node1\n", "postgresql.name: expected letters"),
    ("postgresql.replication.password", "pass\nword", "replication.password: control characters"),
    ("postgresql.superuser.password", "pass\x00word", "superuser.password: control characters"),
    ("postgresql.parameters", {"work_mem\nfsync": "off"}, "expected a PostgreSQL setting name"),
    ("postgresql.parameters", {"max_connections": "abc"}, "parameters.max_connections: expected an integer"),
    ("postgresql.parameters", {"max_connections": 10**9}, "expected a value from 1 to 262143"),
    ("postgresql.parameters", {"colour": "blue"}, "parameters.colour: unknown to this PostgreSQL server"),
    ("postgresql.parameters", {"search_path": "a\nfsync = off"}, "control characters"),
    ("postgresql.parameters", {"Port": 5433}, "parameters.Port: set by governor"),
    ("restapi.listen", "127.0.0.1:5432", "restapi.listen: port 5432 is PostgreSQL's"),
    ("metrics.listen", "0.0.0.0:5432", "metrics.listen: port 5432 is PostgreSQL's"),
    ("synchronous_node_count", 10**6, "synchronous_node_count: expected 1 to 64"),
    ("postgresql.permanent_slots", ["Bad-Slot"], "permanent_slots: expected slot names"),
])
def test_value_out_of_bounds_is_refused(tmp_path, key, value, expected):
    raw = minimal(tmp_path)
    node = raw
    parts = key.split(".")
    for part in parts[:-1]:
        node = node.setdefault(part, {})
    node[parts[-1]] = value
    text = yaml.safe_dump(raw, allow_unicode=True) if not isinstance(value, float) else \
        yaml.safe_dump(raw).replace(".nan", ".nan")
    found = problems_of(write_bytes(tmp_path / "g.yml", text.encode()))
    assert any(expected in p for p in found), found


def test_data_dir_that_is_a_file_is_refused(tmp_path):
    raw = minimal(tmp_path)
    (tmp_path / "data").write_text("not a directory")
    assert any("exists and is not a directory" in p
               for p in problems_of(write_bytes(tmp_path / "g.yml", yaml.safe_dump(raw).encode())))


def test_wal_keep_segments_is_translated_with_a_warning(tmp_path):
    raw = minimal(tmp_path)
    raw["postgresql"]["parameters"] = {"wal_keep_segments": 8}
    cfg = config.load(write_bytes(tmp_path / "g.yml", yaml.safe_dump(raw).encode()))
    assert cfg.postgresql.parameters == {"wal_keep_size": "128MB"}
    assert any("wal_keep_segments: 8 translated to wal_keep_size: 128MB" in w for w in cfg.warnings)


@pytest.mark.parametrize("patch, expected", [
    ({"loop_wait": 1e300, "ttl": 10**301}, "ttl: expected an integer from 5 to 3600"),
    ({"loop_wait": 1e300}, "loop_wait: expected a number of seconds greater than 0 and at most 300"),
    ({"retry_timeout": float("inf")}, "retry_timeout: expected"),
    ({"postgresql": {"parameters": {"max_connections": "abc"}}}, "max_connections: expected an integer"),
    ({"postgresql": {"parameters": {"no_such_setting": 1}}}, "no_such_setting: unknown to this PostgreSQL"),
    ({"postgresql": {"parameters": {"search_path": "x\nfsync=off"}}}, "control characters"),
    ({"postgresql": {"parameters": {"a\nb": 1}}}, "expected a PostgreSQL setting name"),
    ({"maximum_lag_on_failover": "9" * 5000}, "maximum_lag_on_failover: expected a size"),
    ({"synchronous_node_count": 10**100}, "synchronous_node_count: expected an integer from 1 to 64"),
])
def test_dynamic_values_out_of_bounds_are_refused(patch, expected):
    problems = dynamic.validate(patch, dynamic.DEFAULT_TIMING, CATALOGUE)
    assert any(expected in p for p in problems), problems


# ----------------------------------------------------------------------------- properties

scalars = st.one_of(st.none(), st.booleans(), st.integers(min_value=-10**40, max_value=10**40),
                    st.floats(allow_nan=True, allow_infinity=True), st.text(max_size=30))
documents = st.recursive(scalars, lambda inner: st.one_of(
    st.lists(inner, max_size=4), st.dictionaries(st.text(string.printable, max_size=12), inner, max_size=5)),
    max_leaves=30)
known_keys = st.sampled_from(["loop_wait", "retry_timeout", "ttl", "maximum_lag_on_failover", "synchronous_mode",
                              "synchronous_mode_strict", "synchronous_node_count", "postgresql", "etcd",
                              "restapi", "tags", "primary_start_timeout"])


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(doc=st.dictionaries(known_keys, documents, max_size=6))
def test_random_documents_give_config_errors_never_tracebacks(tmp_path, doc):
    raw = minimal(tmp_path)
    raw.update(doc)
    text = yaml.safe_dump(raw, allow_unicode=True)
    path = write_bytes(tmp_path / "g.yml", text.encode())
    try:
        cfg = config.load(path)
    except config.ConfigError as exc:
        assert exc.problems and all(isinstance(p, str) for p in exc.problems)
        return
    assert 0 < cfg.loop_wait <= 300 and 0 < cfg.retry_timeout <= 300 and 5 <= cfg.etcd.ttl <= 3600


@settings(max_examples=500, deadline=None)
@given(patch=st.dictionaries(known_keys, documents, max_size=6),
       params=st.dictionaries(st.text(max_size=20), scalars, max_size=4))
def test_random_patches_are_valid_or_refused_never_a_traceback(patch, params):
    if params:
        patch = {**patch, "postgresql": {"parameters": params}}
    new = dynamic.patch({}, patch)
    problems = dynamic.validate(new, dynamic.DEFAULT_TIMING, CATALOGUE)
    if problems:
        return
    json.dumps(new)   # what would be written to etcd
    cfg = dynamic.apply(config.validate(minimal_raw(), {}, "x"), new)
    assert 0 < cfg.loop_wait <= 300 and 5 <= cfg.etcd.ttl <= 3600
    for name, value in cfg.postgresql.parameters.items():
        assert pgparams.check(name, value, CATALOGUE) is None


def minimal_raw() -> dict:
    return {"etcd": {"scope": "demo"}, "postgresql": {"name": "n1", "data_dir": "/tmp/x", "bin_dir": PG_BIN,
                                                      "replication": {"password": "p"}}}


def test_integer_settings_are_read_as_postgresql_reads_them():
    """'0600' is how PostgreSQL documents log_file_mode (octal, strtol base 0): a Patroni user's
    parameters section must not fail on it; what PostgreSQL refuses stays refused."""
    cat = catalogue(PG_BIN)
    for name, value in (("log_file_mode", "0600"), ("log_file_mode", "0640"), ("unix_socket_permissions", "0770"),
                        ("log_file_mode", "0x1FF"), ("log_file_mode", 384), ("max_connections", "100")):
        assert pgparams.check(name, value, cat) is None, (name, value)
    for name, value in (("log_file_mode", "600"), ("log_file_mode", "0999"), ("max_connections", "0x")):
        assert pgparams.check(name, value, cat) is not None, (name, value)
