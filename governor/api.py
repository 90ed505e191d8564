"""The HTTP API: health checks for load balancers, status for tools.

Every answer comes from the NodeStatus the HA loop published last; no request opens a
PostgreSQL connection or talks to etcd. Health endpoints answer 200 or 503 with a small JSON
body (status code only for HEAD and OPTIONS).
"""
from __future__ import annotations

import base64
import hmac
import json
import logging
import socketserver
import ssl
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Callable, Dict, Optional, Tuple
from urllib.parse import parse_qs, urlsplit

from governor.config import Config, RestApiConfig, parse_size
from governor.status import NodeStatus

log = logging.getLogger(__name__)

HealthCheck = Callable[[NodeStatus, Dict[str, str]], Tuple[bool, Optional[str]]]


class BadRequest(Exception):
    pass


def _lag_limit(query: Dict[str, str]) -> Optional[int]:
    if "lag" not in query:
        return None
    limit = parse_size(query["lag"])
    if limit is None:
        raise BadRequest(f"lag: expected a size in bytes such as 1048576 or 16MB, got {query['lag']!r}")
    return limit


def check_primary(st: NodeStatus, query: Dict[str, str]) -> Tuple[bool, Optional[str]]:
    if not st.running:
        return False, "PostgreSQL is not running"
    if st.role != "primary":
        return False, f"this member is a {st.role}"
    if not st.lock_valid():
        return False, "this member does not hold a valid leader lock"
    return True, None


def check_replica(st: NodeStatus, query: Dict[str, str]) -> Tuple[bool, Optional[str]]:
    limit = _lag_limit(query)
    if not st.is_replica:
        return False, "not a running replica"
    if st.tags.get("noloadbalance"):
        return False, "tagged noloadbalance"
    if limit is not None:
        lag = st.lag_bytes()
        if lag is None or lag > limit:
            return False, f"lag {lag} bytes exceeds {limit}" if lag is not None else "lag unknown"
    return True, None


def check_read_only(st: NodeStatus, query: Dict[str, str]) -> Tuple[bool, Optional[str]]:
    if check_primary(st, query)[0]:
        return True, None
    return check_replica(st, query)


def check_health(st: NodeStatus, query: Dict[str, str]) -> Tuple[bool, Optional[str]]:
    return (True, None) if st.running else (False, "PostgreSQL is not running")


def check_readiness(st: NodeStatus, query: Dict[str, str]) -> Tuple[bool, Optional[str]]:
    if st.is_primary:
        return True, None
    if st.is_replica and st.streaming:
        return True, None
    return False, "neither a primary holding the lock nor a streaming replica"


HEALTH: Dict[str, HealthCheck] = {
    "/primary": check_primary,
    "/leader": check_primary,
    "/read-write": check_primary,
    "/replica": check_replica,
    "/read-only": check_read_only,
    "/health": check_health,
    "/readiness": check_readiness,
}


class _Server(ThreadingHTTPServer):
    def server_bind(self) -> None:
        """Bind without the reverse DNS lookup (socket.getfqdn) of the standard server, which
        stalls start-up for as long as the resolver takes to give up."""
        socketserver.TCPServer.server_bind(self)
        self.server_name, self.server_port = self.server_address[:2]


class ApiServer:
    def __init__(self, config: Config, get_status: Callable[[], NodeStatus],
                 controls: Optional[Dict[str, Callable[[dict], Tuple[int, dict]]]] = None):
        self.config = config
        # Control endpoints: "METHOD /path" -> handler(JSON body) -> (HTTP code, JSON answer)
        self.controls = controls or {}
        self.cfg: RestApiConfig = config.restapi
        self.get_status = get_status
        self.liveness_window = max(float(config.etcd.ttl), config.loop_wait + 2 * config.retry_timeout)
        self.httpd: Optional[ThreadingHTTPServer] = None
        self.thread: Optional[threading.Thread] = None

    def start(self) -> None:
        handler = type("Handler", (_Handler,), {"api": self})
        self.httpd = _Server((self.cfg.listen_host, self.cfg.port), handler)
        self.httpd.daemon_threads = True
        if self.cfg.certfile:
            ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
            ctx.load_cert_chain(self.cfg.certfile, self.cfg.keyfile)
            if self.cfg.cafile:
                ctx.load_verify_locations(self.cfg.cafile)
                ctx.verify_mode = ssl.CERT_OPTIONAL
            self.httpd.socket = ctx.wrap_socket(self.httpd.socket, server_side=True)
        self.thread = threading.Thread(target=self.httpd.serve_forever, name="restapi", daemon=True)
        self.thread.start()
        log.info("REST API listening on %s:%s", self.cfg.listen_host, self.cfg.port)

    def stop(self) -> None:
        if self.httpd:
            self.httpd.shutdown()
            self.httpd.server_close()

    def authorized(self, header: Optional[str]) -> bool:
        if not self.cfg.username:
            return True
        if not header or not header.startswith("Basic "):
            return False
        try:
            user, _, password = base64.b64decode(header[6:]).decode("utf-8").partition(":")
        except (ValueError, UnicodeDecodeError):
            return False
        return hmac.compare_digest(user, self.cfg.username) and hmac.compare_digest(password, self.cfg.password or "")

    def config_view(self) -> dict:
        """The effective configuration without a single password."""
        c = self.config
        pg = c.postgresql
        return {
            "loop_wait": c.loop_wait, "retry_timeout": c.retry_timeout,
            "synchronous_mode": c.synchronous_mode, "synchronous_mode_strict": c.synchronous_mode_strict,
            "synchronous_node_count": c.synchronous_node_count,
            "primary_start_timeout": c.primary_start_timeout,
            "etcd": {"scope": c.etcd.scope, "ttl": c.etcd.ttl, "hosts": [f"{h}:{p}" for h, p in c.etcd.hosts],
                     "protocol": c.etcd.protocol},
            "postgresql": {"name": pg.name, "listen": f"{pg.listen_host}:{pg.port}", "connect_address": pg.conn_url,
                           "data_dir": pg.data_dir, "bin_dir": pg.bin_dir,
                           "maximum_lag_on_failover": pg.maximum_lag_on_failover,
                           "replication": {"username": pg.replication.username, "network": pg.replication_network},
                           "superuser": {"username": pg.superuser.username}, "parameters": pg.parameters,
                           "recovery_conf": pg.recovery_conf},
            "tags": c.tags,
        }


class _Handler(BaseHTTPRequestHandler):
    api: ApiServer
    timeout = 5
    server_version = "governor"
    protocol_version = "HTTP/1.1"

    def log_message(self, format: str, *args) -> None:  # noqa: A002 - signature from the base class
        log.debug("api %s - %s", self.address_string(), format % args)

    def _send(self, code: int, body: Optional[dict], head_only: bool = False) -> None:
        payload = b"" if body is None else (json.dumps(body, separators=(",", ":")) + "\n").encode()
        self.send_response(code)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", "0" if head_only else str(len(payload)))
        self.send_header("Cache-Control", "no-store")
        self.end_headers()
        if not head_only:
            self.wfile.write(payload)

    def _route(self, method: str) -> None:
        url = urlsplit(self.path)
        path = url.path.rstrip("/") or "/"
        query = {k: v[-1] for k, v in parse_qs(url.query, keep_blank_values=True).items()}
        head_only = method in ("HEAD", "OPTIONS")
        st = self.api.get_status()
        try:
            if path in HEALTH:
                ok, reason = HEALTH[path](st, query)
                body = {"role": st.role, "state": st.state, "leader": st.leader, "timeline": st.timeline}
                if reason:
                    body["reason"] = reason
                return self._send(200 if ok else 503, body, head_only)
            if path == "/liveness":
                age = time.monotonic() - st.loop_finished if st.loop_finished else None
                alive = age is not None and (age < self.api.liveness_window or st.state in (
                    "bootstrapping", "creating replica"))
                return self._send(200 if alive else 503, {"last_loop_age": round(age, 3) if age else None},
                                  head_only)
            if method == "OPTIONS":
                return self._send(404, None, True)
            if path == "/status":
                return self._send(200, st.as_dict(), head_only)
            if path == "/cluster":
                return self._send(200, st.cluster_dict(), head_only)
            if path == "/config":
                if not self.api.authorized(self.headers.get("Authorization")):
                    return self._unauthorized()
                return self._send(200, self.api.config_view(), head_only)
        except BadRequest as exc:
            return self._send(400, {"error": str(exc)}, head_only)
        return self._send(404, {"error": f"no such endpoint: {path}"}, head_only)

    def do_GET(self) -> None:  # noqa: N802 - http.server naming
        self._route("GET")

    def do_HEAD(self) -> None:  # noqa: N802
        self._route("HEAD")

    def do_OPTIONS(self) -> None:  # noqa: N802
        self._route("OPTIONS")

    def _read_body(self) -> Optional[bytes]:
        length = int(self.headers.get("Content-Length") or 0)
        if length > 65536:
            return None
        return self.rfile.read(length) if length > 0 else b""

    def _unauthorized(self) -> None:
        self.send_response(401)
        self.send_header("WWW-Authenticate", 'Basic realm="governor"')
        self.send_header("Content-Length", "0")
        self.end_headers()

    def _control(self) -> None:
        """POST/PATCH/DELETE: the control endpoints, all behind the configured credentials."""
        path = urlsplit(self.path).path.rstrip("/")
        raw = self._read_body()
        handler = self.api.controls.get(f"{self.command} {path}")
        if handler is None:
            known = path in HEALTH or path in ("/status", "/cluster", "/liveness") or any(
                key.endswith(f" {path}") for key in self.api.controls)
            return self._send(405 if known else 404, {"error": f"{self.command} is not supported on {path}"})
        if not self.api.authorized(self.headers.get("Authorization")):
            return self._unauthorized()
        if raw is None:
            return self._send(400, {"error": "request body too large"})
        try:
            body = json.loads(raw or b"{}")
        except ValueError:
            body = None
        if not isinstance(body, dict):
            return self._send(400, {"error": "expected a JSON object"})
        code, answer = handler(body)
        return self._send(code, answer)

    do_POST = do_PATCH = do_DELETE = _control  # noqa: N815 - http.server naming

    def do_PUT(self) -> None:  # noqa: N802
        self._read_body()
        self._send(405, {"error": f"PUT is not supported on {urlsplit(self.path).path}"})
