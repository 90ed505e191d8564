"""The etcd v2 adapter against a real etcd: the lock rules and endpoint failover."""
from __future__ import annotations

import itertools
import json
import signal
import threading
import time

import pytest

from governor.config import EtcdConfig
from governor.dcs import DCSError
from governor.dcs.etcd2 import Etcd2
from tests.harness import free_port

_n = itertools.count()


@pytest.fixture
def scope():
    return f"dcs{next(_n)}-{time.monotonic_ns()}"


def adapter(etcd, scope, ttl=10, hosts=None, retry_timeout=3.0) -> Etcd2:
    hosts = hosts or (("127.0.0.1", etcd.port),)
    return Etcd2(EtcdConfig(scope=scope, ttl=ttl, hosts=tuple(hosts)), retry_timeout=retry_timeout)


def test_empty_scope_reads_as_uninitialized(etcd, scope):
    cluster = adapter(etcd, scope).get_cluster()
    assert cluster.initialize is None and cluster.leader is None and cluster.members == ()


def test_bootstrap_race_has_one_winner(etcd, scope):
    a, b = adapter(etcd, scope), adapter(etcd, scope)
    assert a.claim_initialize() is True
    assert b.claim_initialize() is False
    assert a.get_cluster().initialize == "" and not a.get_cluster().initialized
    a.set_initialize("7123")
    assert b.get_cluster().initialize == "7123"
    b.cancel_initialize()  # b never claimed: must not delete a's key
    assert a.get_cluster().initialized


def test_cancelled_bootstrap_frees_the_race(etcd, scope):
    a, b = adapter(etcd, scope), adapter(etcd, scope)
    assert a.claim_initialize()
    a.cancel_initialize()
    assert b.claim_initialize()


def test_leader_lock_rules(etcd, scope):
    a, b = adapter(etcd, scope), adapter(etcd, scope)
    assert a.acquire_leader("node-a")
    assert not b.acquire_leader("node-b"), "only one holder"
    assert not b.renew_leader("node-b"), "renewal is a compare-and-swap on the holder's own name"
    assert not b.release_leader("node-b"), "only the holder may delete the lock"
    assert a.get_cluster().leader.name == "node-a"
    assert a.renew_leader("node-a")
    assert a.release_leader("node-a")
    assert a.get_cluster().leader is None
    assert not a.renew_leader("node-a"), "a released lock cannot be renewed back into existence"
    assert b.acquire_leader("node-b")


def test_lock_expires_after_ttl_and_renewal_keeps_it(etcd, scope):
    a = adapter(etcd, scope, ttl=2)
    assert a.acquire_leader("node-a")
    for _ in range(3):
        time.sleep(1)
        assert a.renew_leader("node-a")
    assert a.get_cluster().leader.name == "node-a"
    time.sleep(3.5)
    assert a.get_cluster().leader is None
    assert not a.renew_leader("node-a")


def test_members_and_leader_position(etcd, scope):
    a = adapter(etcd, scope)
    a.touch_member("node-a", {"role": "primary", "state": "running", "lsn": 1234,
                              "conn_url": "postgres://10.0.0.1:5432/postgres"})
    a.touch_member("node-b", {"role": "replica", "state": "running", "lsn": 1000})
    a.write_leader_lsn(1234)
    cluster = a.get_cluster()
    assert [m.name for m in cluster.members] == ["node-a", "node-b"]
    assert cluster.member("node-a").lsn == 1234
    assert cluster.leader_lsn == 1234
    node = etcd.get(f"/service/{scope}/members/node-a")
    assert node["ttl"] <= 10 and json.loads(node["value"])["role"] == "primary"
    a.delete_member("node-a")
    assert [m.name for m in a.get_cluster().members] == ["node-b"]


def test_watch_wakes_on_leader_change(etcd, scope):
    a, b = adapter(etcd, scope), adapter(etcd, scope)
    a.acquire_leader("node-a")
    index = b.get_cluster().index
    timer = threading.Timer(0.5, lambda: a.release_leader("node-a"))
    timer.start()
    started = time.monotonic()
    assert b.wait_for_leader_change(index, 5) is True
    assert time.monotonic() - started < 2
    index = b.get_cluster().index
    started = time.monotonic()
    assert b.wait_for_leader_change(index, 1) is False
    assert 0.9 < time.monotonic() - started < 2


def test_fails_over_to_the_next_endpoint(etcd, scope):
    dead = ("127.0.0.1", free_port())
    a = adapter(etcd, scope, hosts=(dead, ("127.0.0.1", etcd.port)))
    assert a.acquire_leader("node-a")
    assert a.get_cluster().leader.name == "node-a"


def test_unreachable_etcd_raises_within_retry_timeout(scope):
    a = Etcd2(EtcdConfig(scope=scope, ttl=10, hosts=(("127.0.0.1", free_port()),)), retry_timeout=2)
    started = time.monotonic()
    with pytest.raises(DCSError, match="etcd unreachable"):
        a.get_cluster()
    assert time.monotonic() - started < 3


def test_hung_etcd_raises_within_retry_timeout(etcd, scope):
    """A frozen etcd (SIGSTOP) must not block the loop longer than retry_timeout."""
    a = adapter(etcd, scope, retry_timeout=2)
    a.get_cluster()
    etcd.proc.send_signal(signal.SIGSTOP)
    try:
        started = time.monotonic()
        with pytest.raises(DCSError):
            a.renew_leader("node-a")
        assert time.monotonic() - started < 3
    finally:
        etcd.proc.send_signal(signal.SIGCONT)
