"""etcd over TLS is always verified, on both adapters, for requests and the watch stream (system
CAs when no etcd.cacert is given), and client certificates authenticate (issue 32). Real etcd."""
from __future__ import annotations

import itertools
import os
import ssl
import subprocess
import time
import urllib.request

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


def test_the_cluster_id_rule():
    from governor.dcs.onecluster import OneCluster, Split
    one = OneCluster(interval=3600)
    one.record(("a", 1), {"header": {"cluster_id": "11"}})
    one.record(("b", 1), {"header": {"cluster_id": "11"}})
    one.record(("c", 1), {"header": {"cluster_id": 12.5}})      # not an id: ignored
    with pytest.raises(Split, match="a:1 is cluster 11; b:1 is cluster 11; c:1 is cluster 13"):
        one.record(("c", 1), {"header": {"cluster_id": "13"}})
    asked = []
    with pytest.raises(Split):          # while split, every sweep asks again ...
        one.sweep((("a", 1), ("c", 1)), lambda e: asked.append(e) or {"header": {"cluster_id": "13"}})
    assert asked == [("a", 1), ("c", 1)]
    one.sweep((("b", 1),), lambda e: {"header": {"cluster_id": "13"}})   # ... and clears once they agree
    assert one.split is None


@pytest.fixture
def two_etcds(base_dir):
    """Two independent one-member etcds, as `apt install etcd-server` on two hosts leaves them."""
    servers = [harness.Etcd(os.path.join(base_dir, f"etcd-split-{next(_n)}")).start() for _ in range(2)]
    yield servers
    for server in servers:
        server.stop()


@pytest.mark.parametrize("api", [3, 2])
def test_endpoints_of_two_etcd_clusters_are_refused_for_every_operation(two_etcds, api):
    a, b = two_etcds
    scope = f"split{next(_n)}-{time.monotonic_ns()}"
    dcs = make(EtcdConfig(scope=scope, ttl=10, hosts=(("127.0.0.1", a.port), ("127.0.0.1", b.port)), api=api),
               retry_timeout=2)
    with pytest.raises(DCSError, match="etcd endpoints of different etcd clusters: 127.0.0.1:"):
        dcs.get_cluster()
    with pytest.raises(DCSError, match="different etcd clusters"):
        dcs.acquire_leader("node-a")
    alone = make(EtcdConfig(scope=scope, ttl=10, hosts=(("127.0.0.1", a.port),), api=api), retry_timeout=2)
    assert alone.get_cluster().leader is None


def test_members_given_two_etcd_clusters_bootstrap_nothing_and_say_why(two_etcds, make_cluster):
    """Two members listing the two etcds in different orders: each would take its own lock (two
    primaries); instead neither acts, and both say why."""
    a, b = two_etcds
    cluster = make_cluster("split")
    hosts = [f"127.0.0.1:{a.port}", f"127.0.0.1:{b.port}"]
    for name, order in (("node1", hosts), ("node2", hosts[::-1])):
        cluster.add(name, extra={"etcd": {"host": order}})
    harness.wait_until(lambda: all("different etcd clusters" in n.log_text() for n in cluster.nodes.values()), 30,
                       "both members to notice")
    time.sleep(5)
    for node in cluster.nodes.values():
        assert not os.path.exists(os.path.join(node.data_dir, "PG_VERSION")), f"{node.name} bootstrapped"
        status = node.api("/status")[1]
        assert status["dcs_reachable"] is False and "different etcd clusters" in status["dcs_error"], status
        with urllib.request.urlopen(f"http://127.0.0.1:{node.metrics_port}/metrics", timeout=5) as resp:
            assert "governor_etcd_endpoints_split 1.0" in resp.read().decode()
    listed = harness.governorctl(cluster.nodes["node1"], "list")
    assert listed.returncode != 0 and "different etcd clusters" in listed.stderr, listed.stdout + listed.stderr


@pytest.mark.parametrize("server", ["etcd", "etcd35"])
def test_a_leader_keeps_its_lock_through_etcd_auth_token_expiry(base_dir, make_cluster, server, request):
    """etcd with authentication and a 2 s token TTL: the leader's tokens expire again and again; it
    logs in again each time and keeps its lock and its primary, with no demotion."""
    binary = request.getfixturevalue("etcd35").binary if server == "etcd35" else "etcd"
    etcd = harness.Etcd(os.path.join(base_dir, f"etcd-token-{next(_n)}"), binary=binary)
    etcd.extra_args = ["--auth-token-ttl", "2"]
    etcd.start()
    try:
        ctl = ["etcdctl", f"--endpoints=http://127.0.0.1:{etcd.port}"]
        env = {**os.environ, "ETCDCTL_API": "3"}
        for cmd in (["user", "add", "root", "--new-user-password=root-Secret-1"], ["auth", "enable"]):
            subprocess.run(ctl + cmd, check=True, env=env, capture_output=True)
        cluster = make_cluster("token")
        cluster.etcd = etcd
        auth = {"etcd": {"host": etcd.endpoint, "username": "root", "password": "root-Secret-1", "api": 3}}
        leader = cluster.add("node1", extra=auth)
        harness.wait_until(lambda: leader.role() == "primary" and leader.api("/status")[1]["holds_lock"], 90,
                           "the leader")
        started = time.monotonic()
        while time.monotonic() - started < 10:             # five token lifetimes
            assert leader.role() == "primary"
            assert leader.api("/status")[1]["holds_lock"] is True
            time.sleep(0.5)
        text = leader.log_text()
        assert "demot" not in text and "lock_fence" not in text, text[-2000:]
    finally:
        etcd.stop()
