"""The REST API survives its clients: idle TLS connections, floods, malformed requests. Each
malformed request gets a 4xx answer and no traceback; health checks keep answering throughout."""
from __future__ import annotations

import base64
import concurrent.futures
import http.client
import json
import logging
import socket
import ssl
import subprocess
import time

import pytest

from governor import config as config_mod
from governor.api import MAX_BODY, ApiServer
from governor.status import NodeStatus

PG_BIN = "/usr/lib/postgresql/15/bin"


def make_config(tmp_path, **restapi) -> config_mod.Config:
    cfg = config_mod.validate({"etcd": {"scope": "s"}, "postgresql": {
        "name": "n1", "data_dir": str(tmp_path / "data"), "bin_dir": PG_BIN, "replication": {"password": "p"}}},
        {}, "test")
    from dataclasses import replace
    return replace(cfg, restapi=replace(cfg.restapi, port=0, **restapi))


def primary_status() -> NodeStatus:
    return NodeStatus(name="n1", scope="s", role="primary", state="running", running=True, holds_lock=True,
                      lock_deadline=time.monotonic() + 3600, loop_finished=time.monotonic())


@pytest.fixture
def server(tmp_path, caplog):
    api = ApiServer(make_config(tmp_path, username="admin", password="s3cret"), primary_status,
                    controls={"POST /reload": lambda body: (202, {"message": "ok"})})
    api.start()
    yield api
    api.stop()
    assert "Traceback" not in caplog.text


def port_of(api: ApiServer) -> int:
    return api.httpd.server_address[1]


def raw(api: ApiServer, request: bytes, timeout: float = 5) -> bytes:
    with socket.create_connection(("127.0.0.1", port_of(api)), timeout=timeout) as sock:
        sock.sendall(request)
        chunks = []
        while True:
            try:
                chunk = sock.recv(65536)
            except socket.timeout:
                break
            if not chunk:
                break
            chunks.append(chunk)
        return b"".join(chunks)


def status_line(answer: bytes) -> int:
    return int(answer.split(b" ", 2)[1])


def auth(user: str, password: str) -> str:
    return "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()


def test_malformed_requests_get_4xx_and_the_connection_is_closed(server, caplog):
    caplog.set_level(logging.DEBUG)
    good = auth("admin", "s3cret")
    cases = [
        (b"POST /reload HTTP/1.1\r\nHost: x\r\nContent-Length: abc\r\nAuthorization: " + good.encode()
         + b"\r\n\r\n{}", 400),
        (b"POST /reload HTTP/1.1\r\nHost: x\r\nContent-Length: -5\r\n\r\n", 400),
        (b"POST /reload HTTP/1.1\r\nHost: x\r\nContent-Length: 99999999999999999999\r\n\r\n", 400),
        (b"POST /reload HTTP/1.1\r\nHost: x\r\nAuthorization: Basic \xc3\xa9\xc3\xa9\r\nContent-Length: 2\r\n\r\n{}",
         401),
        (("POST /reload HTTP/1.1\r\nHost: x\r\nContent-Length: 2\r\nAuthorization: "
          + auth("\u00e9t\u00e9", "\u00fc") + "\r\n\r\n{}").encode(), 401),
        (b"POST /reload HTTP/1.1\r\nHost: x\r\nContent-Length: 7\r\nAuthorization: " + good.encode()
         + b"\r\n\r\n" + b"[" * 7, 400),
    ]
    for request, expected in cases:
        answer = raw(server, request)
        assert status_line(answer) == expected, (request, answer)
    # A nested body as deep as the size limit allows: 400, not a RecursionError.
    deep = b"{\"a\":" * 10000 + b"1" + b"}" * 10000
    answer = raw(server, b"POST /reload HTTP/1.1\r\nHost: x\r\nAuthorization: " + good.encode()
                 + f"\r\nContent-Length: {len(deep)}\r\n\r\n".encode() + deep)
    assert status_line(answer) == 400


def test_an_oversized_body_is_not_read_as_the_next_request(server):
    smuggled = b"GET /primary HTTP/1.1\r\nHost: x\r\n\r\n"
    body = smuggled * ((MAX_BODY // len(smuggled)) + 2)
    answer = raw(server, b"POST /reload HTTP/1.1\r\nHost: x\r\nContent-Length: " + str(len(body)).encode()
                 + b"\r\n\r\n" + body)
    assert status_line(answer) == 413
    assert answer.count(b"HTTP/1.1 ") == 1, "the body was parsed as further requests"
    answer = raw(server, b"GET /health HTTP/1.1\r\nHost: x\r\nContent-Length: 36\r\n\r\n" + smuggled)
    assert answer.count(b"HTTP/1.1 ") == 1


def listen_backlog(port: int) -> int:
    """The accept queue length the kernel gives our listener (`ss`: Send-Q of a LISTEN socket)."""
    out = subprocess.run(["ss", "-ltnH", f"sport = :{port}"], capture_output=True, text=True, check=True).stdout
    return int(out.split()[2])


def test_a_flood_of_connections_does_not_stop_health_checks(server):
    port = port_of(server)
    # A full accept queue drops new connections, which the client's kernel retries only after a
    # second: haproxy (a check each second, `fall 2`) would mark a healthy primary down.
    assert listen_backlog(port) >= 128

    def check(_i: int) -> int:
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
        try:
            conn.request("GET", "/primary")
            return conn.getresponse().status
        finally:
            conn.close()

    idle = [socket.create_connection(("127.0.0.1", port)) for _ in range(20)]   # never send a byte
    try:
        with concurrent.futures.ThreadPoolExecutor(max_workers=200) as pool:
            codes = list(pool.map(check, range(200)))
    finally:
        for sock in idle:
            sock.close()
    assert codes.count(200) == 200, f"{len(codes) - codes.count(200)} of 200 health checks failed"


@pytest.fixture
def tls_server(tmp_path):
    cert, key = str(tmp_path / "api.crt"), str(tmp_path / "api.key")
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", key, "-out", cert,
                    "-days", "2", "-subj", "/CN=127.0.0.1", "-addext", "subjectAltName=IP:127.0.0.1"],
                   check=True, capture_output=True)
    api = ApiServer(make_config(tmp_path, certfile=cert, keyfile=key), primary_status)
    api.start()
    yield api, cert
    api.stop()


def test_idle_tls_connections_do_not_block_other_clients(tls_server):
    api, cert = tls_server
    port = port_of(api)
    idle = [socket.create_connection(("127.0.0.1", port)) for _ in range(5)]  # no TLS handshake ever
    try:
        context = ssl.create_default_context(cafile=cert)
        started = time.monotonic()
        conn = http.client.HTTPSConnection("127.0.0.1", port, timeout=5, context=context)
        conn.request("GET", "/primary")
        assert conn.getresponse().status == 200
        assert time.monotonic() - started < 2
        conn.close()
    finally:
        for sock in idle:
            sock.close()


def test_health_answers_are_json(server):
    conn = http.client.HTTPConnection("127.0.0.1", port_of(server), timeout=5)
    conn.request("GET", "/primary")
    resp = conn.getresponse()
    assert resp.status == 200 and json.loads(resp.read())["role"] == "primary"


def test_the_request_haproxy_sends_for_option_httpchk_get_is_the_template_check(tmp_path):
    """The 2015 template's haproxy.cfg says `option httpchk GET`: haproxy reads the lone word as the
    URI and sends `OPTIONS GET HTTP/1.0` (the template's netcat check answered any request). That
    request is the primary check: 200 on the leader, 503 elsewhere; so is any other target that is
    not a path. Changing requests with such a target still find nothing."""
    replica = NodeStatus(name="n2", scope="s", role="replica", state="running", running=True,
                         loop_finished=time.monotonic())
    for status, code in ((primary_status, 200), (lambda: replica, 503)):
        api = ApiServer(make_config(tmp_path), status, controls={"POST /reload": lambda body: (202, {})})
        api.start()
        try:
            for request in (b"OPTIONS GET HTTP/1.0\r\n\r\n", b"GET GET HTTP/1.0\r\n\r\n",
                            b"HEAD * HTTP/1.0\r\n\r\n"):
                assert status_line(raw(api, request)) == code, request
            assert status_line(raw(api, b"POST reload HTTP/1.0\r\nContent-Length: 0\r\n\r\n")) == 404
        finally:
            api.stop()
