"""Three hosts deployed as README's "Three hosts" says (tests/hosts.py), seen from a client
host through haproxy: bootstrap, the leader's host cut off from the network, the leader's host
crashing. Run alone with `make test-hosts`; it builds the .deb first."""
from __future__ import annotations

import glob
import os
import subprocess
import time

import psycopg2
import pytest

from tests import hosts, system
from tests.harness import REPO, WriteClient, wait_until

# The first test also builds the root file system once (debootstrap) and boots three hosts.
pytestmark = [pytest.mark.integration, pytest.mark.system, pytest.mark.hosts, pytest.mark.timeout(1500)]


@pytest.fixture(scope="module")
def lan_hosts(base_dir):
    built = subprocess.run(["make", "-s", "deb"], cwd=REPO, capture_output=True, text=True)
    assert built.returncode == 0, built.stderr
    deb = sorted(glob.glob(os.path.join(REPO, "build", "deb", "governor_*_all.deb")))[-1]
    root = system.rootfs("bookworm", hosts.PACKAGES)
    work = os.path.join(base_dir, "hosts")
    os.makedirs(work, exist_ok=True)
    lan = hosts.Lan(os.getpid() % 200 + 20)
    machines = []
    proxy = None
    try:
        for number, name in enumerate(hosts.NAMES, start=11):
            address = lan.add(name, number)
            machines.append(hosts.Host(lan, name, address, root, os.path.dirname(deb), work))
        started = time.monotonic()
        password = hosts.deploy(machines, f"{lan.net}.0/24", deb)
        proxy = hosts.ClientHaproxy(lan, machines, work, password)
        yield lan, machines, proxy, started
    finally:
        if proxy is not None:
            proxy.stop()
        for m in machines:
            if m.alive:
                m.machine.poweroff()
        lan.teardown()


def primary(machines):
    """The one host whose governor says it is the primary holding the lock, or None."""
    found = [m for m in machines if m.alive and (m.status() or {}).get("role") == "primary"
             and (m.status() or {}).get("holds_lock")]
    return found[0] if len(found) == 1 else None


def streaming(m) -> bool:
    st = m.status() or {}
    return st.get("role") == "replica" and bool(st.get("streaming"))


def writable(m) -> bool:
    """Asked inside the host over the Unix socket, which a cut network does not reach."""
    done = m.run("runuser", "-u", "postgres", "--", "psql", "-XAtc", "SELECT pg_is_in_recovery()", check=False)
    return done.returncode == 0 and done.stdout.strip() == "f"


def test_three_fresh_hosts_form_a_cluster_reachable_through_haproxy(lan_hosts):
    lan, machines, proxy, started = lan_hosts
    leader = wait_until(lambda: primary(machines), 180, "a primary")
    others = [m for m in machines if m is not leader]
    wait_until(lambda: all(streaming(m) for m in others), 120, "two streaming replicas")
    print(f"bootstrap: healthy {time.monotonic() - started:.1f} s after the first apt install")
    listed = leader.run("governorctl", "-c", "/etc/governor", "list").stdout
    assert all(m.name in listed for m in machines), listed
    for m in machines:   # each member publishes the address the others reach it at, not 127.0.0.1
        assert (m.status() or {}).get("name") == m.name
    conn = wait_until(lambda: psycopg2.connect(proxy.dsn()), 30, "haproxy to route to the primary")
    conn.autocommit = True
    with conn.cursor() as cur:
        cur.execute("CREATE TABLE writes (id int PRIMARY KEY)")
        cur.execute("SELECT inet_server_addr()")
        assert cur.fetchone()[0] == leader.address
    conn.close()


def test_a_cut_off_leader_host_stops_writes_before_another_is_promoted(lan_hosts):
    lan, machines, proxy, _ = lan_hosts
    leader = wait_until(lambda: primary(machines), 60, "a primary")
    others = [m for m in machines if m is not leader]
    client = WriteClient(proxy.dsn(), "writes")
    client.start()
    time.sleep(2)
    cut = time.monotonic()
    lan.cut(leader.name)
    read_only_at = promoted_at = None
    try:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and promoted_at is None:
            if read_only_at is None and not writable(leader):
                read_only_at = time.monotonic()
            if any((m.status() or {}).get("role") == "primary" for m in others):
                promoted_at = time.monotonic()
            time.sleep(0.2)
        assert promoted_at is not None, "no replica was promoted"
        assert read_only_at is not None and read_only_at < promoted_at, \
            "the cut-off leader still accepted writes when another host was promoted"
        new = primary(others) or wait_until(lambda: primary(others), 30, "the new primary")
        resumed = client.first_ack_after(promoted_at, 30)
        assert resumed is not None, "writes through haproxy did not resume"
        print(f"cut-off leader: read-only {read_only_at - cut:.1f} s, new primary {promoted_at - cut:.1f} s, "
              f"writes through haproxy again {resumed - cut:.1f} s after the cut")
    finally:
        lan.mend(leader.name)
        client.stop()
    wait_until(lambda: streaming(leader), 180, f"{leader.name} to rejoin as a streaming replica")
    with psycopg2.connect(proxy.dsn()) as conn, conn.cursor() as cur:
        cur.execute("SELECT id FROM writes")
        stored = {row[0] for row in cur.fetchall()}
        cur.execute("SELECT inet_server_addr()")
        assert cur.fetchone()[0] == new.address
    lost = [i for i in client.acked_ids() if i not in stored]
    print(f"cut-off leader: {len(lost)} acknowledged writes lost (asynchronous replication)")


def test_the_leader_host_crashing_fails_over_to_another_host(lan_hosts):
    lan, machines, proxy, _ = lan_hosts
    leader = wait_until(lambda: primary(machines), 60, "a primary")
    others = [m for m in machines if m is not leader]
    wait_until(lambda: all(streaming(m) for m in others), 120, "two streaming replicas")
    client = WriteClient(proxy.dsn(), "writes")
    client.start()
    time.sleep(2)
    crashed = time.monotonic()
    leader.kill()
    try:
        new = wait_until(lambda: primary(others), 120, "a new primary on another host")
        resumed = client.first_ack_after(crashed, 60)
        assert resumed is not None, "writes through haproxy did not resume"
    finally:
        client.stop()
    with psycopg2.connect(proxy.dsn()) as conn, conn.cursor() as cur:
        cur.execute("SELECT id FROM writes")
        stored = {row[0] for row in cur.fetchall()}
        cur.execute("SELECT inet_server_addr()")
        assert cur.fetchone()[0] == new.address
    lost = [i for i in client.acked_ids() if i not in stored]
    print(f"leader host crash: writes through haproxy again {resumed - crashed:.1f} s after the crash, "
          f"{len(lost)} acknowledged writes lost (asynchronous replication)")
    survivor = next(m for m in others if m is not new)
    wait_until(lambda: streaming(survivor), 120, f"{survivor.name} to stream from {new.name}")
