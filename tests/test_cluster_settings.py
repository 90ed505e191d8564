"""The cluster-wide settings are declared once (governor/cluster_settings.py): every row is read
from the files, validated and applied from etcd, and shown in the reference, with nothing else
to write. A row added there is covered here without touching this test."""
from __future__ import annotations

import copy

import pytest

from governor import cluster_settings, config, dynamic, reference
from governor.hatypes import LocalState
from tests.test_hostile_config import minimal_raw

SAMPLES = {"int": lambda s: s.high, "number": lambda s: 1, "size": lambda s: "2MB", "bool": lambda s: True,
           "sync_mode": lambda s: "quorum"}
TYPED = {"size": 2 * 1024 * 1024}


def _with(raw: dict, dotted: str, value) -> dict:
    out = copy.deepcopy(raw)
    *sections, last = dotted.split(".")
    node = out
    for part in sections:
        node = node.setdefault(part, {})
    node[last] = value
    return out


@pytest.mark.parametrize("setting", cluster_settings.DYNAMIC, ids=lambda s: s.name)
def test_a_declared_setting_is_read_from_the_files_and_from_etcd(setting):
    sample = SAMPLES[setting.kind](setting)
    typed = TYPED.get(setting.kind, sample)
    base = config.validate(minimal_raw(), {}, "f.yml")
    assert cluster_settings.current(base)[setting.name] == setting.default, "the default when nothing sets it"

    from_file = config.validate(_with(minimal_raw(), setting.file_key, sample), {}, "f.yml")
    assert cluster_settings.current(from_file)[setting.name] == typed

    assert dynamic.validate({setting.name: sample}, dynamic.timing(base)) == []
    from_etcd = dynamic.apply(base, {setting.name: sample})
    assert cluster_settings.current(from_etcd)[setting.name] == typed
    others = {k: v for k, v in cluster_settings.current(from_etcd).items() if k != setting.name}
    assert others == {k: v for k, v in cluster_settings.current(base).items() if k != setting.name}


@pytest.mark.parametrize("setting", cluster_settings.DYNAMIC, ids=lambda s: s.name)
def test_a_bad_value_is_refused_naming_the_key_in_both_places(setting):
    problems = dynamic.validate({setting.name: "nonsense"})
    assert problems and problems[0].startswith(f"config: {setting.name}: expected "), problems
    with pytest.raises(config.ConfigError) as err:
        config.validate(_with(minimal_raw(), setting.file_key, "nonsense"), {}, "f.yml")
    assert f"f.yml: {setting.file_key}: expected" in str(err.value)
    assert dynamic.apply(config.validate(minimal_raw(), {}, "f.yml"), {setting.name: "nonsense"}) == \
        config.validate(minimal_raw(), {}, "f.yml"), "a value that does not parse changes nothing"


def test_the_reference_and_the_decisions_defaults_come_from_the_declarations():
    for setting in cluster_settings.DYNAMIC:
        assert reference.SETTINGS[setting.file_key].applies == reference.DYNAMIC
        assert reference.SETTINGS[setting.file_key].meaning == setting.meaning
    state = LocalState(name="n", data="empty")
    assert (state.loop_wait, state.retry_timeout, state.maximum_lag_on_failover) == \
        tuple(cluster_settings.DEFAULTS[k] for k in ("loop_wait", "retry_timeout", "maximum_lag_on_failover"))
    assert dynamic.DEFAULT_TIMING == (30, 10, 10)


def test_the_rules_between_settings_are_checked_the_same_in_files_and_etcd():
    problems = dynamic.validate({"ttl": 10}, base=(30, 10, 10))
    assert problems == ["config: ttl: expected loop_wait + 2 * retry_timeout <= ttl so a primary that loses etcd "
                        "demotes before its lock expires; got 10 + 2 * 10 > 10"]
    with pytest.raises(config.ConfigError) as err:
        config.validate(_with(minimal_raw(), "etcd.ttl", 10), {}, "f.yml")
    assert "f.yml: etcd.ttl: " + problems[0].split(": ", 2)[2] in str(err.value)
