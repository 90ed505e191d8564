"""The vocabulary for checking a configuration mapping: a Checker that walks it and collects
one `FILE: KEY: what was expected` message per problem, and the checks the settings share."""
from __future__ import annotations

import contextlib
import ipaddress
import math
import os
from dataclasses import dataclass, field
from typing import Any, Callable, Dict, Iterator, List, Optional, Tuple

from governor.settings import CONTROL_RE, LIMITS, NAME_MAX, NAME_RE, SECRET_MAX, parse_size


def kind_of(value: Any) -> str:
    if value is None:
        return "nothing"
    return {bool: "a boolean", int: "an integer", float: "a number", str: "a string",
            list: "a list", dict: "a mapping"}.get(type(value), type(value).__name__)


@dataclass
class Declared:
    """What Checkers consulted while recording (the configuration reference is made from it):
    each section's allowed keys, and each value's kind and default."""
    sections: Dict[str, Tuple[str, ...]] = field(default_factory=dict)
    values: Dict[str, Tuple[str, Any]] = field(default_factory=dict)


_recording: List[Declared] = []


@contextlib.contextmanager
def recording() -> Iterator[Declared]:
    """Record what every Checker consults until the block ends."""
    declared = Declared()
    _recording.append(declared)
    try:
        yield declared
    finally:
        _recording.remove(declared)


class Checker:
    """Walks the merged mapping, collecting one message per problem."""

    def __init__(self, raw: dict, origin: Dict[str, str], source: str):
        self.raw = raw
        self.origin = origin
        self.source = source
        self.problems: List[str] = []
        self.warnings: List[str] = []

    def where(self, key: str) -> str:
        parts = key.split(".")
        for i in range(len(parts), 0, -1):
            found = self.origin.get(".".join(parts[:i]))
            if found:
                return found
        return self.source

    def fail(self, key: str, message: str) -> None:
        self.problems.append(f"{self.where(key)}: {key}: {message}")

    def section(self, key: str) -> dict:
        value = self.get(key)
        if value is None:
            return {}
        if not isinstance(value, dict):
            self.fail(key, f"expected a mapping, got {kind_of(value)}")
            return {}
        return value

    def get(self, key: str) -> Any:
        node: Any = self.raw
        for part in key.split("."):
            if not isinstance(node, dict):
                return None
            node = node.get(part)
        return node

    def declare(self, key: str, allowed: Tuple[str, ...]) -> None:
        """The keys section `key` may hold (recorded for the configuration reference)."""
        for declared in _recording:
            declared.sections[key] = tuple(allowed)

    def unknown(self, key: str, mapping: dict, allowed: Tuple[str, ...]) -> None:
        self.declare(key, allowed)
        for name in mapping:
            if name not in allowed:
                full = f"{key}.{name}" if key else str(name)
                self.fail(full, f"unknown setting (expected one of: {', '.join(allowed)})")

    def value(self, key: str, kind: str, default: Any = None, required: bool = False,
              check: Optional[Callable[[Any], Optional[str]]] = None) -> Any:
        for declared in _recording:
            declared.values.setdefault(key, (kind, default))
        value = self.get(key)
        if value is None:
            if required:
                self.fail(key, f"required ({_EXPECT[kind]})")
            return default
        ok = _TYPE_OK[kind](value)
        if not ok:
            self.fail(key, f"expected {_EXPECT[kind]}, got {kind_of(value)} {value!r}")
            return default
        if kind == "size":
            value = parse_size(value)
            if value is None:
                self.fail(key, f"expected {_EXPECT[kind]}, got {self.get(key)!r}")
                return default
        if check:
            message = check(value)
            if message:
                self.fail(key, message)
                return default
        return value


def _is_number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def _is_scalar(v: Any) -> bool:
    return isinstance(v, (str, int, float, bool))


_TYPE_OK: Dict[str, Callable[[Any], bool]] = {
    "int": lambda v: isinstance(v, int) and not isinstance(v, bool),
    "number": _is_number,
    "str": lambda v: isinstance(v, str),
    "bool": lambda v: isinstance(v, bool),
    "size": lambda v: (isinstance(v, int) and not isinstance(v, bool)) or isinstance(v, str),
    "scalars": lambda v: isinstance(v, dict) and all(_is_scalar(x) for x in v.values()),
    "strlist": lambda v: isinstance(v, list) and all(isinstance(x, str) for x in v),
    "hosts": lambda v: isinstance(v, str) or (isinstance(v, list) and all(isinstance(x, str) for x in v)),
    "initdb": lambda v: isinstance(v, list) and all(
        isinstance(x, str) or (isinstance(x, dict) and len(x) == 1 and all(_is_scalar(y) for y in x.values()))
        for x in v),
}
_EXPECT = {
    "int": "an integer",
    "number": "a number of seconds",
    "str": "a string",
    "bool": "true or false",
    "size": "a size in bytes, e.g. 1048576 or '1MB'",
    "scalars": "a mapping of names to strings, numbers or booleans",
    "strlist": "a list of strings",
    "hosts": "'host:port' or a list of 'host:port'",
    "initdb": "a list of initdb options, each 'name' or {name: value}",
}


def parse_host_port(text: str, default_port: Optional[int] = None) -> Optional[Tuple[str, int]]:
    """'host:port', '[v6]:port' or (with a default) 'host' -> (host, port); None when malformed."""
    text = text.strip()
    if text.startswith("["):
        host, _, rest = text[1:].partition("]")
        port_text = rest[1:] if rest.startswith(":") else ""
    elif text.count(":") == 1:
        host, port_text = text.split(":")
    else:
        host, port_text = text, ""
        if ":" in host:
            try:
                ipaddress.IPv6Address(host)  # a bare IPv6 address, no port
            except ValueError:
                return None
    if not port_text:
        if default_port is None:
            return None
        return (host, default_port) if host else None
    if not port_text.isdigit() or not 0 < int(port_text) < 65536:
        return None
    return host, int(port_text)


def default_bin_dir() -> str:
    """The newest installed PostgreSQL server's bin directory (Debian or PGDG layout), for a member
    with no data directory yet (bindir.py chooses by PG_VERSION otherwise)."""
    from governor.bindir import choose

    return choose(None, None)[0]


def needs_module(needed: bool, module: str, package: str) -> Optional[str]:
    """A setting that needs an optional Python module (the package only recommends it): why it
    cannot be used here, or None."""
    import importlib.util

    if not needed or importlib.util.find_spec(module) is not None:
        return None
    return f"needs the Python module {module}, which is not installed (Debian: {package}; EL: {package})"


def name_check(v: str) -> Optional[str]:
    if not NAME_RE.fullmatch(v):
        return "expected letters, digits, '_', '.' or '-' (it is used in etcd keys)"
    if len(v) > NAME_MAX:
        return f"expected at most {NAME_MAX} characters (it names a replication slot), got {len(v)}"
    return None


def secret_check(v: str) -> Optional[str]:
    if CONTROL_RE.search(v):
        return "control characters (such as a newline) are not allowed"
    if len(v) > SECRET_MAX:
        return f"expected at most {SECRET_MAX} characters"
    return None


def positive(v: float) -> Optional[str]:
    return None if v > 0 else "expected a value greater than 0"


def bounded(key: str, minimum: float = 0, inclusive: bool = False) -> Callable[[float], Optional[str]]:
    """A check that a finite number lies above `minimum` and at most LIMITS[key]."""
    top = LIMITS[key]

    def check(v: float) -> Optional[str]:
        if not math.isfinite(v) or v > top or v < minimum or (v == minimum and not inclusive):
            low = f"at least {minimum}" if inclusive else f"greater than {minimum}"
            return f"expected a number {low} and at most {top}, got {v!r}"
        return None

    return check


def existing_files(c: Checker, section: str, keys: Tuple[str, ...]) -> Dict[str, Optional[str]]:
    """`SECTION.KEY` for each key: a path to an existing file, or None when not set."""
    return {key: c.value(f"{section}.{key}", "str",
                         check=lambda v: None if os.path.isfile(v) else f"file {v!r} does not exist")
            for key in keys}


def network_check(v: str) -> Optional[str]:
    for item in v.split():
        try:
            ipaddress.ip_network(item, strict=False)
        except ValueError:
            if item not in ("all", "samehost", "samenet") and not item.startswith("."):
                return f"expected a network for pg_hba.conf such as 10.0.0.0/24, got {item!r}"
    return None


def expectation(kind: Optional[str]) -> str:
    """What a value of `kind` looks like, as the error messages say it ('' for no kind)."""
    return _EXPECT.get(kind, "") if kind else ""
