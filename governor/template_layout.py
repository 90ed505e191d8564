"""Read the 2015 Governor template's own configuration files as governor settings.

The template's `postgres0.yml` (2015-05 to 2016-03) uses a few keys governor's layout does not:
`haproxy_status.listen`, `etcd.endpoint` (a URL) and `etcd.timeout`, and it sets
`parameters.hot_standby`, which governor sets itself. A file with any of those is read in the
*template layout*; none of them was accepted by an earlier governor, so no configuration that
governor accepted before changes meaning. In that layout:

- `etcd.endpoint: http://host:port` becomes `etcd.host` and `etcd.protocol`;
- `etcd.timeout: T` (the template's per-request timeout) becomes `retry_timeout: 2T`, so each
  etcd request gives up after T seconds (at most 5), as governor derives it;
- `haproxy_status.listen` is the REST API's listener when there is no `restapi` section; without
  either, the API listens on PostgreSQL's port + 10000, where the template's haproxy.cfg and its
  `haproxy_status.sh 127.0.0.1 5432 15432` put the check;
- without a `metrics` section the exporter is off (the template had none, and two members on one
  host would both ask for port 9547);
- a relative `data_dir` is resolved against the directory of the file that sets it (the template
  ran from there), and its missing parent is accepted when it lies inside that directory
  (governor creates it at start).

In every layout, `hot_standby: on` and `wal_level: hot_standby` are accepted as what governor
sets anyway (`replica`). Each translation is reported as a warning naming the file and the key.
"""
from __future__ import annotations

import copy
import os
import urllib.parse
from typing import Any, Dict, List, Optional

from governor.checker import Checker, kind_of, parse_host_port

MARKERS = ("haproxy_status", "etcd.endpoint", "etcd.timeout", "postgresql.parameters.hot_standby")
API_PORT_OFFSET = 10000     # the template's convention: PostgreSQL on 5432, its check on 15432
ON = ("on", "true", "yes", "1")


class Translation:
    """The translated mapping, its origins, and what was said about it."""

    def __init__(self, raw: dict, origin: Dict[str, str], source: str):
        self.raw = copy.deepcopy(raw)
        self.origin = dict(origin)
        self.source = source
        self.warnings: List[str] = []
        self.problems: List[str] = []
        self.data_dir_base: str = ""     # set in the template layout: where a relative data_dir starts

    def makes(self, parent: str) -> bool:
        """Whether governor creates the data directory's missing `parent` at start: only inside
        the directory a relative data_dir of the template layout was resolved against."""
        base = self.data_dir_base
        return bool(base) and parent != base and os.path.commonpath([parent, base]) == base

    def where(self, key: str) -> str:
        return Checker(self.raw, self.origin, self.source).where(key)

    def warn(self, key: str, message: str) -> None:
        self.warnings.append(f"{self.where(key)}: {key}: {message}")

    def fail(self, key: str, message: str) -> None:
        self.problems.append(f"{self.where(key)}: {key}: {message}")

    def get(self, key: str) -> Any:
        node: Any = self.raw
        for part in key.split("."):
            if not isinstance(node, dict) or part not in node:
                return None
            node = node[part]
        return node

    def has(self, key: str) -> bool:
        *parents, last = key.split(".")
        node: Any = self.raw
        for part in parents:
            if not isinstance(node, dict):
                return False
            node = node.get(part)
        return isinstance(node, dict) and last in node

    def move(self, old: str, new: str, value: Any) -> None:
        """Set `new` to `value` (creating its sections) and record that it came from `old`'s file."""
        *parents, last = new.split(".")
        node = self.raw
        for part in parents:
            if not isinstance(node.get(part), dict):
                node[part] = {}
            node = node[part]
        node[last] = value
        self.origin[new] = self.where(old)

    def drop(self, key: str) -> None:
        *parents, last = key.split(".")
        node: Any = self.raw
        for part in parents:
            node = node.get(part) if isinstance(node, dict) else None
        if isinstance(node, dict):
            node.pop(last, None)


def translate(raw: dict, origin: Dict[str, str], source: str) -> Translation:
    """The template's keys rewritten as governor's; `raw` itself is not changed."""
    t = Translation(raw, origin, source)
    template = any(t.has(key) for key in MARKERS)
    _standby_parameters(t)
    if not template:
        return t
    _etcd_endpoint(t)
    _etcd_timeout(t)
    _api_listener(t)
    if not t.has("metrics"):
        t.move("", "metrics.enabled", False)
        t.warn("metrics", "not set in the 2015 template's layout: the Prometheus exporter is off "
                          "(add metrics.listen to turn it on)")
    _relative_data_dir(t)
    return t


def _standby_parameters(t: Translation) -> None:
    params = t.get("postgresql.parameters")
    if not isinstance(params, dict):
        return
    if "hot_standby" in params:
        value = params["hot_standby"]
        if value is True or (isinstance(value, str) and value.strip().lower() in ON):
            t.drop("postgresql.parameters.hot_standby")
            t.warn("postgresql.parameters.hot_standby", "ignored: governor always runs replicas with "
                                                        "hot_standby on")
        else:
            t.drop("postgresql.parameters.hot_standby")
            t.fail("postgresql.parameters.hot_standby", f"governor runs replicas with hot_standby on (it reads "
                                                        f"their position from them); got {value!r}, remove it")
    if isinstance(params.get("wal_level"), str) and params["wal_level"].strip().lower() == "hot_standby":
        params["wal_level"] = "replica"
        t.warn("postgresql.parameters.wal_level", "'hot_standby' read as 'replica', its name since "
                                                  "PostgreSQL 9.6")


def _etcd_endpoint(t: Translation) -> None:
    if not t.has("etcd.endpoint"):
        return
    value = t.get("etcd.endpoint")
    t.drop("etcd.endpoint")
    if t.has("etcd.host"):
        t.fail("etcd.endpoint", "give etcd.host or etcd.endpoint (the 2015 template's form), not both")
        return
    parts = urllib.parse.urlsplit(value) if isinstance(value, str) else None
    try:
        port = parts.port if parts else None
    except ValueError:
        port = None
    if (parts is None or parts.scheme not in ("http", "https") or not parts.hostname or port is None
            or parts.path not in ("", "/") or parts.query or parts.username):
        t.fail("etcd.endpoint", f"expected a URL such as http://127.0.0.1:2379, got {kind_of(value)} {value!r}")
        return
    protocol = t.get("etcd.protocol")
    if protocol is not None and protocol != parts.scheme:
        t.fail("etcd.endpoint", f"its scheme {parts.scheme!r} differs from etcd.protocol {protocol!r}")
        return
    host = f"[{parts.hostname}]" if ":" in parts.hostname else parts.hostname
    t.move("etcd.endpoint", "etcd.host", f"{host}:{port}")
    t.move("etcd.endpoint", "etcd.protocol", parts.scheme)
    t.warn("etcd.endpoint", f"read as etcd.host: {host}:{port} and etcd.protocol: {parts.scheme}")


def _etcd_timeout(t: Translation) -> None:
    if not t.has("etcd.timeout"):
        return
    value = t.get("etcd.timeout")
    t.drop("etcd.timeout")
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 < value <= 300:
        t.fail("etcd.timeout", f"expected a number of seconds from 0 to 300, got {kind_of(value)} {value!r}")
        return
    if t.has("retry_timeout"):
        t.warn("etcd.timeout", "ignored: retry_timeout is set")
        return
    retry = value * 2
    t.move("etcd.timeout", "retry_timeout", retry)
    t.warn("etcd.timeout", f"read as retry_timeout: {retry:g} (each etcd request waits at most "
                           f"{min(max(value, 1), 5):g}s, an operation retries for {retry:g}s)")


def _api_listener(t: Translation) -> None:
    status = t.get("haproxy_status")
    had_status = t.has("haproxy_status")
    t.drop("haproxy_status")
    if had_status:
        if not isinstance(status, dict):
            t.fail("haproxy_status", f"expected a mapping with listen, got {kind_of(status)}")
            return
        for key in status:
            if key != "listen":
                t.fail(f"haproxy_status.{key}", "unknown setting (the 2015 template's haproxy_status has only "
                                                "listen)")
        if "listen" not in status:
            return
        if t.has("restapi"):
            t.fail("haproxy_status.listen", "the 2015 template's name for restapi.listen: give only restapi")
            return
        if not isinstance(status["listen"], str) or parse_host_port(status["listen"], 8008) is None:
            t.fail("haproxy_status.listen", f"expected 'host:port' such as 127.0.0.1:15432, got "
                                            f"{kind_of(status['listen'])} {status['listen']!r}")
            return
        t.move("haproxy_status.listen", "restapi.listen", status["listen"])
        t.warn("haproxy_status.listen", f"the REST API listens here ({status['listen']}); it answers "
                                        "GET / as the template's haproxy_status did")
        return
    if t.has("restapi"):
        return
    listen = t.get("postgresql.listen")
    if not isinstance(listen, str):
        return
    host, _, port = listen.rpartition(":")
    if not host or not port.isdigit() or not 0 < int(port) + API_PORT_OFFSET < 65536:
        return      # the postgresql.listen check reports it
    address = f"{host}:{int(port) + API_PORT_OFFSET}"
    t.move("postgresql.listen", "restapi.listen", address)
    t.warn("restapi", f"not set in the 2015 template's layout: the REST API listens on {address} (PostgreSQL's "
                      "port + 10000, where the template's haproxy.cfg checks)")


def _relative_data_dir(t: Translation) -> None:
    data_dir = t.get("postgresql.data_dir")
    if not isinstance(data_dir, str) or not data_dir or os.path.isabs(data_dir):
        return
    where = t.where("postgresql.data_dir")
    base = where if os.path.isdir(where) else os.path.dirname(os.path.abspath(where))
    resolved = os.path.normpath(os.path.join(base, data_dir))
    t.raw["postgresql"]["data_dir"] = resolved
    t.data_dir_base = base
    t.warn("postgresql.data_dir", f"relative: read as {resolved}, beside the file that sets it")


def missing_data_dir_parent(data_dir: str) -> Optional[str]:
    """The data directory's parent when it does not exist yet (validation let that pass only
    where `Translation.makes` says governor creates it)."""
    parent = os.path.dirname(data_dir)
    return None if os.path.isdir(parent) else parent
