"""Dynamic configuration: validation and merging (pure), without a cluster."""
from __future__ import annotations

from governor import config, dynamic
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
