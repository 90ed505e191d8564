"""Failsafe mode against real etcd and PostgreSQL: a primary that every member vouches for keeps
taking writes through an etcd outage; one that some member does not vouch for demotes before its
lock could expire. Throughout, never two writable servers (PrimaryWatch asks each one directly)."""
from __future__ import annotations

import json
import os
import queue
import signal
import socket
import threading
import time
import urllib.request
from typing import List, Optional, Tuple

import psycopg2
import pytest

from tests import harness
from tests.etcdtrio import EtcdTrio
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


def cluster_on(make_cluster, base_dir, name: str, extra: Optional[dict] = None):
    own = harness.Etcd(os.path.join(base_dir, name)).start()
    cluster = make_cluster(name)
    cluster.etcd = own
    primary, replicas = start_three(cluster, lambda node: extra or {})
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
    wait_until(lambda: listed(cluster.etcd, cluster) == {n.name for n in replicas}, 30,
               "the failsafe list to name the replicas")
    primary.sql("CREATE TABLE failsafe_writes (id int PRIMARY KEY)")
    return primary, replicas


def held_through(writer: DirectWriter, watch: harness.PrimaryWatch, primary: harness.Node, since: float,
                 until: float) -> float:
    """What every outage test asserts afterwards: the primary took writes throughout (no gap of a
    second), never two writable, none acknowledged lost. Returns the longest gap."""
    gap = writer.longest_gap(since, until)
    assert gap < 1.0, f"writes on {primary.name} stopped for {gap:.1f}s during the etcd outage"
    assert watch.two_primaries() == []
    stored = {row[0] for row in primary.sql("SELECT id FROM failsafe_writes")}
    assert not [n for n, _t in writer.acked if n not in stored]
    return gap


def listed(etcd: harness.Etcd, cluster, leader: Optional[str] = None) -> set:
    """The members the failsafe key names (empty when another leader wrote it)."""
    node = etcd.get(f"/service/{cluster.scope}/failsafe", api=3)
    value = json.loads(node["value"]) if node else {}
    return set(value["members"]) if value and leader in (None, value["leader"]) else set()


def vouched_for(leader: harness.Node, members: List[harness.Node]) -> bool:
    return all(((m.api("/status")[1] or {}).get("failsafe") or "").startswith(f"vouched for {leader.name}")
               for m in members)


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
    gap = held_through(writer, watch, primary, stopped, outage_end)
    print(f"failsafe, etcd down 60 s: longest write gap {gap:.2f} s, {len(writer.acked)} writes, none lost, "
          "never two writable")


def test_with_a_member_not_answering_the_leader_demotes_before_its_lock_expires(make_cluster, base_dir):
    own, cluster, primary, replicas = cluster_on(make_cluster, base_dir, "fsone")
    watch = harness.PrimaryWatch(cluster)
    watch.start()
    try:
        replicas[0].kill_all()              # its governor: it cannot vouch
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
    ones (the member alone loses etcd), mend() lets them through again. With `delay`, each chunk
    from a client reaches the target `delay` seconds after the proxy received it (added latency on
    the request path; answers are passed on at once)."""

    def __init__(self, target_port: int, listen: Tuple[str, int] = ("127.0.0.1", 0), delay: float = 0.0):
        super().__init__(daemon=True)
        self.port, self.target, self.delay = listen[1] or harness.free_port(), target_port, delay
        self.open = threading.Event()
        self.open.set()
        self.conns: List[socket.socket] = []
        self.lock = threading.Lock()
        self.listener = socket.socket()
        self.listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.listener.bind((listen[0], self.port))
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
            for a, b, delay in ((client, upstream, self.delay), (upstream, client, 0.0)):
                threading.Thread(target=self._pipe, args=(a, b, delay), daemon=True).start()

    @staticmethod
    def _pipe(a: socket.socket, b: socket.socket, delay: float) -> None:
        """a's bytes to b, each chunk `delay` after it arrived (a FIFO: every chunk has the same
        delay, so none waits longer than its own)."""
        chunks: queue.Queue[Tuple[float, bytes]] = queue.Queue()
        sender = threading.Thread(target=CuttableProxy._send, args=(chunks, b), daemon=True)
        sender.start()
        try:
            a.settimeout(None)
            while True:
                data = a.recv(65536)
                chunks.put((time.monotonic() + delay, data))
                if not data:
                    break
        except OSError:
            chunks.put((0.0, b""))
        sender.join()
        for s in (a, b):
            try:
                s.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass

    @staticmethod
    def _send(chunks: queue.Queue[Tuple[float, bytes]], b: socket.socket) -> None:
        try:
            while True:
                due, data = chunks.get()
                time.sleep(max(0.0, due - time.monotonic()))
                if not data:
                    return
                b.sendall(data)
        except OSError:
            return

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


def test_after_a_switchover_the_members_vouch_for_the_new_leader(make_cluster, base_dir):
    """A switchover, then etcd goes away: the new leader is the one every member vouches for
    (the old leader among them), and it keeps taking writes; nothing is left of the old list."""
    auth = {"restapi": {"username": "admin", "password": "api-Secret-9"}}
    own, cluster, old, replicas = cluster_on(make_cluster, base_dir, "fsswitch", auth)
    new = replicas[0]
    done = harness.governorctl(old, "switchover", "--leader", old.name, "--candidate", new.name)
    assert done.returncode == 0, done.stdout + done.stderr
    others = [n for n in cluster.nodes.values() if n is not new]
    cluster.wait_for_streaming([n.name for n in others], 60)
    wait_until(lambda: listed(own, cluster, new.name) == {n.name for n in others}, 30,
               "the new leader's failsafe list")
    watch = harness.PrimaryWatch(cluster)
    watch.start()
    writer = DirectWriter(new)
    writer.start()
    try:
        time.sleep(1)
        own.stop(signal.SIGKILL)
        stopped = time.monotonic()
        wait_until(lambda: vouched_for(new, others), 20, "every other member to vouch for the new leader")
        time.sleep(max(0.0, 2 * TTL - (time.monotonic() - stopped)))    # past the lock's expiry
        assert new.role() == "primary" and old.role() == "replica"
        assert vouched_for(new, others)
        outage_end = time.monotonic()
        own.restart()
        wait_until(lambda: cluster.leader_name() == new.name and not (new.api("/status")[1] or {}).get(
            "failsafe"), 30, "the new leader to take its lock back")
        cluster.wait_for_streaming([n.name for n in others], 30)
    finally:
        writer.stop()
        watch.stop()
        own.stop()
    gap = held_through(writer, watch, new, stopped, outage_end)
    print(f"failsafe after a switchover, etcd down {outage_end - stopped:.0f} s: every member vouched for "
          f"{new.name}, longest write gap {gap:.2f} s, never two writable")


def test_three_seconds_of_added_latency_between_members_does_not_break_failsafe(make_cluster, base_dir):
    """The members reach each other's API only through proxies that delay every request by 3 s
    (this kernel has no netem qdisc). At governor's default timing (ttl 30, loop_wait 10,
    retry_timeout 10) a round may wait 4.5 s for the answers: the primary stays writable through an
    etcd outage longer than its lock, on members' promises that each took over 3 s to arrive."""
    defaults = {"loop_wait": 10, "retry_timeout": 10, "etcd": {"ttl": 30}, "failsafe_mode": True}
    own = harness.Etcd(os.path.join(base_dir, "fsslow")).start()
    cluster = make_cluster("fsslow")
    cluster.etcd = own
    proxies: List[CuttableProxy] = []
    try:
        for name in ("node1", "node2", "node3"):
            node = cluster.add(name, start=False, extra=defaults)
            node.config["restapi"]["connect_address"] = f"127.0.0.2:{node.api_port}"
            node.write_config()
            proxies.append(CuttableProxy(node.api_port, ("127.0.0.2", node.api_port), delay=3.0))
            proxies[-1].start()
            node.start()
        primary = cluster.wait_for_primary(120)
        slow = time.monotonic()
        with urllib.request.urlopen(f"http://127.0.0.2:{primary.api_port}/liveness", timeout=10) as resp:
            resp.read()
        assert time.monotonic() - slow >= 3.0, "the proxy does not delay"
        replicas = [n for n in cluster.nodes.values() if n is not primary]
        cluster.wait_for_streaming([n.name for n in replicas], 120)
        wait_until(lambda: listed(own, cluster, primary.name) == {n.name for n in replicas}, 60,
                   "the failsafe list to name the replicas")
        primary.sql("CREATE TABLE failsafe_writes (id int PRIMARY KEY)")
        watch = harness.PrimaryWatch(cluster)
        watch.start()
        writer = DirectWriter(primary)
        writer.start()
        time.sleep(1)
        own.stop(signal.SIGKILL)
        stopped = time.monotonic()
        wait_until(lambda: vouched_for(primary, replicas), 40, "the replicas to vouch through the slow link")
        time.sleep(max(0.0, 30 + 15 - (time.monotonic() - stopped)))     # well past the lock's expiry
        assert primary.role() == "primary" and primary.api("/primary")[0] == 200
        assert "not every member" not in primary.log_text()
        outage_end = time.monotonic()
        own.restart()
        wait_until(lambda: cluster.leader_name() == primary.name, 60, "the leader to take its lock back")
        writer.stop()
        watch.stop()
    finally:
        for proxy in proxies:
            proxy.close()
        own.stop()
    gap = writer.longest_gap(stopped, outage_end)
    assert gap < 1.0, f"writes on the primary stopped for {gap:.1f}s"
    assert watch.two_primaries() == []
    print(f"failsafe with 3 s added between members, etcd down {outage_end - stopped:.0f} s (ttl 30): longest "
          f"write gap {gap:.2f} s, never two writable")
