"""Three Debian 12 hosts deployed as README's "Three hosts" says, with a client writing through
haproxy on a fourth, moved to Debian 13 and PostgreSQL 17 as README's "Upgrading" says: each host
upgraded by apt in turn (the hosts' LAN reaches Debian's archive through tests/aptmirror.py),
then `governorctl upgrade --to 17`. Every acknowledged write is kept, never two writable servers,
and the replicas receive far less than the database over the network (they link their own files).
Run alone with `make test-hosts`."""
from __future__ import annotations

import os
import time

import psycopg2
import pytest

from tests import debs, harness, hosts
from tests.harness import wait_until
from tests.hosts import longest_gap, lost_writes, primary, streaming, writer

pytestmark = [pytest.mark.integration, pytest.mark.system, pytest.mark.hosts, pytest.mark.timeout(2400)]
BULK_ROWS = 3000000    # about 200 MiB: well above the new catalogs a replica receives (about 40 MiB)


@pytest.fixture(scope="module")
def cluster(base_dir):
    deb = debs.build()
    with hosts.three_hosts(os.path.join(base_dir, "hosts-upgrade"), 220 + os.getpid() % 30,
                           [(os.path.dirname(deb), "/mnt/debs")], archive=True) as found:
        yield found[:4]


def test_each_host_moves_to_debian_13_under_a_running_cluster(cluster):
    lan, machines, proxy, password = cluster
    leader = wait_until(lambda: primary(machines), 180, "a primary")
    wait_until(lambda: all(streaming(m) for m in machines if m is not leader), 120, "two streaming replicas")
    client = writer(proxy, "debian_upgrade_writes")
    try:
        for name, seconds in hosts.debian_upgrade(machines, leader).items():
            print(f"{name}: Debian 13 in {seconds:.1f} s")
        for m in machines:
            assert m.run("cat", "/etc/debian_version").stdout.startswith("13"), m.name
            installed = m.run("dpkg-query", "-W", "-f", "${Package} ${db:Status-Abbrev}\n", "postgresql-15",
                              "postgresql-17").stdout
            assert installed.split() == ["postgresql-15", "ii", "postgresql-17", "ii"], (m.name, installed)
            # nothing else will take governor's port at the next boot: no cluster of Debian's own
            clusters = m.run("pg_lsclusters", "-h").stdout.strip()
            assert clusters == "", f"{m.name}: Debian's clusters beside governor's: {clusters}"
            assert hosts.server_version(m, password).startswith("15"), m.name
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
    again = hosts.StreamingAgain(lan, replicas, password)
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
        assert hosts.server_version(m, password).startswith("17"), m.name
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
