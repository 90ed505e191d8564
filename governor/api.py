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
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Callable, Dict, Optional, Tuple
from urllib.parse import parse_qs, urlsplit

from governor import api_seed, audit, clock
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
    "/": check_primary,          # the 2015 template's haproxy_status: 200 on the leader, 503 elsewhere
                                 # (also any target that is not a path: see _route)
    "/primary": check_primary,
    "/leader": check_primary,
    "/read-write": check_primary,
    "/replica": check_replica,
    "/read-only": check_read_only,
    "/health": check_health,
    "/readiness": check_readiness,
}


MAX_BODY = 65536
MAX_CONNECTIONS = 128         # connections served at once; more wait in the listen backlog
HANDSHAKE_TIMEOUT = 5.0


class _Server(ThreadingHTTPServer):
    """One thread per connection, at most MAX_CONNECTIONS of them; the TLS handshake happens in
    that thread with a timeout, so an idle or slow client never blocks the accept loop (and with
    it haproxy's health checks)."""
    request_queue_size = 128
    daemon_threads = True
    tls: Optional[ssl.SSLContext] = None

    def __init__(self, *args, **kwargs) -> None:
        self.slots = threading.BoundedSemaphore(MAX_CONNECTIONS)
        super().__init__(*args, **kwargs)

    def server_bind(self) -> None:
        """Bind without the reverse DNS lookup (socket.getfqdn) of the standard server, which
        stalls start-up for as long as the resolver takes to give up."""
        socketserver.TCPServer.server_bind(self)
        self.server_name, self.server_port = self.server_address[:2]

    def process_request(self, request, client_address) -> None:
        # At the limit, the accept loop waits for a thread to finish (each has a timeout); new
        # connections wait in the listen backlog meanwhile instead of being refused.
        self.slots.acquire()
        try:
            super().process_request(request, client_address)
        except Exception:
            self.slots.release()
            raise

    def process_request_thread(self, request, client_address) -> None:
        try:
            super().process_request_thread(request, client_address)
        finally:
            self.slots.release()

    def finish_request(self, request, client_address) -> None:
        if self.tls is not None:
            request.settimeout(HANDSHAKE_TIMEOUT)
            try:
                request = self.tls.wrap_socket(request, server_side=True)
            except (OSError, ssl.SSLError) as exc:
                log.debug("api: TLS handshake with %s failed: %s", client_address, exc)
                return
        super().finish_request(request, client_address)

    def handle_error(self, request, client_address) -> None:
        log.debug("api: error while serving %s", client_address, exc_info=True)


class ApiServer:
    def __init__(self, config: Config, get_status: Callable[[], NodeStatus],
                 controls: Optional[Dict[str, Callable[[dict], Tuple[int, dict]]]] = None,
                 audit_sink: Optional[Callable[[dict], None]] = None,
                 exposition: Optional[Callable[[], Tuple[bytes, str]]] = None):
        self.config = config
        self.exposition = exposition    # GET /metrics: the exporter's scrape, on this port too
        # Control endpoints: "METHOD /path" -> handler(JSON body) -> (HTTP code, JSON answer)
        self.controls = controls or {}
        self.audit_sink = audit_sink    # keeps each audit record (in etcd)
        self.cfg: RestApiConfig = config.restapi
        self.get_status = get_status
        self.liveness_window = max(float(config.etcd.ttl), config.loop_wait + 2 * config.retry_timeout)
        self.httpd: Optional[ThreadingHTTPServer] = None
        self.thread: Optional[threading.Thread] = None

    def start(self) -> None:
        handler = type("Handler", (_Handler,), {"api": self})
        self.httpd = _Server((self.cfg.listen_host, self.cfg.port), handler)
        if self.cfg.certfile:
            ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
            ctx.load_cert_chain(self.cfg.certfile, self.cfg.keyfile)
            if self.cfg.cafile:
                ctx.load_verify_locations(self.cfg.cafile)
                ctx.verify_mode = ssl.CERT_OPTIONAL
            self.httpd.tls = ctx
        self.thread = threading.Thread(target=self.httpd.serve_forever, name="restapi", daemon=True)
        self.thread.start()
        log.info("REST API listening on %s:%s", self.cfg.listen_host, self.cfg.port)

    def stop(self) -> None:
        if self.httpd:
            self.httpd.shutdown()
            self.httpd.server_close()

    def principal(self, header: Optional[str], certificate: Optional[dict]) -> Optional[str]:
        """Who sends a control request: 'user NAME' (Basic credentials), 'certificate SUBJECT' (a
        client certificate from restapi.cafile, with verify_client: required), 'anonymous' when
        the API asks for no credentials; None when it asks for them and they are missing or wrong."""
        if not self.cfg.authenticated:
            return "anonymous"
        if self.cfg.verify_client == "required" and certificate:
            return "certificate " + _subject(certificate)
        if not self.cfg.username or not header or not header.startswith("Basic "):
            return None
        try:
            user, _, password = base64.b64decode(header[6:].encode("ascii"), validate=True).partition(b":")
        except (ValueError, UnicodeError):
            return None
        expected_password = (self.cfg.password or "").encode("utf-8")
        if hmac.compare_digest(user, self.cfg.username.encode("utf-8")) & \
                hmac.compare_digest(password, expected_password):
            return f"user {self.cfg.username}"
        return None

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


SHORT_NAMES = {"commonName": "CN", "organizationName": "O", "organizationalUnitName": "OU", "countryName": "C",
               "localityName": "L", "stateOrProvinceName": "ST"}


def _subject(certificate: dict) -> str:
    """A client certificate's subject as 'CN=...,O=...' (from ssl.getpeercert())."""
    parts = [f"{SHORT_NAMES.get(key, key)}={value}" for rdn in certificate.get("subject", ()) for key, value in rdn
             if isinstance(key, str) and isinstance(value, str)]
    return audit.summary(",".join(parts) or "?").strip('"')


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

    def _send_raw(self, payload: bytes, content_type: str, head_only: bool) -> None:
        self.send_response(200)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", "0" if head_only else str(len(payload)))
        self.end_headers()
        if not head_only:
            self.wfile.write(payload)

    def _route(self, method: str) -> None:
        url = urlsplit(self.path)
        path = url.path.rstrip("/") or "/"
        if not path.startswith("/"):
            # haproxy's `option httpchk GET` (the 2015 template's haproxy.cfg) sends `OPTIONS GET`:
            # a target that is not a path gets the template's check, as its netcat script answered
            # any request.
            path = "/"
        query = {k: v[-1] for k, v in parse_qs(url.query, keep_blank_values=True).items()}
        head_only = method in ("HEAD", "OPTIONS")
        if (self.headers.get("Content-Length") or "0").strip() != "0" or self.headers.get("Transfer-Encoding"):
            self.close_connection = True    # a body we do not read must not be taken for the next request
        st = self.api.get_status()
        try:
            if path in HEALTH:
                ok, reason = HEALTH[path](st, query)
                body = {"role": st.role, "state": st.state, "leader": st.leader, "timeline": st.timeline}
                if reason:
                    body["reason"] = reason
                return self._send(200 if ok else 503, body, head_only)
            if path == "/liveness":
                age = clock.monotonic() - st.loop_finished if st.loop_finished else None
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
            if path == "/metrics" and self.api.exposition is not None:
                return self._send_raw(*self.api.exposition(), head_only)
            if path == "/config" or path.startswith("/upgrade/seed"):
                if self._principal() is None:
                    return self._unauthorized()
                if path == "/config":
                    return self._send(200, self.api.config_view(), head_only)
                code, error = api_seed.answer(self, self.api.config.postgresql.data_dir, path, head_only)
                return None if code == 200 else self._send(code, error, head_only)
        except BadRequest as exc:
            return self._send(400, {"error": str(exc)}, head_only)
        return self._send(404, {"error": f"no such endpoint: {path}"}, head_only)

    def do_GET(self) -> None:  # noqa: N802 - http.server naming
        self._guarded(lambda: self._route("GET"))

    def do_HEAD(self) -> None:  # noqa: N802
        self._guarded(lambda: self._route("HEAD"))

    def do_OPTIONS(self) -> None:  # noqa: N802
        self._guarded(lambda: self._route("OPTIONS"))

    def _read_body(self) -> Tuple[Optional[bytes], Optional[Tuple[int, str]]]:
        """(body, None), or (None, (code, reason)) when the body cannot be read; then the connection
        is closed after the answer, since what remains of it is not a request."""
        text = (self.headers.get("Content-Length") or "0").strip()
        if self.headers.get("Transfer-Encoding"):
            self.close_connection = True
            return None, (411, "send the body with a Content-Length")
        if not text.isdigit() or len(text) > 12:
            self.close_connection = True
            return None, (400, f"Content-Length: expected a number of bytes, got {text[:40]!r}")
        length = int(text)
        if length > MAX_BODY:
            self.close_connection = True
            return None, (413, f"request body too large (at most {MAX_BODY} bytes)")
        body = self.rfile.read(length) if length > 0 else b""
        if len(body) < length:
            self.close_connection = True
            return None, (400, "request body shorter than its Content-Length")
        return body, None

    def _principal(self) -> Optional[str]:
        certificate = self.connection.getpeercert() if isinstance(self.connection, ssl.SSLSocket) else None
        return self.api.principal(self.headers.get("Authorization"), certificate)

    def _unauthorized(self) -> None:
        self.send_response(401)
        self.send_header("WWW-Authenticate", 'Basic realm="governor"')
        self.send_header("Content-Length", "0")
        self.end_headers()

    def _control(self) -> None:
        """POST/PATCH/DELETE: the control endpoints, all behind the configured credentials."""
        path = urlsplit(self.path).path.rstrip("/")
        raw, problem = self._read_body()
        if problem is not None:
            return self._send(problem[0], {"error": problem[1]})
        handler = self.api.controls.get(f"{self.command} {path}")
        if handler is None:
            known = path in HEALTH or path in ("/status", "/cluster", "/liveness") or any(
                key.endswith(f" {path}") for key in self.api.controls)
            return self._send(405 if known else 404, {"error": f"{self.command} is not supported on {path}"})
        who = self._principal()
        if who is None:
            audit.log.warning("api: %s %s from %s refused: no valid credentials", self.command, path[:100],
                              self.client_address[0])
            return self._unauthorized()
        try:
            body = json.loads(raw or b"{}")
        except (ValueError, RecursionError):
            body = None
        if not isinstance(body, dict):
            return self._send(400, {"error": "expected a JSON object"})
        try:
            code, answer = handler(body)
        except RecursionError:
            code, answer = 400, {"error": "the JSON object is nested too deeply"}
        entry = audit.record(self.api.config.postgresql.name, self.command, path, body, who,
                             self.client_address[0], code, answer)
        self._send(code, answer)
        if entry is not None and self.api.audit_sink is not None:
            self.api.audit_sink(entry)      # after the answer: etcd's time is not the client's

    def _guarded(self, method: Callable[[], None]) -> None:
        """Whatever a request holds, it gets an answer (or a closed connection), never a traceback
        that leaves the client waiting."""
        try:
            method()
        except (OSError, ssl.SSLError):
            self.close_connection = True
        except Exception as exc:  # noqa: BLE001 - a request must not take the API down
            log.error("api: %s %s failed: %s: %s", self.command, urlsplit(self.path).path[:100], type(exc).__name__,
                      str(exc)[:200])
            log.debug("api request failure", exc_info=True)
            self.close_connection = True
            try:
                self._send(500, {"error": "internal error; see governor's log"})
            except OSError:
                pass

    def do_POST(self) -> None:  # noqa: N802
        self._guarded(self._control)

    do_PATCH = do_DELETE = do_POST  # noqa: N815 - http.server naming

    def _put(self) -> None:
        _body, problem = self._read_body()
        if problem is not None:
            return self._send(problem[0], {"error": problem[1]})
        self._send(405, {"error": f"PUT is not supported on {urlsplit(self.path).path}"})

    def do_PUT(self) -> None:  # noqa: N802
        self._guarded(self._put)
