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

import json
import os
import re
import signal
import subprocess
import time
import urllib.request
from typing import Dict, List, Optional

import yaml

from tests import system
from tests.harness import HAPROXY_EXAMPLE, _processes, wait_until

PACKAGES = system.PACKAGES + ["etcd-server", "etcd-client"]
NAMES = ("db1", "db2", "db3")


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


def etcd_defaults(hosts: List[Host], me: Host) -> str:
    """/etc/default/etcd for `me`, as README's "Three hosts" step 1 says."""
    cluster = ",".join(f"{h.name}=http://{h.address}:2380" for h in hosts)
    return "\n".join([
        f"ETCD_NAME={me.name}",
        "ETCD_DATA_DIR=/var/lib/etcd/default",
        f"ETCD_INITIAL_CLUSTER={cluster}",
        "ETCD_INITIAL_CLUSTER_STATE=new",
        "ETCD_INITIAL_CLUSTER_TOKEN=main",
        f"ETCD_LISTEN_PEER_URLS=http://{me.address}:2380",
        f"ETCD_INITIAL_ADVERTISE_PEER_URLS=http://{me.address}:2380",
        f"ETCD_LISTEN_CLIENT_URLS=http://{me.address}:2379,http://127.0.0.1:2379",
        f"ETCD_ADVERTISE_CLIENT_URLS=http://{me.address}:2379",
        ""])


def deploy(hosts: List[Host], network: str, deb: str) -> str:
    """README's "Three hosts", steps 1-3 and 5, on every host (step 4, the ports, is the LAN).
    Returns the cluster's superuser password (generated on the first host)."""
    for h in hosts:
        h.run("env", "DEBIAN_FRONTEND=noninteractive", "apt-get", "install", "-y", "-q",
              f"/mnt/debs/{os.path.basename(deb)}", timeout=300)
        h.run("sh", "-c", f"cat > /etc/default/etcd <<'EOF'\n{etcd_defaults(hosts, h)}EOF\n"
                          "rm -f /etc/systemd/system/etcd.service && systemctl daemon-reload")
        h.run("systemctl", "start", "--no-block", "etcd")
    for h in hosts:
        wait_until(lambda h=h: h.run("etcdctl", "--endpoints", f"http://{h.address}:2379", "endpoint", "health",
                                     check=False).returncode == 0, 90, f"etcd on {h.name}")
    endpoints = ",".join(f"{h.address}:2379" for h in hosts)
    first_file = ""
    for h in hosts:
        h.run("systemctl", "disable", "--now", "postgresql@15-main", check=False)
        extra = []
        if first_file:
            h.run("sh", "-c", f"cat > /root/{hosts[0].name}.yml <<'EOF'\n{first_file}EOF\n")
            extra = ["--passwords-from", f"/root/{hosts[0].name}.yml"]
        h.run("governorctl", "generate-config", "--name", h.name, "--address", h.address, "--etcd", endpoints,
              "--network", network, *extra)
        if not first_file:
            first_file = h.run("cat", "/etc/governor/local.yml").stdout
        h.run("runuser", "-u", "postgres", "--", "governor", "--validate-config", "/etc/governor")
    for h in hosts:
        h.run("systemctl", "enable", "--now", "--no-block", "governor")
    return str(yaml.safe_load(first_file)["postgresql"]["superuser"]["password"])


class ClientHaproxy:
    """haproxy from the shipped example, on the client host, with the three hosts as servers."""

    def __init__(self, lan: Lan, hosts: List[Host], work: str, password: str):
        self.password = password
        self.ns = lan.namespace("client")
        self.address = lan.add("client", 20)
        with open(HAPROXY_EXAMPLE) as fh:
            text = fh.read()
        servers = "".join(f"    server {h.name} {h.address}:5432 maxconn 100 check port 8008\n" for h in hosts)
        text = re.sub(r"(?m)^    server .*\n(?:    server .*\n)*", servers, text)
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
