"""The DCS contract against a real etcd, one test body for both adapters (v2 keys API through
python-etcd, v3 JSON gateway; v3 also against etcd 3.5): the lock rules, expiry, watches,
compare-and-swap and endpoint failover."""
from __future__ import annotations

import itertools
import json
import os
import signal
import socket
import subprocess
import threading
import time
import urllib.request

import pytest

from governor.config import EtcdConfig
from governor.dcs import DCSError, make
from governor.sync import SyncState
from tests import harness
from tests.harness import free_port

_n = itertools.count()


@pytest.fixture
def scope():
    return f"dcs{next(_n)}-{time.monotonic_ns()}"


@pytest.fixture(params=[(2, "etcd"), (3, "etcd"), (3, "etcd35")], ids=["v2", "v3", "v3-etcd3.5"])
def adapter(request):
    """Factory for adapters of the API under test, against Debian 12's etcd 3.4 or Debian 13's
    etcd 3.5 (`.server`)."""
    api, server_fixture = request.param
    server = request.getfixturevalue(server_fixture)

    def make_adapter(scope, ttl=10, hosts=None, retry_timeout=3.0):
        hosts = hosts or (("127.0.0.1", server.port),)
        return make(EtcdConfig(scope=scope, ttl=ttl, hosts=tuple(hosts), api=api), retry_timeout=retry_timeout)

    make_adapter.api = api
    make_adapter.server = server
    return make_adapter


def test_empty_scope_reads_as_uninitialized(adapter, scope):
    cluster = adapter(scope).get_cluster()
    assert cluster.initialize is None and cluster.leader is None and cluster.members == ()


def test_bootstrap_race_has_one_winner(adapter, scope):
    a, b = adapter(scope), adapter(scope)
    assert a.claim_initialize() is True
    assert b.claim_initialize() is False
    assert a.get_cluster().initialize == "" and not a.get_cluster().initialized
    a.set_initialize("7123")
    assert b.get_cluster().initialize == "7123"
    b.cancel_initialize()  # b never claimed: must not delete a's key
    assert a.get_cluster().initialized


def test_cancelled_bootstrap_frees_the_race(adapter, scope):
    a, b = adapter(scope), adapter(scope)
    assert a.claim_initialize()
    a.cancel_initialize()
    assert b.claim_initialize()


def test_leader_lock_rules(adapter, scope):
    a, b = adapter(scope), adapter(scope)
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


def test_lock_expires_after_ttl_and_renewal_keeps_it(adapter, scope):
    a = adapter(scope, ttl=2)
    assert a.acquire_leader("node-a")
    for _ in range(3):
        time.sleep(1)
        assert a.renew_leader("node-a")
    assert a.get_cluster().leader.name == "node-a"
    time.sleep(3.5)
    assert a.get_cluster().leader is None
    assert not a.renew_leader("node-a")


def test_members_and_leader_position(adapter, scope):
    a = adapter(scope)
    a.touch_member("node-a", {"role": "primary", "state": "running", "lsn": 1234,
                              "conn_url": "postgres://10.0.0.1:5432/postgres"})
    a.touch_member("node-b", {"role": "replica", "state": "running", "lsn": 1000})
    a.write_leader_lsn(1234)
    cluster = a.get_cluster()
    assert [m.name for m in cluster.members] == ["node-a", "node-b"]
    assert cluster.member("node-a").lsn == 1234
    assert cluster.leader_lsn == 1234
    if adapter.api == 2:
        node = adapter.server.get(f"/service/{scope}/members/node-a", api=2)
        assert node["ttl"] <= 10 and json.loads(node["value"])["role"] == "primary"
    a.delete_member("node-a")
    assert [m.name for m in a.get_cluster().members] == ["node-b"]


def test_watch_wakes_on_leader_change(adapter, scope):
    a, b = adapter(scope), adapter(scope)
    a.acquire_leader("node-a")
    b.get_cluster()
    wake = threading.Event()
    assert b.keep_watching(wake)
    timer = threading.Timer(0.5, lambda: a.release_leader("node-a"))
    timer.start()
    started = time.monotonic()
    assert wake.wait(5) is True
    assert time.monotonic() - started < 2
    wake.clear()
    b.get_cluster()
    started = time.monotonic()
    assert wake.wait(1) is False
    b.close()


def test_watch_wakes_on_what_members_act_on_and_not_on_heartbeats(adapter, scope):
    """A bootstrap's `initialize`, a new member (the leader makes its slot), a member whose role or
    state changes (a clone finished: the leader's switchover check and synchronous standby choice
    read it) and the lock wake a watching member at once; a member refreshing its key or position,
    or the leader renewing, does not."""
    a, b = adapter(scope), adapter(scope)
    a.claim_initialize("")
    a.acquire_leader("node-a")
    a.touch_member("node-a", {"role": "primary", "lsn": 1})
    wake = threading.Event()
    b.get_cluster()
    b.keep_watching(wake)

    def wakes_within(change, seconds: float = 1.5) -> bool:
        b.get_cluster()
        wake.clear()
        timer = threading.Timer(0.3, change)
        timer.start()
        try:
            return wake.wait(seconds)
        finally:
            timer.join()

    assert wakes_within(lambda: a.set_initialize("7001")) is True
    assert wakes_within(lambda: a.touch_member("node-b", {"role": "uninitialized", "state": "creating replica"})) \
        is True
    assert wakes_within(lambda: a.touch_member("node-b", {"role": "replica", "state": "running", "lsn": 5})) is True
    assert wakes_within(lambda: a.touch_member("node-b", {"role": "replica", "state": "running", "lsn": 9})) is False
    assert wakes_within(lambda: a.touch_member("node-b", {"role": "replica", "state": "running", "lsn": 9,
                                                          "tags": {"nofailover": True}})) is True
    assert wakes_within(lambda: a.touch_member("node-a", {"role": "primary", "lsn": 2})) is False
    assert wakes_within(lambda: a.renew_leader("node-a")) is False
    assert wakes_within(lambda: a.write_leader_lsn(2)) is False
    assert wakes_within(lambda: a.set_paused(True)) is True
    b.close()


def test_fails_over_to_the_next_endpoint(adapter, scope):
    dead = ("127.0.0.1", free_port())
    a = adapter(scope, hosts=(dead, ("127.0.0.1", adapter.server.port)))
    assert a.acquire_leader("node-a")
    assert a.get_cluster().leader.name == "node-a"


def test_unreachable_etcd_raises_within_retry_timeout(adapter, scope):
    a = adapter(scope, hosts=(("127.0.0.1", free_port()),), retry_timeout=2)
    started = time.monotonic()
    with pytest.raises(DCSError, match="etcd unreachable"):
        a.get_cluster()
    assert time.monotonic() - started < 3


def test_hung_etcd_raises_within_retry_timeout(adapter, scope):
    """A frozen etcd (SIGSTOP) must not block the loop longer than retry_timeout."""
    a = adapter(scope, retry_timeout=2)
    a.get_cluster()
    adapter.server.proc.send_signal(signal.SIGSTOP)
    try:
        started = time.monotonic()
        with pytest.raises(DCSError):
            a.renew_leader("node-a")
        assert time.monotonic() - started < 3
    finally:
        adapter.server.proc.send_signal(signal.SIGCONT)


def test_a_dead_members_key_expires_after_ttl(adapter, scope):
    a = adapter(scope, ttl=2)
    a.touch_member("node-a", {"role": "replica"})
    for _ in range(3):
        time.sleep(1)
        a.touch_member("node-a", {"role": "replica"})   # alive: refreshed each loop
    assert [m.name for m in a.get_cluster().members] == ["node-a"]
    time.sleep(3.5)                                       # dead: no refresh
    assert a.get_cluster().members == ()


def test_a_watch_started_after_the_change_still_sees_it(adapter, scope):
    """The watch starts from the last read, so a leader change that happened between that read
    and the watch's start is not missed."""
    a, b = adapter(scope), adapter(scope)
    a.acquire_leader("node-a")
    b.get_cluster()
    a.release_leader("node-a")              # happens before the watch exists
    wake = threading.Event()
    started = time.monotonic()
    b.keep_watching(wake)
    assert wake.wait(5) is True
    assert time.monotonic() - started < 1.5
    b.close()


def test_a_change_made_just_before_a_read_is_always_in_it(adapter, scope):
    """Whatever the watch has or has not delivered yet, a read returns every change made before
    it began (the v3 cache is used only when etcd's revision proves it current)."""
    a, b = adapter(scope), adapter(scope)
    b.touch_member("node-b", {"role": "replica"})
    b.get_cluster()
    b.keep_watching(threading.Event())
    for n in range(40):
        a.touch_member("node-a", {"role": "replica", "lsn": n})
        if n % 3 == 0:
            assert a.acquire_leader("node-a")
        elif n % 3 == 1:
            assert a.release_leader("node-a")
        seen = b.get_cluster()
        assert seen.member("node-a").lsn == n
        assert (seen.leader is not None) == (n % 3 == 0)
        if n % 4 == 0:
            time.sleep(0.05)                  # sometimes the watch has caught up, sometimes not
    b.close()


def test_the_lock_outlives_the_deadline_the_fence_is_given(adapter, scope):
    """lock_expires() is what the lock fence acts before: the lock must not expire earlier, even
    when it was taken on a lease last extended a while ago or renewed from a keepalive made at
    the start of the pass."""
    ttl = 3
    a, b = adapter(scope, ttl=ttl), adapter(scope)

    def lock_lives_until_its_deadline(take) -> None:
        sent = time.monotonic()
        assert take("node-a")
        deadline = a.lock_expires(sent, ttl)
        time.sleep(max(0.0, deadline - 0.3 - time.monotonic()))
        assert b.get_cluster().leader is not None, "the lock expired before the fence's deadline"

    a.touch_member("node-a", {"role": "replica"})          # the member's lease, extended now
    time.sleep(1.5)
    lock_lives_until_its_deadline(a.acquire_leader)
    assert a.release_leader("node-a")
    a.keep_watching(threading.Event())
    assert a.acquire_leader("node-a")
    a.get_cluster()                                        # a pass's first read extends the lease
    time.sleep(0.4)
    lock_lives_until_its_deadline(a.renew_leader)


def test_dynamic_config_and_sync_keys_are_compare_and_swap(adapter, scope):
    a, b = adapter(scope), adapter(scope)
    assert a.set_config({"loop_wait": 5}, 0)
    assert not b.set_config({"loop_wait": 6}, 0), "create only if absent"
    first = b.get_cluster()
    assert first.config == {"loop_wait": 5}
    assert b.set_config({"loop_wait": 6}, first.config_index)
    assert not a.set_config({"loop_wait": 7}, first.config_index), "a stale index loses"
    assert a.get_cluster().config == {"loop_wait": 6}
    promise = SyncState("node-a", ("node-b",), 1)
    assert a.set_sync(promise, 0) and not b.set_sync(promise, 0)
    current = b.get_cluster().sync
    assert (current.leader, current.members, current.quorum) == ("node-a", ("node-b",), 1)
    assert not b.delete_sync(current.index + 1000)
    assert b.delete_sync(current.index) and a.get_cluster().sync is None


def test_switchover_request_pause_history_and_removal(adapter, scope):
    a = adapter(scope)
    assert a.request_switchover({"leader": "node-a", "candidate": "node-b", "requested_at": 1.0})
    assert not a.request_switchover({"leader": "node-a", "candidate": "node-c", "requested_at": 2.0})
    assert a.get_cluster().switchover.candidate == "node-b"
    a.clear_switchover()
    assert a.get_cluster().switchover is None
    a.set_paused(True)
    assert a.get_cluster().paused
    a.set_paused(False)
    assert not a.get_cluster().paused
    a.append_history({"timeline": 2})
    a.append_history({"timeline": 3})
    assert [h["timeline"] for h in a.get_cluster().history] == [2, 3]
    assert a.claim_initialize("7000")
    a.remove_cluster()
    assert a.get_cluster().initialize is None and a.get_cluster().history == ()


def v3(etcd, scope, ttl=10, **kw):
    return make(EtcdConfig(scope=scope, ttl=ttl, hosts=(("127.0.0.1", etcd.port),), api=3, **kw), retry_timeout=3)


def test_v3_a_new_process_takes_over_the_lock_of_the_one_before_it(etcd, scope):
    """A package upgrade restarts governor without releasing the lock: the new process, with a
    new lease, must keep the lock, and nobody else may take it meanwhile."""
    before = v3(etcd, scope, ttl=3)
    assert before.acquire_leader("node-a")
    before.close()                          # the old process exits without releasing
    after, other = v3(etcd, scope, ttl=3), v3(etcd, scope, ttl=3)
    assert not other.acquire_leader("node-b")
    assert after.renew_leader("node-a")
    for _ in range(5):                      # past the old lease's ttl, renewed by the new one
        time.sleep(1)
        assert after.renew_leader("node-a")
    assert other.get_cluster().leader.name == "node-a"


@pytest.fixture
def etcd_with_auth(base_dir):
    """A separate etcd with authentication on: user root, password root-Secret-1."""
    server = harness.Etcd(os.path.join(base_dir, f"etcd-auth-{next(_n)}")).start()
    ctl = ["etcdctl", f"--endpoints=http://127.0.0.1:{server.port}"]
    env = {**os.environ, "ETCDCTL_API": "3"}
    subprocess.run(ctl + ["user", "add", "root", "--new-user-password=root-Secret-1"], check=True, env=env,
                   capture_output=True)
    subprocess.run(ctl + ["auth", "enable"], check=True, env=env, capture_output=True)
    yield server
    server.stop()


def test_v3_authenticates_and_a_wrong_password_is_a_clear_error(etcd_with_auth, scope):
    wrong = v3(etcd_with_auth, scope, username="root", password="nope")
    with pytest.raises(DCSError, match="authentication as 'root' failed") as info:
        wrong.get_cluster()
    assert "nope" not in str(info.value), "never a password in a message"
    right = v3(etcd_with_auth, scope, username="root", password="root-Secret-1")
    assert right.acquire_leader("node-a")
    right.touch_member("node-a", {"role": "primary"})
    assert right.get_cluster().leader.name == "node-a"
    anonymous = v3(etcd_with_auth, scope)
    with pytest.raises(DCSError, match="etcd refused"):
        anonymous.get_cluster()


def _put_bytes(adapter, key: bytes, value: bytes) -> None:
    """Write raw bytes the way a careless operator's tool would, in the adapter's own API."""
    import base64
    import urllib.parse
    import urllib.request
    port = adapter.server.port
    if adapter.api == 3:
        body = json.dumps({"key": base64.b64encode(key).decode(), "value": base64.b64encode(value).decode()})
        req = urllib.request.Request(f"http://127.0.0.1:{port}/v3/kv/put", data=body.encode(), method="POST",
                                     headers={"Content-Type": "application/json"})
    else:
        req = urllib.request.Request(f"http://127.0.0.1:{port}/v2/keys{urllib.parse.quote(key)}",
                                     data=b"value=" + urllib.parse.quote(value).encode(), method="PUT",
                                     headers={"Content-Type": "application/x-www-form-urlencoded"})
    urllib.request.urlopen(req, timeout=3).close()


def test_bytes_that_are_not_utf8_read_as_unknown_not_as_an_error(adapter, scope):
    """Non-UTF-8 keys and values under the scope: the read succeeds, a bad member key is left
    out, a bad member value is a member of unknown state, a bad leader value is a lock held by
    an unknown member, and every one of them is named in Cluster.problems."""
    dcs = adapter(scope)
    dcs.claim_initialize("7123")
    prefix = f"/service/{scope}/".encode()
    _put_bytes(adapter, prefix + b"members/\xff\xfe", b"x")
    _put_bytes(adapter, prefix + b"members/ghost", b"\xff\xfe")
    _put_bytes(adapter, prefix + b"leader", b"\xff")
    _put_bytes(adapter, prefix + b"optime/leader", b"\xc3(")
    cluster = dcs.get_cluster()
    assert [m.name for m in cluster.members] == ["ghost"] and cluster.members[0].role == "unknown"
    assert cluster.leader is not None and cluster.leader.name == "?unreadable"
    assert cluster.leader_lsn is None and cluster.leader_lsn_unreadable
    assert len(cluster.problems) >= 3
    assert dcs.acquire_leader("node1") is False, "a lock held by someone unknown is still held"
    assert dcs.renew_leader("node1") is False


def _etcd_started(server, method: str) -> float:
    """How many `method` RPCs etcd has started (its own Prometheus counter)."""
    with urllib.request.urlopen(f"http://127.0.0.1:{server.port}/metrics", timeout=5) as resp:
        text = resp.read().decode()
    return sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines()
               if line.startswith("grpc_server_started_total") and f'grpc_method="{method}"' in line)


@pytest.mark.parametrize("server_fixture", ["etcd", "etcd35"])
def test_v3_an_idle_member_reads_etcd_with_its_keepalive_alone(server_fixture, request, scope):
    """With its watch running and nothing changing, a pass's read and a leader's renewal are the
    lease keepalive: no range read and no transaction reach etcd (counted by etcd itself)."""
    server = request.getfixturevalue(server_fixture)
    a = make(EtcdConfig(scope=scope, ttl=10, hosts=(("127.0.0.1", server.port),), api=3), retry_timeout=3)
    a.touch_member("node-a", {"role": "primary"})
    assert a.acquire_leader("node-a")
    a.get_cluster()
    a.keep_watching(threading.Event())
    before = {m: _etcd_started(server, m) for m in ("Range", "Txn", "LeaseKeepAlive", "Put")}
    for _ in range(10):
        cluster = a.get_cluster()
        assert cluster.leader.name == "node-a" and cluster.member("node-a").role == "primary"
        assert a.renew_leader("node-a")
        a.touch_member("node-a", {"role": "primary"})
    after = {m: _etcd_started(server, m) for m in before}
    assert after["Range"] == before["Range"] and after["Txn"] == before["Txn"] and after["Put"] == before["Put"]
    assert after["LeaseKeepAlive"] - before["LeaseKeepAlive"] <= 10
    a.close()


class FreezableProxy(threading.Thread):
    """A TCP relay to etcd that can go silent while keeping its connections open: a host that
    vanished without a reset (powered off, cable pulled), as a client of it sees it."""

    def __init__(self, target_port: int):
        super().__init__(daemon=True)
        self.server = socket.socket()
        self.server.bind(("127.0.0.1", 0))
        self.server.listen(16)
        self.port = self.server.getsockname()[1]
        self.target_port = target_port
        self.frozen = threading.Event()
        self.sockets = [self.server]

    def run(self) -> None:
        while True:
            try:
                client, _ = self.server.accept()
            except OSError:
                return
            upstream = socket.create_connection(("127.0.0.1", self.target_port))
            self.sockets += [client, upstream]
            for src, dst in ((client, upstream), (upstream, client)):
                threading.Thread(target=self._relay, args=(src, dst), daemon=True).start()

    def stop(self) -> None:
        self.frozen.clear()
        for s in self.sockets:
            try:
                s.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            s.close()

    def _relay(self, src: socket.socket, dst: socket.socket) -> None:
        try:
            while True:
                data = src.recv(65536)
                if not data:
                    return
                while self.frozen.is_set():
                    time.sleep(0.05)      # silent: nothing passes, nothing is closed
                dst.sendall(data)
        except OSError:
            return


@pytest.mark.parametrize("server_fixture", ["etcd", "etcd35"])
def test_v3_the_watch_follows_when_the_endpoint_goes_silent(server_fixture, request, scope):
    """The endpoint the watch streams from stops answering without closing anything: once a
    request has moved to the next endpoint, the watch moves too, so changes still wake."""
    server = request.getfixturevalue(server_fixture)
    proxy = FreezableProxy(server.port)
    proxy.start()
    a = make(EtcdConfig(scope=scope, ttl=10, hosts=(("127.0.0.1", server.port),), api=3), retry_timeout=3)
    b = make(EtcdConfig(scope=scope, ttl=10, hosts=(("127.0.0.1", proxy.port), ("127.0.0.1", server.port)), api=3),
             retry_timeout=3)
    assert a.acquire_leader("node-a")
    b.touch_member("node-b", {"role": "replica"})
    b.get_cluster()
    wake = threading.Event()
    b.keep_watching(wake)
    harness.wait_until(lambda: b.stream.delivered or b.stream._conn is not None, 5, "the watch to connect")
    proxy.frozen.set()
    b.get_cluster()                  # times out on the silent endpoint, answered by the next one
    time.sleep(1.5)                  # RECONNECT_PAUSE: the watch reconnects
    wake.clear()
    try:
        assert a.release_leader("node-a")
        assert wake.wait(3), "the watch stayed on the silent endpoint"
    finally:
        b.close()
        proxy.stop()


def test_without_etcd_api_v3_is_used_but_never_over_a_scope_kept_in_v2(etcd, etcd35, scope):
    """etcd.api not set means the v3 API (etcd 3.4/3.5 serve v2 only when enabled, 3.6 not at
    all). A cluster that ran with governor's former default keeps its scope in the v2 keyspace:
    reading an empty v3 keyspace instead would let a member with data claim the cluster there while
    the v2 leader runs (two primaries). Such a scope is refused with what to set, until etcd.api
    says which keyspace to use."""
    auto = make(EtcdConfig(scope=scope, ttl=10, hosts=(("127.0.0.1", etcd.port),)), retry_timeout=3)
    assert auto.describe().startswith("etcd v3")
    assert auto.get_cluster().initialize is None      # a new cluster: nothing in v2 either
    assert auto.claim_initialize("7001")

    kept = f"{scope}-v2"
    v2 = make(EtcdConfig(scope=kept, ttl=10, hosts=(("127.0.0.1", etcd.port),), api=2), retry_timeout=3)
    assert v2.claim_initialize("7002") and v2.acquire_leader("node-a")
    auto_kept = make(EtcdConfig(scope=kept, ttl=10, hosts=(("127.0.0.1", etcd.port),)), retry_timeout=3)
    for _ in range(2):
        with pytest.raises(DCSError, match=r"v2 keyspace.*etcd\.api: 2.*migrate --to-api 3"):
            auto_kept.get_cluster()
    with pytest.raises(DCSError, match="v2 keyspace"):
        auto_kept.claim_initialize("7003")
    explicit = make(EtcdConfig(scope=kept, ttl=10, hosts=(("127.0.0.1", etcd.port),), api=3), retry_timeout=3)
    assert explicit.get_cluster().initialize is None    # asked for v3 by name: the operator decided

    # etcd 3.5 without --enable-v2 has no v2 keyspace to hold anything.
    on35 = make(EtcdConfig(scope=scope, ttl=10, hosts=(("127.0.0.1", etcd35.port),)), retry_timeout=3)
    assert on35.get_cluster().initialize is None


def test_the_v2_api_switched_off_is_named(etcd35, scope):
    """etcd.api: 2 against an etcd that does not serve v2: say so, not '404 page not found'."""
    a = make(EtcdConfig(scope=scope, ttl=10, hosts=(("127.0.0.1", etcd35.port),), api=2), retry_timeout=3)
    with pytest.raises(DCSError, match=r"does not serve the v2 API.*etcd\.api: 3"):
        a.get_cluster()
