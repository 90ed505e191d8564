"""Who may control a member through its API, and the audit trail of what they asked (issue 32):
Basic credentials, a client certificate from restapi.cafile, and health checks that stay open."""
from __future__ import annotations

import http.client
import logging
import ssl

import pytest

from governor.api import ApiServer
from tests.test_api_hostile import auth, make_config, port_of, primary_status

CONTROLS = {"POST /switchover": lambda body: (202, {"message": f"switchover to {body.get('candidate')} scheduled"}),
            "POST /restart": lambda body: (200, {"message": "PostgreSQL restarted"})}


def request(api: ApiServer, method: str, path: str, body: bytes = b"", headers=None, context=None) -> tuple:
    if context is None:
        conn = http.client.HTTPConnection("127.0.0.1", port_of(api), timeout=5)
    else:
        conn = http.client.HTTPSConnection("127.0.0.1", port_of(api), timeout=5, context=context)
    try:
        conn.request(method, path, body=body, headers=headers or {})
        resp = conn.getresponse()
        return resp.status, resp.read()
    finally:
        conn.close()


@pytest.fixture
def basic(tmp_path):
    api = ApiServer(make_config(tmp_path, username="admin", password="s3cret"), primary_status, controls=CONTROLS)
    api.start()
    yield api
    api.stop()


def test_control_without_or_with_wrong_credentials_is_refused_and_logged(basic, caplog):
    caplog.set_level(logging.INFO)
    assert request(basic, "POST", "/switchover", b'{"candidate": "n2"}')[0] == 401
    assert request(basic, "POST", "/restart", b"{}", {"Authorization": auth("admin", "guess")})[0] == 401
    assert request(basic, "GET", "/config")[0] == 401
    refused = [r.getMessage() for r in caplog.records if r.name == "governor.audit"]
    assert refused == ["api: POST /switchover from 127.0.0.1 refused: no valid credentials",
                       "api: POST /restart from 127.0.0.1 refused: no valid credentials"]
    assert all(r.levelno == logging.WARNING for r in caplog.records if r.name == "governor.audit")
    for path in ("/primary", "/health", "/liveness", "/readiness", "/status", "/"):
        assert request(basic, "GET", path)[0] == 200, path     # haproxy and monitoring need none


def test_each_control_request_leaves_one_audit_line_with_who_what_where_and_the_answer(basic, caplog):
    caplog.set_level(logging.INFO)
    code, _ = request(basic, "POST", "/switchover", b'{"candidate": "n2\\nFAKE: line"}',
                      {"Authorization": auth("admin", "s3cret")})
    assert code == 202
    lines = [r.getMessage() for r in caplog.records if r.name == "governor.audit"]
    assert lines == ['audit: POST /switchover {"candidate":"n2\\nFAKE: line"} by user admin from 127.0.0.1: 202 '
                     '"switchover to n2\\nFAKE: line scheduled"'], lines
    assert "\n" not in lines[0], "a request must not forge a line of its own"
    assert "s3cret" not in caplog.text


@pytest.fixture
def with_client_certificates(tmp_path, pki):
    ca, cert = pki
    server_crt, server_key = cert("api", "IP:127.0.0.1")
    api = ApiServer(make_config(tmp_path, certfile=server_crt, keyfile=server_key, cafile=ca, verify_client="required"),
                    primary_status, controls=CONTROLS)
    api.start()
    yield api, ca, cert
    api.stop()


def client(ca: str, certificate=None) -> ssl.SSLContext:
    context = ssl.create_default_context(cafile=ca)
    if certificate:
        context.load_cert_chain(*certificate)
    return context


def test_a_client_certificate_from_the_ca_controls_and_health_needs_none(with_client_certificates, caplog):
    api, ca, cert = with_client_certificates
    caplog.set_level(logging.INFO)
    operator = cert("operator", "DNS:operator")
    assert request(api, "POST", "/restart", b"{}", context=client(ca))[0] == 401
    assert request(api, "GET", "/primary", context=client(ca))[0] == 200
    assert request(api, "POST", "/restart", b"{}", context=client(ca, operator))[0] == 200
    assert "audit: POST /restart {} by certificate CN=operator from 127.0.0.1: 200" in caplog.text
    rogue = cert("intruder", "DNS:intruder", ca="rogue")
    with pytest.raises((ssl.SSLError, ConnectionError, OSError)):
        request(api, "POST", "/restart", b"{}", context=client(ca, rogue))
    assert "by certificate CN=intruder" not in caplog.text
