"""Three Debian 12 hosts deployed as README's "Three hosts" says, with a client writing through
haproxy on a fourth, moved to Debian 13 and PostgreSQL 17 as README's "Upgrading" says: each host
upgraded by apt in turn (the hosts' LAN reaches Debian's archive through tests/aptmirror.py),
then `governorctl upgrade --to 17`. Every acknowledged write is kept, never two writable servers,
and the replicas receive far less than the database over the network (they link their own files).
Run alone with `make test-hosts`."""
from __future__ import annotations

import os
import threading
import time
from typing import Dict, Optional

import psycopg2
import pytest

from tests import aptmirror, debs, harness, hosts
from tests.harness import wait_until
from tests.hosts import every_etcd_member_healthy, longest_gap, lost_writes, primary, streaming, writer

pytestmark = [pytest.mark.integration, pytest.mark.system, pytest.mark.hosts, pytest.mark.timeout(2400)]
BULK_ROWS = 3000000    # about 200 MiB: well above the new catalogs a replica receives (about 40 MiB)


@pytest.fixture(scope="module")
def cluster(base_dir):
    deb = debs.build()
    root = hosts.rootfs()
    work = os.path.join(base_dir, "hosts-upgrade")
    os.makedirs(work, exist_ok=True)
    lan = hosts.Lan(220 + os.getpid() % 30)
    mirror = aptmirror.AptMirror(f"{lan.net}.1")
    machines, proxy = [], None
    try:
        for number, name in enumerate(hosts.NAMES, start=11):
            address = lan.add(name, number)
            machines.append(hosts.Host(lan, name, address, root, [(os.path.dirname(deb), "/mnt/debs")], work))
        for m in machines:   # the LAN's name service: Debian's archive is the mirror on the bridge
            m.run("sh", "-c", f"echo '{mirror.address} {aptmirror.NAME}' >> /etc/hosts")
        password = hosts.deploy(machines, deb)
        proxy = hosts.ClientHaproxy(lan, machines, work, password)
        yield lan, machines, proxy, password
    finally:
        if proxy is not None:
            proxy.stop()
        for m in machines:
            m.power_off()
        mirror.stop()
        lan.teardown()


def server_version(m: hosts.Host, password: str) -> Optional[str]:
    try:
        conn = psycopg2.connect(host=m.address, port=5432, user="postgres", dbname="postgres", password=password,
                                connect_timeout=2)
    except psycopg2.Error:
        return None
    try:
        with conn.cursor() as cur:
            cur.execute("SELECT current_setting('server_version_num')")
            return cur.fetchone()[0]
    finally:
        conn.close()


def received(lan: hosts.Lan, m: hosts.Host) -> int:
    """Bytes the host has received over its network link (sent to it by the bridge)."""
    with open(f"/sys/class/net/{lan.links[m.name]}/statistics/tx_bytes") as fh:
        return int(fh.read())


class StreamingAgain(threading.Thread):
    """When each replica first answers as a streaming replica on PostgreSQL 17 (seconds after
    the start), and how many bytes its host had received by then: what it took to bring it back."""

    def __init__(self, lan: hosts.Lan, replicas, password: str):
        super().__init__(daemon=True)
        self.lan, self.replicas, self.password = lan, replicas, password
        self.before = {m.name: received(lan, m) for m in replicas}
        self.since = time.monotonic()
        self.after: Dict[str, float] = {}
        self.got: Dict[str, int] = {}
        self.stopped = threading.Event()

    def run(self) -> None:
        while not self.stopped.is_set() and len(self.after) < len(self.replicas):
            for m in self.replicas:
                if m.name in self.after or not streaming(m):
                    continue
                if (server_version(m, self.password) or "").startswith("17"):
                    self.after[m.name] = time.monotonic() - self.since
                    self.again.got[m.name] = received(self.lan, m) - self.before[m.name]
            self.stopped.wait(0.2)


def test_each_host_moves_to_debian_13_under_a_running_cluster(cluster):
    lan, machines, proxy, password = cluster
    leader = wait_until(lambda: primary(machines), 180, "a primary")
    wait_until(lambda: all(streaming(m) for m in machines if m is not leader), 120, "two streaming replicas")
    client = writer(proxy, "debian_upgrade_writes")
    try:
        upgrade = hosts.readme_block("hosts-debian-upgrade")
        for m in [*(m for m in machines if m is not leader), leader]:    # replicas first, as README says
            began = time.monotonic()
            done = m.run("bash", "-euc", f"export DEBIAN_FRONTEND=noninteractive\n{upgrade}", check=False,
                         timeout=1200)
            assert done.returncode == 0, f"{m.name}: {done.stdout[-2000:]}\n{done.stderr[-2000:]}"
            wait_until(lambda: every_etcd_member_healthy(machines), 120, "etcd's three members healthy")
            wait_until(lambda: primary(machines) is leader and all(streaming(o) for o in machines if o is not leader),
                       120, f"the cluster healthy again after {m.name}'s upgrade")
            print(f"{m.name}: Debian 13 in {time.monotonic() - began:.1f} s")
        for m in machines:
            assert m.run("cat", "/etc/debian_version").stdout.startswith("13"), m.name
            installed = m.run("dpkg-query", "-W", "-f", "${Package} ${db:Status-Abbrev}\n", "postgresql-15",
                              "postgresql-17").stdout
            assert installed.split() == ["postgresql-15", "ii", "postgresql-17", "ii"], (m.name, installed)
            # nothing else will take governor's port at the next boot: no cluster of Debian's own
            clusters = m.run("pg_lsclusters", "-h").stdout.strip()
            assert clusters == "", f"{m.name}: Debian's clusters beside governor's: {clusters}"
            assert server_version(m, password).startswith("15"), m.name
    finally:
        client.stop()
    assert lost_writes(proxy, client, leader) == []
    assert longest_gap(client, 0) < 5, "writes paused while the hosts were upgraded"


def test_governorctl_upgrade_moves_the_cluster_to_postgresql_17_keeping_every_write(cluster):
    lan, machines, proxy, password = cluster
    leader = wait_until(lambda: primary(machines), 60, "a primary")
    replicas = [m for m in machines if m is not leader]
    wait_until(lambda: all(streaming(m) for m in replicas), 120, "two streaming replicas")
    conn = psycopg2.connect(proxy.dsn())
    conn.autocommit = True
    with conn.cursor() as cur:
        cur.execute("CREATE TABLE bulk AS SELECT g AS id, md5(g::text) AS payload "
                    f"FROM generate_series(1, {BULK_ROWS}) AS g")
        cur.execute("VACUUM bulk")   # as a database that has lived: hint bits and visibility map set
        cur.execute("SELECT pg_database_size('postgres')")
        size = cur.fetchone()[0]
        cur.execute("SELECT pg_current_wal_lsn()")
        end = cur.fetchone()[0]
    conn.close()
    wait_until(lambda: all(hosts.replayed(m, end) for m in replicas), 120, "the replicas to have the table")
    check = leader.run("governorctl", "upgrade", "--to", "17", "--check", check=False, timeout=300)
    assert check.returncode == 0, check.stdout + check.stderr

    client = writer(proxy, "major_upgrade_writes")
    watch = harness.WritableCount([(m.address, 5432) for m in machines], password)
    watch.start()
    time.sleep(2)
    again = StreamingAgain(lan, replicas, password)
    began = again.since
    again.start()
    try:
        done = leader.run("governorctl", "upgrade", "--to", "17", check=False, timeout=900)
        took = time.monotonic() - began
        assert done.returncode == 0, done.stdout + done.stderr
        assert "done: every member runs PostgreSQL 17" in done.stdout, done.stdout
        again.join(120)
        time.sleep(2)
    finally:
        client.stop()
        watch.stopped.set()
        watch.join(10)
        again.stopped.set()
    assert watch.most <= 1, "two servers accepted writes at once"
    assert primary(machines) is leader
    for m in machines:
        assert server_version(m, password).startswith("17"), m.name
    assert sorted(again.after) == sorted(m.name for m in replicas), f"streaming on 17: {again.after}"
    assert lost_writes(proxy, client, leader) == []
    for m in replicas:
        said = [line for line in m.journal().splitlines() if "upgrade" in line]
        assert any("linked from this member's own" in line for line in said), (m.name, said[-20:])
        assert again.got[m.name] < size / 2, f"{m.name} received {again.got[m.name]} bytes of a {size}-byte database"
    gap = longest_gap(client, began)
    print(f"PostgreSQL 15 -> 17 on three hosts, a {size / 2**20:.0f} MiB database: done in {took:.1f} s; "
          f"longest write gap through haproxy {gap:.1f} s; replicas streaming on 17 after "
          + ", ".join(f"{name} {s:.1f} s" for name, s in sorted(again.after.items()))
          + "; received over the network by then "
          + ", ".join(f"{n} {b / 2**20:.1f} MiB" for n, b in sorted(again.got.items()))
          + f"\n{done.stdout}")
    assert gap < 15, f"writes paused {gap:.1f} s"
