"""What a member believes of a peer's answer during the leader race: only a well-formed /status
from the member it asked. Anything else — another member answering (a published 127.0.0.1
address asks oneself on another host), junk, a slow or endless body — is no answer."""
from __future__ import annotations

import http.server
import json
import threading
import time
from dataclasses import replace

import pytest

from governor import config as config_mod
from governor.api import ApiServer
from governor.observe import peer_status
from governor.status import NodeStatus


class _Peer(http.server.BaseHTTPRequestHandler):
    body = b"{}"
    delay = 0.0

    def do_GET(self):  # noqa: N802 - http.server's naming
        time.sleep(self.delay)
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.end_headers()
        self.wfile.write(self.body)

    def log_message(self, *args):
        pass


@pytest.fixture
def peer():
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Peer)
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, daemon=True).start()

    def answer(body, delay: float = 0.0) -> str:
        _Peer.body = body if isinstance(body, bytes) else json.dumps(body).encode()
        _Peer.delay = delay
        return f"http://127.0.0.1:{server.server_address[1]}"
    yield answer
    server.shutdown()
    server.server_close()


GOOD = {"name": "node2", "role": "replica", "running": True, "lsn": 5000, "timeline": 2, "tags": {}}


def test_a_well_formed_answer_of_the_member_asked(peer):
    member = peer_status(peer(GOOD), "node2")
    assert member is not None and member.name == "node2" and member.lsn == 5000 and member.timeline == 2
    assert member.state == "running" and member.role == "replica"


def test_another_member_answering_is_no_answer(peer):
    assert peer_status(peer(dict(GOOD, name="node1")), "node2") is None


@pytest.mark.parametrize("body", [
    b"[1, 2]", b"not json", b"null", b'"text"', b"{" * 100000,
    json.dumps(dict(GOOD, name=None)).encode(),
])
def test_junk_is_no_answer(peer, body):
    assert peer_status(peer(body), "node2") is None


@pytest.mark.parametrize("field, value", [
    ("lsn", "abc"), ("lsn", -1), ("lsn", 2**70), ("lsn", True), ("lsn", 1.5), ("lsn", [1]),
    ("timeline", "x"), ("timeline", {}),
])
def test_a_position_that_does_not_parse_is_unknown(peer, field, value):
    member = peer_status(peer(dict(GOOD, **{field: value})), "node2")
    assert member is not None and getattr(member, field) is None


def test_odd_tags_and_role_are_harmless(peer):
    member = peer_status(peer(dict(GOOD, tags=["nofailover"], role={"x": 1})), "node2")
    assert member is not None and member.tags == {} and member.role == "unknown"


def test_a_body_beyond_a_megabyte_is_no_answer(peer):
    body = json.dumps(dict(GOOD, pad="x" * (2 * 1024 * 1024))).encode()
    assert peer_status(peer(body), "node2") is None


def test_a_slow_peer_is_given_up_within_the_timeout(peer):
    started = time.monotonic()
    assert peer_status(peer(GOOD, delay=3), "node2", timeout=0.5) is None
    assert time.monotonic() - started < 1.5


# --------------------------------------------------------------------------- TLS with a private CA


def _tls_api(tmp_path, crt: str, key: str) -> ApiServer:
    cfg = config_mod.validate({"etcd": {"scope": "s"}, "postgresql": {
        "name": "node2", "data_dir": str(tmp_path / "data"), "bin_dir": "/usr/lib/postgresql/15/bin",
        "replication": {"password": "p"}}}, {}, "test")
    cfg = replace(cfg, restapi=replace(cfg.restapi, port=0, certfile=crt, keyfile=key))
    status = NodeStatus(name="node2", scope="s", role="replica", state="running", running=True,
                        loop_finished=time.monotonic())
    api = ApiServer(cfg, lambda: status)
    api.start()
    return api


@pytest.mark.parametrize("case,san,ca,trust,answers", [
    ("signed by the cluster's CA for the address asked", "IP:127.0.0.1", "ca", True, True),
    ("the CA not given (restapi.cafile unset): not in the system's trust store", "IP:127.0.0.1", "ca", False, False),
    ("issued for another host", "DNS:db3.example,IP:10.0.0.13", "ca", True, False),
    ("signed by another CA", "IP:127.0.0.1", "rogue", True, False),
])
def test_a_peer_over_tls_is_believed_only_with_a_certificate_for_the_address_asked(
        pki, tmp_path, case, san, ca, trust, answers):
    ca_file, cert = pki
    crt, key = cert(f"{ca}-{san.split(',')[0].replace(':', '-')}", san, ca)
    api = _tls_api(tmp_path, crt, key)
    try:
        url = f"https://127.0.0.1:{api.httpd.server_address[1]}"
        member = peer_status(url, "node2", cafile=ca_file if trust else None)
        assert (member is not None) == answers, case
        if answers:
            assert member.role == "replica" and member.state == "running"
    finally:
        api.stop()
