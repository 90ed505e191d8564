"""Where governor listens and how other hosts reach it: the API's and the exporter's listeners
(restapi, metrics), checked against PostgreSQL's and against each other. A member that would
publish a loopback address while its peers live on other hosts is refused at load."""
from __future__ import annotations

from typing import Tuple

from governor import apiauth, passwords
from governor.checker import Checker, existing_files, parse_host_port
from governor.settings import WILDCARD_HOSTS, MetricsConfig, RestApiConfig

RESTAPI_KEYS = ("listen", "connect_address", "username", "password", "password_file", "certfile", "keyfile", "cafile",
                "verify_client", "authentication")
METRICS_KEYS = ("enabled", "listen")


def same(a: Tuple[str, int], b: Tuple[str, int]) -> bool:
    """Two listeners collide on the same port when their hosts are equal or one is a wildcard."""
    return a[1] == b[1] and (a[0] == b[0] or a[0] in WILDCARD_HOSTS or b[0] in WILDCARD_HOSTS)


def _listen(c: Checker, key: str, default: str, default_port: int) -> Tuple[str, int]:
    text = c.value(key, "str", default)
    parsed = parse_host_port(text, default_port) if text else None
    if parsed is None:
        c.fail(key, f"expected 'host:port' such as {default}, got {text!r}")
        return parse_host_port(default, default_port)  # type: ignore[return-value]
    return parsed


def address(host: str, port: int) -> str:
    """host:port as a listen setting; PostgreSQL's `*` wildcard becomes 0.0.0.0."""
    host = "0.0.0.0" if host in ("*", "") else host
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def is_loopback(host: str) -> bool:
    return host == "localhost" or host.startswith("127.") or host == "::1"


def restapi(c: Checker, pg_listen_host: str, pg_connect_host: str) -> RestApiConfig:
    """The API listens where PostgreSQL does unless told otherwise, and is reached at the host
    other members already reach PostgreSQL at: so three hosts that only set postgresql.listen
    and connect_address also publish API addresses their peers can use."""
    section = c.section("restapi")
    c.unknown("restapi", section, RESTAPI_KEYS)
    host, port = _listen(c, "restapi.listen", address(pg_listen_host, 8008), 8008)
    connect_host = host
    connect = c.value("restapi.connect_address", "str")
    if connect:
        parsed = parse_host_port(connect, port)
        if parsed is None or parsed[1] != port:
            c.fail("restapi.connect_address", f"expected 'host:{port}' (the restapi.listen port), got {connect!r}")
        else:
            connect_host = parsed[0]
    elif host in WILDCARD_HOSTS:
        connect_host = pg_connect_host
    if is_loopback(connect_host) and not is_loopback(pg_connect_host):
        c.fail("restapi.connect_address" if connect else "restapi.listen",
               f"the other members reach PostgreSQL at {pg_connect_host} but would reach this member's API at "
               f"{address(connect_host, port)}, a loopback address: during a failover they could not compare "
               "positions with it, and haproxy could not check it. Use this host's address (or listen on "
               "0.0.0.0 with restapi.connect_address set to it)")
    user, password = passwords.user_and_password(c, "restapi")
    files = existing_files(c, "restapi", ("certfile", "keyfile", "cafile"))
    if files["keyfile"] and not files["certfile"]:
        c.fail("restapi.keyfile", "set restapi.certfile too")
    verify = c.value("restapi.verify_client", "str", "none")
    if verify not in ("none", "required"):
        c.fail("restapi.verify_client", f"expected none or required, got {verify!r}")
    elif verify == "required" and not (files["certfile"] and files["cafile"]):
        c.fail("restapi.verify_client", "required needs restapi.certfile and keyfile (TLS) and restapi.cafile (the CA "
                                        "that signed the clients' certificates)")
    apiauth.check(c, address(host, port), is_loopback(host), bool(user) or verify == "required")
    return RestApiConfig(listen_host=host, port=port, connect_host=connect_host, username=user,
                         password=password, verify_client=verify, **files)


def metrics(c: Checker, pg_listen_host: str) -> MetricsConfig:
    """The exporter listens where PostgreSQL does unless told otherwise (Prometheus scrapes it
    from another host); it serves no secrets."""
    section = c.section("metrics")
    c.unknown("metrics", section, METRICS_KEYS)
    enabled = c.value("metrics.enabled", "bool", True)
    host, port = _listen(c, "metrics.listen", address(pg_listen_host, 9547), 9547)
    return MetricsConfig(enabled=enabled, listen_host=host, port=port)
