"""etcd over TLS is always verified, on both adapters, for requests and the watch stream (system
CAs when no etcd.cacert is given), and client certificates authenticate (issue 32). Real etcd."""
from __future__ import annotations

import itertools
import os
import ssl
import time

import pytest

from governor.config import EtcdConfig
from governor.dcs import DCSError, make
from tests import harness

pytestmark = pytest.mark.integration
_n = itertools.count()


def tls_etcd(base_dir: str, pki, signed_by: str = "ca", client_cert_auth: bool = False) -> harness.Etcd:
    ca, cert = pki
    crt, key = cert(f"etcd-{signed_by}", "IP:127.0.0.1,DNS:localhost", ca=signed_by)
    server = harness.Etcd(os.path.join(base_dir, f"etcd-tls-{next(_n)}"))
    server.tls = (crt, key, ca, client_cert_auth)
    return server.start()


@pytest.fixture
def etcd_tls(base_dir, pki):
    server = tls_etcd(base_dir, pki)
    yield server
    server.stop()


def adapter(server: harness.Etcd, api: int, **tls):
    scope = f"tls{next(_n)}-{time.monotonic_ns()}"
    return make(EtcdConfig(scope=scope, ttl=10, hosts=(("127.0.0.1", server.port),), api=api, protocol="https",
                           **tls), retry_timeout=2)


@pytest.mark.parametrize("api", [3, 2])
def test_a_certificate_from_an_unknown_ca_is_refused_without_cacert_and_accepted_with_it(etcd_tls, pki, api):
    ca, _ = pki
    with pytest.raises(DCSError, match="(?i)certificate"):
        adapter(etcd_tls, api).get_cluster()
    trusting = adapter(etcd_tls, api, cacert=ca)
    assert trusting.acquire_leader("node-a")
    assert trusting.get_cluster().leader.name == "node-a"


def test_the_v3_watch_stream_verifies_etcd_too(etcd_tls, pki):
    ca, _ = pki
    blind = adapter(etcd_tls, 3)
    with pytest.raises(ssl.SSLCertVerificationError):
        conn = blind._stream_connection("127.0.0.1", etcd_tls.port, 2)
        conn.connect()
    conn = adapter(etcd_tls, 3, cacert=ca)._stream_connection("127.0.0.1", etcd_tls.port, 2)
    conn.connect()
    conn.close()


@pytest.mark.parametrize("api", [3, 2])
def test_etcd_signed_by_another_ca_than_cacert_is_refused(base_dir, pki, api):
    ca, _ = pki
    rogue = tls_etcd(base_dir, pki, signed_by="rogue")
    try:
        with pytest.raises(DCSError):
            adapter(rogue, api, cacert=ca).get_cluster()
    finally:
        rogue.stop()


@pytest.mark.parametrize("api", [3, 2])
def test_a_client_certificate_authenticates_to_etcd_with_client_cert_auth(base_dir, pki, api):
    ca, cert = pki
    server = tls_etcd(base_dir, pki, client_cert_auth=True)
    try:
        with pytest.raises(DCSError):
            adapter(server, api, cacert=ca).get_cluster()
        crt, key = cert(f"member-{api}", "DNS:member")
        member = adapter(server, api, cacert=ca, cert=crt, key=key)
        assert member.acquire_leader("node-a")
        assert member.get_cluster().leader.name == "node-a"
    finally:
        server.stop()
