"""Three Debian 12 hosts on one LAN, deployed the way README's "Three hosts" says.

Each host is a booted container (systemd-nspawn) in its own network namespace, linked to a
bridge on the test machine by a veth pair, with its own address: 10.232.N.11-13. Each runs
Debian's etcd-server as one member of a 3-member etcd (static bootstrap on the hosts' peer
URLs) and governor installed from the .deb with `apt install`. A fourth namespace, the client
host (.20), runs haproxy from the shipped example. A host is killed as a whole by killing its
container's init (every process in it dies at once, etcd member included), and cut off by
taking its link down.
"""
from __future__ import annotations

import contextlib
import json
import os
import re
import signal
import subprocess
import textwrap
import threading
import time
import urllib.request
from typing import Dict, Iterator, List, Optional

import psycopg2
import yaml

from tests import aptmirror, debs, system
from tests.harness import HAPROXY_EXAMPLE, REPO, WriteClient, _processes, haproxy_example_for, wait_until

PACKAGES = system.PACKAGES + ["sudo", "libnss-myhostname"]   # a host resolves its own name, as installed ones do
APT_INSTALLS = ("etcd-server", "etcd-client")   # installed by README's own `apt install`, in the test
NAMES = ("db1", "db2", "db3")
README_ADDRESSES = ("10.0.0.11", "10.0.0.12", "10.0.0.13")


def rootfs() -> str:
    """A Debian 12 host as an operator's: 15/main starts at boot, etcd-server waits for apt."""
    return system.rootfs("bookworm", PACKAGES, as_apt_leaves_it=True, to_install=APT_INSTALLS)


def readme_block(name: str) -> str:
    """The shell block README.md marks `<!-- test: NAME -->`, as an operator would paste it."""
    with open(os.path.join(REPO, "README.md")) as fh:
        text = fh.read()
    found = re.search(rf"<!-- test: {re.escape(name)} -->\s*\n\s*```sh\n(.*?)\n\s*```", text, re.S)
    assert found, f"README.md has no shell block marked {name}: the test and the README drifted apart"
    return textwrap.dedent(found.group(1))


def on_this_lan(block: str, hosts: List[Host]) -> str:
    """README's addresses (10.0.0.11-13) replaced by the hosts' on the test's LAN."""
    for readme, host in zip(README_ADDRESSES, hosts):
        block = block.replace(readme, host.address)
    return block


def sh(*args: str, check: bool = True) -> subprocess.CompletedProcess:
    return subprocess.run(args, check=check, capture_output=True, text=True)


class Lan:
    """A bridge and one network namespace per host, each with an address on the bridge."""

    def __init__(self, tag: int):
        self.tag = tag
        self.net = f"10.232.{tag}"
        self.bridge = f"gbr{tag}"
        self.links: Dict[str, str] = {}      # host name -> its veth end on the bridge
        sh("ip", "link", "add", self.bridge, "type", "bridge")
        sh("ip", "addr", "add", f"{self.net}.1/24", "dev", self.bridge)
        sh("ip", "link", "set", self.bridge, "up")

    def namespace(self, name: str) -> str:
        return f"gov{self.tag}-{name}"

    def add(self, name: str, host_number: int) -> str:
        """A namespace for host `name` with address .host_number; returns the address."""
        ns, outer, inner = self.namespace(name), f"gv{self.tag}{name}o", f"gv{self.tag}{name}i"
        address = f"{self.net}.{host_number}"
        sh("ip", "netns", "add", ns)
        sh("ip", "link", "add", outer, "type", "veth", "peer", "name", inner)
        sh("ip", "link", "set", inner, "netns", ns)
        sh("ip", "link", "set", outer, "master", self.bridge)
        sh("ip", "link", "set", outer, "up")
        for cmd in (["ip", "addr", "add", f"{address}/24", "dev", inner], ["ip", "link", "set", inner, "up"],
                    ["ip", "link", "set", "lo", "up"], ["ip", "route", "add", "default", "via", f"{self.net}.1"]):
            sh("ip", "netns", "exec", ns, *cmd)
        self.links[name] = outer
        return address

    def cut(self, name: str) -> None:
        sh("ip", "link", "set", self.links[name], "down")

    def mend(self, name: str) -> None:
        sh("ip", "link", "set", self.links[name], "up")

    def teardown(self) -> None:
        for name in self.links:
            sh("ip", "netns", "del", self.namespace(name), check=False)
        sh("ip", "link", "del", self.bridge, check=False)


class Disk:
    """A host's own disk: the shared root file system under a writable layer of the host's own
    (overlayfs), kept while the host is down, so it boots again with its etcd and PostgreSQL data."""

    def __init__(self, root: str, directory: str):
        self.merged = os.path.join(directory, "root")
        layers = {name: os.path.join(directory, name) for name in ("upper", "work")}
        for path in (self.merged, *layers.values()):
            os.makedirs(path, exist_ok=True)
        sh("mount", "-t", "overlay", "overlay", "-o",
           f"lowerdir={root},upperdir={layers['upper']},workdir={layers['work']}", self.merged)

    def unmount(self) -> None:
        sh("umount", "--lazy", self.merged, check=False)


class Host:
    """One database host: a booted container in its namespace, on a disk of its own."""

    def __init__(self, lan: Lan, name: str, address: str, root: str, ro_binds: List[tuple], log_dir: str):
        self.lan, self.name, self.address = lan, name, address
        self.ro_binds, self.log_dir = ro_binds, log_dir
        self.disk = Disk(root, os.path.join(log_dir, f"{name}-disk"))
        self.boot()

    def boot(self) -> float:
        """Power the host on; it boots from its disk (systemd starts what is enabled). Returns
        when it was powered on (monotonic); returns itself once the boot is complete."""
        powered_on = time.monotonic()
        self.machine = system.Machine(self.disk.merged, binds=[], ro_binds=self.ro_binds,
                                      log_path=os.path.join(self.log_dir, f"{self.name}-nspawn.log"),
                                      extra=[f"--network-namespace-path=/run/netns/{self.lan.namespace(self.name)}",
                                             f"--hostname={self.name}"], volatile=False)
        self.alive = True
        return powered_on

    def run(self, *cmd: str, check: bool = True, timeout: float = 60) -> subprocess.CompletedProcess:
        return self.machine.run(*cmd, check=check, timeout=timeout)

    def status(self) -> Optional[dict]:
        """governor's GET /status on this host, asked over the LAN; None when it does not answer."""
        try:
            with urllib.request.urlopen(f"http://{self.address}:8008/status", timeout=2) as resp:
                return json.load(resp)
        except (OSError, ValueError):
            return None

    def kill(self) -> None:
        """The host crashes: its container's init and so every process in it die at once."""
        os.kill(self.machine.init_pid, signal.SIGKILL)
        self.alive = False
        try:
            self.machine.proc.wait(30)
        except subprocess.TimeoutExpired:
            self.machine.proc.kill()

    def reboot(self) -> tuple:
        """`systemctl reboot` inside the host: every service stops cleanly, then it boots again
        from its disk. Returns (when the reboot was asked, when the host was powered on again)."""
        asked = time.monotonic()
        self.run("systemctl", "reboot", check=False)
        self.machine.proc.wait(120)     # nspawn leaves when the container's init reboots
        self.alive = False
        return asked, self.boot()

    def power_off(self) -> None:
        if self.alive:
            self.machine.poweroff()
            self.alive = False
        self.disk.unmount()

    def journal(self) -> str:
        return self.machine.journal("governor") if self.alive else ""


def deploy(hosts: List[Host], deb: str) -> str:
    """README's "Three hosts", steps 1-3 and 5 on every host, each step the README's own shell
    block with only the addresses changed (step 4, the ports, is the LAN). Returns the cluster's
    superuser password (generated on the first host)."""
    install = re.sub(r"\./governor_\S+_all\.deb", f"./{os.path.basename(deb)}", readme_block("hosts-install"))
    for h in hosts:
        h.run("bash", "-euc", f"cd /mnt/debs && {install}", timeout=300)
    for h in hosts:      # as apt left it: a one-member etcd of its own, already running
        wait_until(lambda h=h: h.run("systemctl", "is-active", "etcd", check=False).stdout.strip() == "active", 60,
                   f"{h.name}'s etcd started by apt")
    etcd = on_this_lan(readme_block("hosts-etcd"), hosts)
    for h in hosts:
        h.run("bash", "-euc", re.sub(r"(?m)^NAME=\S+ ADDR=\S+", f"NAME={h.name} ADDR={h.address}", etcd, count=1))
    check = on_this_lan(readme_block("hosts-etcd-check"), hosts)
    shown = []

    def checked() -> bool:
        done = hosts[0].run("bash", "-euc", check, check=False)
        shown[:] = [done.stdout + done.stderr]
        return one_etcd_cluster(done.stdout)
    try:
        wait_until(checked, 90, "one three-member etcd cluster, as README's check shows it")
    except AssertionError as exc:
        raise AssertionError(f"{exc}; the check showed:\n{shown[0] if shown else ''}") from None
    for h in hosts:
        h.run("bash", "-euc", readme_block("hosts-postgresql"))
    h0 = hosts[0]
    h0.run("bash", "-euc", on_this_lan(readme_block("hosts-config-first"), hosts))
    first_file = h0.run("cat", "/etc/governor/local.yml").stdout
    others = on_this_lan(readme_block("hosts-config-others"), hosts)
    for h in hosts[1:]:
        h.run("sh", "-c", f"umask 077 && cat > /root/{h0.name}.yml <<'EOF'\n{first_file}EOF\n")
        h.run("bash", "-euc", re.sub(r"--name \S+ --address \S+", f"--name {h.name} --address {h.address}", others))
    for h in hosts:
        h.run("bash", "-euc", readme_block("hosts-start"), timeout=300)
    return str(yaml.safe_load(first_file)["postgresql"]["superuser"]["password"])


def one_etcd_cluster(shown: str) -> bool:
    """README's check: exactly one of the endpoints is the leader, and three members are listed."""
    rows = [[cell.strip() for cell in line.strip().strip("|").split("|")] for line in shown.splitlines()
            if line.startswith("|") and ":2379" in line]
    members = [line for line in shown.splitlines() if line.count(",") >= 4 and "started" in line]
    return len(rows) == 3 and sum(1 for row in rows if row[4] == "true") == 1 and len(members) == 3


class ClientHaproxy:
    """haproxy from the shipped example, on the client host, with the three hosts as servers."""

    def __init__(self, lan: Lan, hosts: List[Host], work: str, password: str):
        self.password = password
        self.ns = lan.namespace("client")
        self.address = lan.add("client", 20)
        with open(HAPROXY_EXAMPLE) as fh:
            text = fh.read()
        servers = "".join(f"    server {h.name} {h.address}:5432 maxconn 100 check port 8008\n" for h in hosts)
        text = haproxy_example_for(re.sub(r"(?m)^    server .*\n(?:    server .*\n)*", servers, text),
                                   os.path.join(work, "haproxy-client.sock"))
        self.path = os.path.join(work, "haproxy-client.cfg")
        with open(self.path, "w") as fh:
            fh.write(text)
        self.proc = subprocess.Popen(["ip", "netns", "exec", self.ns, "haproxy", "-db", "-f", self.path],
                                     stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
        _processes.append(self.proc)

    def dsn(self, port: int = 5000) -> str:
        return (f"host={self.address} port={port} dbname=postgres user=postgres "
                f"password={self.password} connect_timeout=2")

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(10)


# What the tests on these hosts ask of them, as a user would check it.

def primary(machines):
    """The one host whose governor says it is the primary holding the lock, or None."""
    found = [m for m in machines if m.alive and (m.status() or {}).get("role") == "primary"
             and (m.status() or {}).get("holds_lock")]
    return found[0] if len(found) == 1 else None


def writer(proxy, table: str) -> WriteClient:
    """A client writing through haproxy into a table of its own (ids start at 1 in each)."""
    # haproxy may still have the primary down for a check interval after a previous scenario
    conn = wait_until(lambda: psycopg2.connect(proxy.dsn()), 15, "haproxy to route to the primary")
    with conn, conn.cursor() as cur:
        cur.execute(f"CREATE TABLE {table} (id int PRIMARY KEY)")
    conn.close()
    client = WriteClient(proxy.dsn(), table)
    client.start()
    return client


def healthy_with_writes(machines, proxy, table: str) -> tuple:
    """A primary, two streaming replicas and a client writing through haproxy for 2 s:
    (leader, the other two, the client)."""
    leader = wait_until(lambda: primary(machines), 60, "a primary")
    others = [m for m in machines if m is not leader]
    wait_until(lambda: all(streaming(m) for m in others), 120, "two streaming replicas")
    client = writer(proxy, table)
    time.sleep(2)
    return leader, others, client


def streaming(m) -> bool:
    st = m.status() or {}
    return st.get("role") == "replica" and bool(st.get("streaming"))


def writable(m) -> bool:
    """Asked inside the host over the Unix socket, which a cut network does not reach."""
    done = m.run("runuser", "-u", "postgres", "--", "psql", "-XAtc", "SELECT pg_is_in_recovery()", check=False)
    return done.returncode == 0 and done.stdout.strip() == "f"


def lost_writes(proxy, client: WriteClient, primary_host) -> list:
    """The client's acknowledged writes missing from the table, read through haproxy, which
    must route to `primary_host`."""
    # a single refused connection right after a failover is haproxy between two checks (seen
    # once in CI, after writes had resumed); the read is not what this asserts
    conn = wait_until(lambda: psycopg2.connect(proxy.dsn()), 15, "haproxy to route to the primary")
    with conn, conn.cursor() as cur:
        cur.execute(f"SELECT id FROM {client.table}")
        stored = {row[0] for row in cur.fetchall()}
        cur.execute("SELECT inet_server_addr()")
        assert cur.fetchone()[0] == primary_host.address
    conn.close()
    return [i for i in client.acked_ids() if i not in stored]


def every_etcd_member_healthy(machines) -> bool:
    """All three etcd members answer and agree on a leader (after a scenario that cut, crashed or
    stopped one, it may still be catching up: a test that takes another away would then lose
    quorum, which is another scenario)."""
    endpoints = ",".join(f"{m.address}:2379" for m in machines)
    done = machines[0].run("etcdctl", f"--endpoints={endpoints}", "endpoint", "health", check=False)
    return done.returncode == 0 and done.stdout.count("is healthy") + done.stderr.count("is healthy") == 3


def longest_gap(client: WriteClient, since: float) -> float:
    """The longest time between two acknowledged writes after `since`."""
    times = [acked for _i, _b, acked in client.acked if acked >= since]
    return max((b - a for a, b in zip(times, times[1:])), default=float("inf"))


def replayed(m, lsn: str) -> bool:
    """Whether the host's PostgreSQL, a replica, has replayed WAL up to `lsn`."""
    done = m.run("runuser", "-u", "postgres", "--", "psql", "-XAtc",
                 f"SELECT pg_last_wal_replay_lsn() >= '{lsn}'::pg_lsn", check=False)
    return done.returncode == 0 and done.stdout.strip() == "t"


@contextlib.contextmanager
def three_hosts(work: str, tag: int, ro_binds: List[tuple], archive: bool = False) -> Iterator[tuple]:
    """Three Debian 12 hosts deployed as README says (the .deb among `ro_binds` at /mnt/debs),
    haproxy on a client host: (lan, hosts, client haproxy, the superuser password, when the
    deployment began). With `archive`, Debian's archive on their LAN (tests/aptmirror.py: the
    hosts' deb.debian.org), for apt to move them to Debian 13."""
    deb = debs.build()
    root = rootfs()
    os.makedirs(work, exist_ok=True)
    lan = Lan(tag)
    mirror = aptmirror.AptMirror(f"{lan.net}.1") if archive else None
    machines: List[Host] = []
    proxy = None
    try:
        for number, name in enumerate(NAMES, start=11):
            address = lan.add(name, number)
            machines.append(Host(lan, name, address, root, ro_binds, work))
        if mirror is not None:
            for m in machines:   # the LAN's name service: Debian's archive is the mirror on the bridge
                m.run("sh", "-c", f"echo '{mirror.address} {aptmirror.NAME}' >> /etc/hosts")
        started = time.monotonic()
        password = deploy(machines, deb)
        proxy = ClientHaproxy(lan, machines, work, password)
        yield lan, machines, proxy, password, started
    finally:
        if proxy is not None:
            proxy.stop()
        for m in machines:
            m.power_off()
        if mirror is not None:
            mirror.stop()
        lan.teardown()


def debian_upgrade(machines: List[Host], leader: Host) -> Dict[str, float]:
    """README's "A new Debian release" on each host in turn, the replicas' first, each once the
    cluster and etcd are healthy again: seconds per host."""
    upgrade = readme_block("hosts-debian-upgrade")
    took = {}
    for m in [*(m for m in machines if m is not leader), leader]:
        began = time.monotonic()
        done = m.run("bash", "-euc", f"export DEBIAN_FRONTEND=noninteractive\n{upgrade}", check=False, timeout=1200)
        assert done.returncode == 0, f"{m.name}: {done.stdout[-2000:]}\n{done.stderr[-2000:]}"
        wait_until(lambda: every_etcd_member_healthy(machines), 120, "etcd's three members healthy")
        wait_until(lambda: primary(machines) is leader and all(streaming(o) for o in machines if o is not leader),
                   120, f"the cluster healthy again after {m.name}'s upgrade")
        took[m.name] = time.monotonic() - began
    return took


def server_version(m: Host, password: str) -> Optional[str]:
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


def received(lan: Lan, m: Host) -> int:
    """Bytes the host has received over its network link (sent to it by the bridge)."""
    with open(f"/sys/class/net/{lan.links[m.name]}/statistics/tx_bytes") as fh:
        return int(fh.read())


class StreamingAgain(threading.Thread):
    """When each replica first answers as a streaming replica on PostgreSQL 17 (seconds after
    the start), and how many bytes its host had received by then: what it took to bring it back."""

    def __init__(self, lan: Lan, replicas, password: str):
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
                    self.got[m.name] = received(self.lan, m) - self.before[m.name]
            self.stopped.wait(0.2)
