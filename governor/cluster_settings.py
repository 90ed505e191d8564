"""The cluster-wide settings, declared once: each one's name in the dynamic configuration (etcd's
`config` key, `governorctl edit-config`), the file key it overrides, its kind, default and bounds,
where it lands in the validated Config, and one line for the configuration reference.

The file loader (config.py), the dynamic configuration (dynamic.py: validate, apply), the
defaults the decision sees (hatypes.LocalState) and the reference (reference.py, hence
docs/configuration.md and governor.yml(5)) all read this table. A new scalar dynamic setting is
one row here, the code that uses it, and a test. The two structured dynamic sections,
`postgresql.parameters` (pgparams) and `standby_cluster` (standby), have consumers of their own.
Pure: no file, process or network access."""
from __future__ import annotations

import math
from dataclasses import dataclass, replace
from typing import Any, Dict, List, Mapping, Optional, Tuple

from governor.failsafe import timing_problem
from governor.settings import LIMITS, SIZE_MAX, Config, parse_size, parse_sync_mode


@dataclass(frozen=True)
class DynamicSetting:
    name: str                  # the key in etcd's `config`
    file_key: str              # the key in /etc/governor/*.yml it overrides
    kind: str                  # int | number | size | bool | sync_mode
    default: Any
    meaning: str
    low: float = 0             # numbers: the bounds (low exclusive unless low_inclusive)
    high: Optional[float] = None
    low_inclusive: bool = True
    unit: str = ""             # " seconds", shown after the bounds

    @property
    def path(self) -> Tuple[str, ...]:
        """Where the value lives in Config: ('etcd', 'ttl') for etcd.ttl."""
        return tuple(self.file_key.split("."))

    def check(self, value: Any) -> Optional[str]:
        """A typed value's problem with the bounds, as the file loader words it (None: fine)."""
        if self.kind == "number":
            if not math.isfinite(value) or value > self.high or value < self.low or \
                    (value == self.low and not self.low_inclusive):
                return f"expected a number greater than {self.low:g} and at most {self.high:g}, got {value!r}"
        elif self.kind == "int" and not self.low <= value <= self.high:
            return f"expected {self.low:g} to {self.high:g}{self.unit}, got {value}"
        elif self.kind == "size" and value > SIZE_MAX:
            return f"expected at most {SIZE_MAX} bytes"
        return None

    @property
    def expected(self) -> str:
        """What a value looks like, as the dynamic configuration's errors say it."""
        if self.kind == "int":
            return f"an integer from {self.low:g} to {self.high:g}{self.unit}"
        if self.kind == "number":
            low = f"at least {self.low:g}" if self.low_inclusive else f"greater than {self.low:g}"
            return f"a number{' of' + self.unit if self.unit else ''} {low} and at most {self.high:g}"
        return {"size": "a size in bytes such as 1048576 or '1MB'", "bool": "true or false",
                "sync_mode": "one of off, on, quorum"}[self.kind]

    def wrong(self, shown: str) -> str:
        """The message for a value that is not one of these."""
        return f"expected {self.expected}{';' if self.kind == 'sync_mode' else ','} got {shown}"

    def parse(self, raw: Any) -> Any:
        """The typed value of a dynamic setting as etcd holds it, or None when it is not one."""
        if self.kind == "bool":
            return raw if isinstance(raw, bool) else None
        if self.kind == "sync_mode":
            return parse_sync_mode(raw)
        if self.kind == "size":
            size = parse_size(raw)
            return size if size is not None and self.check(size) is None else None
        if isinstance(raw, bool) or not isinstance(raw, (int, float)) or (self.kind == "int" and
                                                                          not isinstance(raw, int)):
            return None
        return raw if self.check(raw) is None else None


def _seconds(name: str, file_key: str, default: float, meaning: str) -> DynamicSetting:
    return DynamicSetting(name, file_key, "number", default, meaning, 0, LIMITS[name], False, " seconds")


DYNAMIC: Tuple[DynamicSetting, ...] = (
    DynamicSetting("ttl", "etcd.ttl", "int", 30, "Seconds the leader lock lives without renewal: a dead leader is "
                   "replaced after at most this long (5 to 3600).", 5, LIMITS["ttl"], unit=" seconds"),
    _seconds("loop_wait", "loop_wait", 10, "Seconds between HA loop passes. A member also runs a pass at once "
             "when the lock, a switchover, pause, the dynamic configuration or a member changes in etcd."),
    _seconds("retry_timeout", "retry_timeout", 10, "Seconds an etcd operation may take before it counts as "
             "failed. Together with the other two: loop_wait + 2 * retry_timeout <= ttl, so a primary that loses "
             "etcd stops taking writes before its lock can expire."),
    _seconds("primary_start_timeout", "primary_start_timeout", 30, "Seconds the leader tries to restart a "
             "crashed PostgreSQL before it releases the lock."),
    DynamicSetting("maximum_lag_on_failover", "postgresql.maximum_lag_on_failover", "size", 1048576,
                   "Bytes (or '16MB'): a replica further behind is not promoted."),
    DynamicSetting("synchronous_mode", "synchronous_mode", "sync_mode", "off", "off, on or quorum. on: governor "
                   "names the synchronous standbys and only promotes one of them; quorum: ANY n of the replicas."),
    DynamicSetting("synchronous_mode_strict", "synchronous_mode_strict", "bool", False,
                   "With no synchronous standby left, block writes instead of going on asynchronously."),
    DynamicSetting("synchronous_node_count", "synchronous_node_count", "int", 1,
                   "Standbys that confirm each commit (1 to 64).", 1, 64),
    DynamicSetting("failsafe_mode", "failsafe_mode", "bool", False, "Keep the primary writable through an etcd "
                   "outage while every member vouches for it over the API; needs time for a round of answers "
                   "(ttl 10, loop_wait 1: retry_timeout 4)."),
)
BY_NAME: Dict[str, DynamicSetting] = {s.name: s for s in DYNAMIC}
DEFAULTS: Dict[str, Any] = {s.name: s.default for s in DYNAMIC}
TIMING = ("ttl", "loop_wait", "retry_timeout")
DEFAULT_TIMING: Tuple[float, float, float] = tuple(DEFAULTS[k] for k in TIMING)  # type: ignore[assignment]


def timing(config: Config) -> Tuple[float, float, float]:
    """(ttl, loop_wait, retry_timeout) of a configuration, the base the timing rule is checked on."""
    return config.etcd.ttl, config.loop_wait, config.retry_timeout


def rule_problems(values: Mapping[str, Any]) -> List[Tuple[str, str]]:
    """The rules between settings, on a complete set of valid values by dynamic name: (name, problem)."""
    ttl, loop_wait, retry = (values[k] for k in TIMING)
    if loop_wait + 2 * retry > ttl:
        return [("ttl", f"expected loop_wait + 2 * retry_timeout <= ttl so a primary that loses etcd demotes "
                        f"before its lock expires; got {loop_wait} + 2 * {retry} > {ttl}")]
    if values.get("failsafe_mode") is True and timing_problem(ttl, loop_wait, retry):
        return [("failsafe_mode", timing_problem(ttl, loop_wait, retry) or "")]
    return []


def current(config: Config) -> Dict[str, Any]:
    """Every declared setting's value in `config`, by dynamic name."""
    return {s.name: _get(config, s.path) for s in DYNAMIC}


def apply(config: Config, values: Mapping[str, Any]) -> Config:
    """`config` with the declared settings in `values` (dynamic names, raw as etcd holds them)
    replaced by their typed values; a value that does not parse is left out."""
    for name, raw in values.items():
        setting = BY_NAME.get(name)
        value = setting.parse(raw) if setting else None
        if value is not None:
            if setting.kind == "number":
                value = float(value)
            config = _set(config, setting.path, value)
    return config


def _get(obj: Any, path: Tuple[str, ...]) -> Any:
    for part in path:
        obj = getattr(obj, part)
    return obj


def _set(obj: Any, path: Tuple[str, ...], value: Any) -> Any:
    head, rest = path[0], path[1:]
    return replace(obj, **{head: _set(getattr(obj, head), rest, value) if rest else value})

