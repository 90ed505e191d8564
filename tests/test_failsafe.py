"""Failsafe mode against real etcd and PostgreSQL: a primary that every member vouches for keeps
taking writes through an etcd outage; one that some member does not vouch for demotes before its
lock could expire. Throughout, never two writable servers (PrimaryWatch asks each one directly)."""
from __future__ import annotations

import os
import signal
import socket
import subprocess
import threading
import time
from typing import List, Optional, Tuple

import psycopg2
import pytest

from tests import harness
from tests.harness import wait_until

pytestmark = pytest.mark.integration
TTL = 10
FAILSAFE = {"failsafe_mode": True, "retry_timeout": 4}   # failsafe needs retry_timeout >= 3.5 at ttl 10


class DirectWriter(threading.Thread):
    """A client on the primary's own address (no haproxy): an INSERT every 50 ms on one
    connection, reconnecting on failure; remembers when each write was acknowledged."""

    def __init__(self, node: harness.Node):
        super().__init__(daemon=True)
        self.node = node
        self.acked: List[Tuple[int, float]] = []
        self.halt = threading.Event()

    def run(self) -> None:
        conn: Optional[psycopg2.extensions.connection] = None
        n = 0
        while not self.halt.is_set():
            try:
                if conn is None:
                    conn = self.node.connect(timeout=1)
                n += 1
                with conn.cursor() as cur:
                    cur.execute("INSERT INTO failsafe_writes VALUES (%s)", (n,))
                self.acked.append((n, time.monotonic()))
            except psycopg2.Error:
                if conn is not None:
                    conn.close()
                conn = None
            self.halt.wait(0.05)
        if conn is not None:
            conn.close()

    def longest_gap(self, since: float, until: float) -> float:
        times = [since] + [t for _n, t in self.acked if since <= t <= until] + [until]
        return max(b - a for a, b in zip(times, times[1:]))

    def stop(self) -> None:
        self.halt.set()
        self.join(10)


def cluster_on(make_cluster, base_dir, name: str):
    own = harness.Etcd(os.path.join(base_dir, name)).start()
    cluster = make_cluster(name)
    cluster.etcd = own
    primary, replicas = start_three(cluster, lambda node: {})
    return own, cluster, primary, replicas


def start_three(cluster, etcd_for) -> tuple:
    """Three members with failsafe_mode (etcd_for(name): extra etcd settings), a primary, two
    streaming replicas on its failsafe list, and the table the writers use."""
    for node in ("node1", "node2", "node3"):
        cluster.add(node, extra=dict(FAILSAFE, **etcd_for(node)))
    primary = cluster.wait_for_primary(90)
    replicas = [n for n in cluster.nodes.values() if n is not primary]
    cluster.wait_for_streaming([n.name for n in replicas], 90)
    # the leader writes its failsafe list once it sees every member
    wait_until(lambda: listed(cluster.etcd, cluster) == {n.name for n in replicas}, 20,
               "the failsafe list to name the replicas")
    primary.sql("CREATE TABLE failsafe_writes (id int PRIMARY KEY)")
    return primary, replicas


def listed(etcd: harness.Etcd, cluster) -> set:
    import json
    node = etcd.get(f"/service/{cluster.scope}/failsafe", api=3)
    return set(json.loads(node["value"])["members"]) if node else set()


def test_an_etcd_outage_of_60_s_costs_no_write_when_every_member_vouches(make_cluster, base_dir):
    own, cluster, primary, replicas = cluster_on(make_cluster, base_dir, "fsall")
    watch = harness.PrimaryWatch(cluster)
    watch.start()
    writer = DirectWriter(primary)
    writer.start()
    try:
        time.sleep(1)
        own.stop(signal.SIGKILL)
        stopped = time.monotonic()
        wait_until(lambda: (primary.api("/status")[1] or {}).get("failsafe"), 20, "the primary to report failsafe")
        wait_until(lambda: all(((r.api("/status")[1] or {}).get("failsafe") or "").startswith(
            f"vouched for {primary.name}") for r in replicas), 20, "the replicas to report their promise")
        time.sleep(max(0.0, 60 - (time.monotonic() - stopped)))
        assert primary.role() == "primary" and primary.api("/primary")[0] == 200
        outage_end = time.monotonic()
        own.restart()
        wait_until(lambda: cluster.leader_name() == primary.name and not (primary.api("/status")[1] or {}).get(
            "failsafe"), 30, "the leader to take its lock back and leave failsafe")
        cluster.wait_for_streaming([r.name for r in replicas], 30)
        time.sleep(1)
    finally:
        writer.stop()
        watch.stop()
        own.stop()
    gap = writer.longest_gap(stopped, outage_end)
    assert gap < 1.0, f"writes on the primary stopped for {gap:.1f}s during the etcd outage"
    assert watch.two_primaries() == []
    stored = {row[0] for row in primary.sql("SELECT id FROM failsafe_writes")}
    assert not [n for n, _t in writer.acked if n not in stored]
    print(f"failsafe, etcd down 60 s: longest write gap {gap:.2f} s, {len(writer.acked)} writes, none lost, "
          "never two writable")


def test_with_a_member_not_answering_the_leader_demotes_before_its_lock_expires(make_cluster, base_dir):
    own, cluster, primary, replicas = cluster_on(make_cluster, base_dir, "fsone")
    watch = harness.PrimaryWatch(cluster)
    watch.start()
    try:
        replicas[0].kill()                  # its governor: it cannot vouch (PostgreSQL keeps running)
        renewed = time.monotonic()          # the lock was renewed at most loop_wait (1 s) before this
        own.stop(signal.SIGKILL)
        wait_until(lambda: primary.role() == "replica", TTL, "the leader to demote", interval=0.1)
        took = time.monotonic() - renewed
        assert took < TTL, f"the leader stayed writable {took:.1f}s, past its lock"
        assert "not every member of the failsafe list vouched" in primary.log_text()
        time.sleep(TTL)
        assert not cluster.primaries(), "promoted while etcd was down"
        own.restart()
        replicas[0].start()
        new = cluster.wait_for_primary(60)
        others = [n.name for n in cluster.nodes.values() if n is not new]
        cluster.wait_for_streaming(others, 90)
    finally:
        watch.stop()
        own.stop()
    assert watch.two_primaries() == []
    print(f"failsafe, etcd down and a member silent: the leader read-only {took:.1f}s after its last renewal")


class CuttableProxy(threading.Thread):
    """A TCP forwarder between one member and etcd; cut() drops every connection and refuses new
    ones (the member alone loses etcd), mend() lets them through again."""

    def __init__(self, target_port: int):
        super().__init__(daemon=True)
        self.port, self.target = harness.free_port(), target_port
        self.open = threading.Event()
        self.open.set()
        self.conns: List[socket.socket] = []
        self.lock = threading.Lock()
        self.listener = socket.socket()
        self.listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.listener.bind(("127.0.0.1", self.port))
        self.listener.listen(64)
        self.listener.settimeout(0.2)

    def run(self) -> None:
        while True:
            try:
                client, _ = self.listener.accept()
            except socket.timeout:
                continue
            except OSError:
                return
            if not self.open.is_set():
                client.close()
                continue
            try:
                upstream = socket.create_connection(("127.0.0.1", self.target), timeout=2)
            except OSError:
                client.close()
                continue
            with self.lock:
                self.conns += [client, upstream]
            for a, b in ((client, upstream), (upstream, client)):
                threading.Thread(target=self._pipe, args=(a, b), daemon=True).start()

    @staticmethod
    def _pipe(a: socket.socket, b: socket.socket) -> None:
        try:
            a.settimeout(None)
            while True:
                data = a.recv(65536)
                if not data:
                    break
                b.sendall(data)
        except OSError:
            pass
        finally:
            for s in (a, b):
                try:
                    s.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass

    def cut(self) -> None:
        self.open.clear()
        with self.lock:
            conns, self.conns = self.conns, []
        for s in conns:
            try:
                s.shutdown(socket.SHUT_RDWR)
                s.close()
            except OSError:
                pass

    def mend(self) -> None:
        self.open.set()

    def close(self) -> None:
        self.cut()
        self.listener.close()


def test_a_leader_cut_off_from_etcd_alone_keeps_writing_and_nobody_races_it(make_cluster, base_dir):
    """Only the leader loses etcd: the others see its lock expire, but they vouched for it, so none
    of them races; it keeps taking writes, and takes its lock back when etcd is reachable again."""
    own = harness.Etcd(os.path.join(base_dir, "fscut")).start()
    proxies = {}
    cluster = make_cluster("fscut")
    cluster.etcd = own
    try:
        for name in ("node1", "node2", "node3"):
            proxies[name] = CuttableProxy(own.port)
            proxies[name].start()
        primary, replicas = start_three(cluster, lambda node: {"etcd": {"host": f"127.0.0.1:{proxies[node].port}"}})
        watch = harness.PrimaryWatch(cluster)
        watch.start()
        writer = DirectWriter(primary)
        writer.start()
        time.sleep(1)
        proxies[primary.name].cut()
        cut = time.monotonic()
        wait_until(lambda: cluster.leader_name() is None, 3 * TTL, "the leader key to expire")
        expired = time.monotonic()
        time.sleep(2 * TTL)     # the others see no leader all this time, and do not race
        assert cluster.leader_name() is None and primary.role() == "primary"
        decisions = {r.name: (r.api("/status")[1] or {}).get("decision") for r in replicas}
        assert set(decisions.values()) == {"failsafe_promised"}, decisions
        shown = {m["name"]: m["failsafe"] for m in replicas[0].api("/cluster")[1]["members"]}
        assert all((shown[r.name] or "").startswith(f"vouched for {primary.name}") for r in replicas), shown
        proxies[primary.name].mend()
        wait_until(lambda: cluster.leader_name() == primary.name, 30, "the leader to take its lock back")
        mended = time.monotonic()
        cluster.wait_for_streaming([r.name for r in replicas], 30)
        writer.stop()
        watch.stop()
        gap = writer.longest_gap(cut, mended)
        assert gap < 1.0, f"writes on the primary stopped for {gap:.1f}s"
        assert watch.two_primaries() == []
        print(f"failsafe, the leader alone cut off from etcd for {mended - cut:.0f} s (its key expired after "
              f"{expired - cut:.0f} s): longest write gap {gap:.2f} s, no race, never two writable")
    finally:
        for proxy in proxies.values():
            proxy.close()
        own.stop()


class EtcdTrio:
    """Three etcd members on loopback: losing two leaves one that answers errors (no quorum)
    instead of nothing."""

    def __init__(self, base: str):
        self.base = base
        self.ports = [(harness.free_port(), harness.free_port()) for _ in range(3)]
        self.procs: List[Optional[subprocess.Popen]] = [None, None, None]
        self.reader = harness.Etcd(os.path.join(base, "reader"))     # reads keys through member 0
        self.reader.port = self.ports[0][0]

    @property
    def hosts(self) -> List[str]:
        return [f"127.0.0.1:{client}" for client, _peer in self.ports]

    def start(self, i: int) -> None:
        client, peer = self.ports[i]
        cluster = ",".join(f"e{j}=http://127.0.0.1:{p}" for j, (_c, p) in enumerate(self.ports))
        log = open(os.path.join(self.base, f"e{i}.log"), "ab")
        self.procs[i] = subprocess.Popen(
            ["etcd", "--name", f"e{i}", "--data-dir", os.path.join(self.base, f"e{i}"),
             "--listen-client-urls", f"http://127.0.0.1:{client}", "--advertise-client-urls", f"http://127.0.0.1:{client}",
             "--listen-peer-urls", f"http://127.0.0.1:{peer}", "--initial-advertise-peer-urls", f"http://127.0.0.1:{peer}",
             "--initial-cluster", cluster, "--initial-cluster-state", "new", "--initial-cluster-token", "trio"],
            stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        harness._processes.append(self.procs[i])

    def stop(self, i: int) -> None:
        proc = self.procs[i]
        if proc is not None and proc.poll() is None:
            proc.send_signal(signal.SIGKILL)
            proc.wait(20)

    def healthy(self) -> bool:
        return all(harness.Etcd.healthy(self._member(i)) for i in range(3))

    def _member(self, i: int) -> harness.Etcd:
        view = harness.Etcd.__new__(harness.Etcd)
        view.port = self.ports[i][0]
        return view


def test_etcd_without_quorum_answering_errors_costs_no_write_when_every_member_vouches(make_cluster, base_dir):
    """Two of three etcd members die: the one left answers, but only with errors. The leader
    cannot renew; every member vouches; writes go on; quorum back, the leader renews."""
    trio_dir = os.path.join(base_dir, "fstrio")
    os.makedirs(trio_dir, exist_ok=True)
    trio = EtcdTrio(trio_dir)
    for i in range(3):
        trio.start(i)
    try:
        wait_until(trio.healthy, 30, "a 3-member etcd")
        cluster = make_cluster("fstrio")
        cluster.etcd = trio.reader
        primary, replicas = start_three(cluster, lambda node: {"etcd": {"host": trio.hosts}})
        watch = harness.PrimaryWatch(cluster)
        watch.start()
        writer = DirectWriter(primary)
        writer.start()
        time.sleep(1)
        trio.stop(1)
        trio.stop(2)
        lost = time.monotonic()
        wait_until(lambda: (primary.api("/status")[1] or {}).get("failsafe"), 30, "the primary to report failsafe")
        time.sleep(3 * TTL)
        assert primary.role() == "primary"
        answered = primary.log_text()
        trio.start(1)
        trio.start(2)
        wait_until(lambda: cluster.leader_name() == primary.name and not (primary.api("/status")[1] or {}).get(
            "failsafe"), 60, "the leader to hold its lock again")
        back = time.monotonic()
        writer.stop()
        watch.stop()
    finally:
        for i in range(3):
            trio.stop(i)
    gap = writer.longest_gap(lost, back)
    assert gap < 1.0, f"writes on the primary stopped for {gap:.1f}s"
    assert watch.two_primaries() == []
    assert "failsafe: etcd cannot be used; every member vouched" in answered
    said = [line for line in answered.splitlines() if "WARNING" in line and "failsafe" not in line and "etcd" in line]
    print(f"failsafe, etcd without quorum for {back - lost:.0f} s: longest write gap {gap:.2f} s, never two writable; "
          f"etcd said: {said[-1][-200:] if said else '?'}")
