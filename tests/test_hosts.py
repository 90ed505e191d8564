"""Three hosts deployed as README's "Three hosts" says (tests/hosts.py), seen from a client
host through haproxy: bootstrap, the leader's host cut off from the network, an etcd member lost,
a rolling upgrade, a replica's host crashing and booting again, a clean reboot of the leader's
host, the leader's host crashing, etcd losing quorum. Each host has a disk of its own that
outlives it. Run alone with `make test-hosts`; it builds the .deb first."""
from __future__ import annotations

import os
import time
import urllib.error
import urllib.request

import psycopg2
import pytest

from tests import debs, hosts
from tests.harness import wait_until
from tests.hosts import (
    every_etcd_member_healthy,
    healthy_with_writes,
    longest_gap,
    lost_writes,
    primary,
    streaming,
    writable,
    writer,
)

# The first test also builds the root file system once (debootstrap) and boots three hosts.
pytestmark = [pytest.mark.integration, pytest.mark.system, pytest.mark.hosts, pytest.mark.timeout(1500)]


@pytest.fixture(scope="module")
def lan_hosts(base_dir):
    deb = debs.build()
    next_deb = debs.build_next()
    binds = [(os.path.dirname(deb), "/mnt/debs"), (os.path.dirname(next_deb), "/mnt/debs-next")]
    with hosts.three_hosts(os.path.join(base_dir, "hosts"), os.getpid() % 200 + 20, binds) as found:
        lan, machines, proxy, _password, started = found
        yield lan, machines, proxy, started, next_deb







def test_three_fresh_hosts_form_a_cluster_reachable_through_haproxy(lan_hosts):
    lan, machines, proxy, started, _ = lan_hosts
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
        cur.execute("CREATE TABLE bootstrap_writes (id int PRIMARY KEY)")
        cur.execute("SELECT inet_server_addr()")
        assert cur.fetchone()[0] == leader.address
    conn.close()


def test_control_from_another_host_needs_the_generated_credentials(lan_hosts):
    """Configured by generate-config as the README says, the API listens on the LAN: from another
    host a control request without credentials is refused (health checks stay open); governorctl
    on a member, with the files' credentials, restarts a replica, and the trail says who."""
    lan, machines, proxy, _, _ = lan_hosts
    leader = wait_until(lambda: primary(machines), 60, "a primary")
    replica = wait_until(lambda: next((m for m in machines if m is not leader and streaming(m)), None), 60,
                         "a streaming replica")
    for method, path, body in (("POST", "/restart", b"{}"), ("POST", "/reinitialize", b"{}"),
                               ("POST", "/switchover", b'{"candidate": "x"}'), ("PATCH", "/config", b'{"ttl": 60}')):
        req = urllib.request.Request(f"http://{replica.address}:8008{path}", data=body, method=method,
                                     headers={"Content-Type": "application/json"})
        with pytest.raises(urllib.error.HTTPError) as refused:
            urllib.request.urlopen(req, timeout=5)
        assert refused.value.code == 401, (path, refused.value.code)
    with urllib.request.urlopen(f"http://{replica.address}:8008/replica", timeout=5) as resp:
        assert resp.status == 200
    done = leader.run("governorctl", "-c", "/etc/governor", "restart", replica.name, "--force", timeout=120)
    assert done.returncode == 0, done.stdout + done.stderr
    journal = replica.run("journalctl", "-u", "governor", "--no-pager", "-o", "cat").stdout
    assert "refused: no valid credentials" in journal
    assert "audit: POST /restart" in journal and f"by user governor from {leader.address}: 200" in journal
    shown = leader.run("governorctl", "-c", "/etc/governor", "history", "--actions").stdout
    assert "POST /restart" in shown and "user governor" in shown, shown
    wait_until(lambda: streaming(replica), 60, f"{replica.name} to stream again")


def test_a_cut_off_leader_host_stops_writes_before_another_is_promoted(lan_hosts):
    lan, machines, proxy, _, _ = lan_hosts
    leader = wait_until(lambda: primary(machines), 60, "a primary")
    others = [m for m in machines if m is not leader]
    client = writer(proxy, "cutoff_writes")
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
    lost = lost_writes(proxy, client, new)
    print(f"cut-off leader: {len(lost)} acknowledged writes lost (asynchronous replication)")





def test_losing_the_leader_hosts_etcd_member_changes_nothing(lan_hosts):
    """One etcd member down (the one on the leader's host, which every governor asks first):
    the others keep quorum, governor moves to another endpoint, no failover, writes go on."""
    lan, machines, proxy, _, _ = lan_hosts
    leader = wait_until(lambda: primary(machines), 60, "a primary")
    wait_until(lambda: every_etcd_member_healthy(machines), 60, "all three etcd members healthy")
    client = writer(proxy, "etcd_member_writes")
    time.sleep(2)
    stopped = time.monotonic()
    leader.run("systemctl", "stop", "etcd")
    try:
        time.sleep(45)      # more than ttl: a lock that was not renewed would have expired
        assert primary(machines) is leader, "the leader changed although etcd kept its quorum"
        gap = longest_gap(client, stopped)
        if gap >= 2:
            times = [acked for _i, _b, acked in client.acked if acked >= stopped]
            worst = max(zip(times, times[1:]), key=lambda ab: ab[1] - ab[0], default=(stopped, stopped))
            since = f"{worst[0] - stopped:.1f}"
            print(f"longest gap from {since} s after the stop; the leader's log:\n"
                  + "\n".join(leader.journal().splitlines()[-60:]))
        assert gap < 2, f"writes through haproxy stopped for {gap:.1f} s"
        print(f"etcd member on the leader's host stopped: longest write gap {gap:.2f} s, no failover")
    finally:
        client.stop()
        leader.run("systemctl", "start", "etcd")
    wait_until(lambda: leader.run("etcdctl", "endpoint", "health", check=False).returncode == 0, 60,
               "the etcd member back")


def test_a_rolling_package_upgrade_keeps_the_leader(lan_hosts):
    """apt install of a newer package on every host, replicas first: each governor restarts on
    the new code leaving PostgreSQL running (README, "Upgrading"), so there is no failover; the
    only write gap is haproxy's check of the leader while its governor restarts."""
    lan, machines, proxy, _, next_deb = lan_hosts
    leader = wait_until(lambda: primary(machines), 60, "a primary")
    client = writer(proxy, "upgrade_writes")
    time.sleep(2)
    started = time.monotonic()
    version = os.path.basename(next_deb).split("_")[1]
    try:
        for m in sorted(machines, key=lambda m: m is leader):
            m.run("env", "DEBIAN_FRONTEND=noninteractive", "apt-get", "install", "-y", "-q",
                  f"/mnt/debs-next/{os.path.basename(next_deb)}", timeout=300)
            assert m.run("dpkg-query", "-W", "-f", "${Version}", "governor").stdout == version
            if m is leader:
                wait_until(lambda: primary(machines) is leader, 60, "the leader back on the new code")
            else:
                wait_until(lambda m=m: streaming(m), 60, f"{m.name} streaming on the new code")
        time.sleep(10)          # and writes go on after it
        assert primary(machines) is leader, "the upgrade moved the leader"
        gap = longest_gap(client, started)
        assert gap < 10, f"writes through haproxy stopped for {gap:.1f} s"
    finally:
        client.stop()
    print(f"rolling upgrade: no failover, longest write gap through haproxy {gap:.2f} s")


def test_a_replica_host_crashing_leaves_writes_alone_and_it_rejoins_after_booting(lan_hosts):
    """A replica's host dies with its etcd member: etcd keeps its quorum, the leader keeps its lock
    and writes go on; booted again, the host's etcd member and governor come back by themselves
    and its PostgreSQL (killed mid-stream) recovers and streams again."""
    lan, machines, proxy, _, _ = lan_hosts
    leader, others, client = healthy_with_writes(machines, proxy, "replica_crash_writes")
    replica = others[0]
    crashed = time.monotonic()
    replica.kill()
    try:
        time.sleep(10)
        booted = replica.boot()
        wait_until(lambda: streaming(replica), 120, f"{replica.name} to stream again after booting")
        rejoined = time.monotonic()
        assert primary(machines) is leader, "the leader changed when a replica's host crashed"
        gap = longest_gap(client, crashed)
        assert gap < 2, f"writes through haproxy stopped for {gap:.1f} s"
    finally:
        client.stop()
    assert lost_writes(proxy, client, leader) == []
    print(f"replica host crash: no failover, longest write gap {gap:.2f} s; streaming again "
          f"{rejoined - booted:.1f} s after power-on")


def test_a_clean_reboot_of_the_leader_host_hands_over_and_it_rejoins_after_booting(lan_hosts):
    """`systemctl reboot` on the leader's host: governor stops first, hands the lock over (no
    waiting for ttl), and after the boot the host rejoins as a replica by itself."""
    lan, machines, proxy, _, _ = lan_hosts
    leader, others, client = healthy_with_writes(machines, proxy, "reboot_writes")
    try:
        asked, booted = leader.reboot()
        new = wait_until(lambda: primary(others), 60, "a new primary on another host")
        resumed = client.first_ack_after(asked, 60)
        assert resumed is not None, "writes through haproxy did not resume"
        wait_until(lambda: streaming(leader), 120, f"{leader.name} to rejoin as a replica after booting")
        rejoined = time.monotonic()
        gap = longest_gap(client, asked)
        assert gap < 5, f"writes through haproxy stopped for {gap:.1f} s: the lock was not handed over"
    finally:
        client.stop()
    assert lost_writes(proxy, client, new) == [], "a clean handover lost acknowledged writes"
    print(f"leader host clean reboot: longest write gap {gap:.2f} s, {leader.name} back as a streaming "
          f"replica {rejoined - asked:.1f} s after the reboot was asked ({rejoined - booted:.1f} s after power-on)")


def test_the_leader_host_crashing_fails_over_to_another_host(lan_hosts):
    lan, machines, proxy, _, _ = lan_hosts
    leader, others, client = healthy_with_writes(machines, proxy, "crash_writes")
    crashed = time.monotonic()
    leader.kill()
    try:
        new = wait_until(lambda: primary(others), 120, "a new primary on another host")
        resumed = client.first_ack_after(crashed, 60)
        assert resumed is not None, "writes through haproxy did not resume"
    finally:
        client.stop()
    lost = lost_writes(proxy, client, new)
    print(f"leader host crash: writes through haproxy again {resumed - crashed:.1f} s after the crash, "
          f"{len(lost)} acknowledged writes lost (asynchronous replication)")
    survivor = next(m for m in others if m is not new)
    wait_until(lambda: streaming(survivor), 120, f"{survivor.name} to stream from {new.name}")


def test_etcd_losing_quorum_makes_the_leader_read_only_before_its_lock_could_expire(lan_hosts):
    """Two hosts left after the crash; the other one crashes too: etcd has one member of three,
    no quorum, nobody can renew or take the lock. The leader must stop taking writes before its
    lock could have expired (ttl 30 s after its last renewal), as documented (no failsafe)."""
    lan, machines, proxy, _, _ = lan_hosts
    alive = [m for m in machines if m.alive]
    assert len(alive) == 2
    leader = wait_until(lambda: primary(alive), 60, "a primary")
    other = next(m for m in alive if m is not leader)
    renewed = time.monotonic()          # the lock was renewed at most loop_wait (10 s) before this
    other.kill()
    read_only = wait_until(lambda: not writable(leader), 40, "the leader to stop taking writes")
    assert read_only
    took = time.monotonic() - renewed
    assert took < 30, f"the leader took writes for {took:.1f} s without etcd, beyond its lock's ttl"
    print(f"etcd quorum lost: the leader stopped taking writes {took:.1f} s after the second host crashed")
    wait_until(lambda: not primary_api(leader), 30, "the leader's /primary to answer 503")
    wait_until(lambda: refused(proxy), 10, "haproxy to stop routing writes")


def refused(proxy) -> bool:
    try:
        psycopg2.connect(proxy.dsn()).close()
        return False
    except psycopg2.OperationalError:
        return True


def primary_api(m) -> bool:
    """Whether the host's governor answers 200 on GET /primary (what haproxy asks)."""
    try:
        with urllib.request.urlopen(f"http://{m.address}:8008/primary", timeout=2) as resp:
            return resp.status == 200
    except (OSError, ValueError):
        return False
