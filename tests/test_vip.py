"""A virtual IP that follows the primary, moved by Debian's vip-manager watching governor's leader
key. Three members, each in a network namespace whose `eth0` sits on one bridge (one LAN), each
with its own vip-manager; the client, on the bridge from the test machine, knows only the VIP.
The address really moves: vip-manager adds it to the new leader's interface and announces it
with a gratuitous ARP. Through a switchover and a crash of the leader's host (governor,
PostgreSQL and vip-manager killed, its link down), the VIP is on at most one member at a time,
writes through it resume, and none acknowledged is lost.

Debian's vip-manager (1.0.2, in Debian 12 and 13) reads etcd's v2 API, so this cluster runs
with `etcd.api: 2` (README "A virtual IP with vip-manager")."""
from __future__ import annotations

import itertools
import os
import signal
import subprocess
import time
from typing import Dict, List

import pytest

from tests import harness
from tests.harness import wait_until
from tests.test_partition import NamespacedNode, set_ip_forward, sh

pytestmark = pytest.mark.integration
RUNS = itertools.count()


class VipLan:
    """A bridge with the test machine at .1, the members at .11-.13 and the VIP at .100."""

    def __init__(self, base_dir: str, src_dir: str):
        number = (os.getpid() + next(RUNS)) % 200 + 20
        self.net, self.bridge, self.tag = f"10.234.{number}", f"gvb{number}", number
        self.vip = f"{self.net}.100"
        self.namespaces: Dict[str, str] = {}
        self.links: Dict[str, str] = {}
        self.managers: Dict[str, subprocess.Popen] = {}
        sh("ip", "link", "add", self.bridge, "type", "bridge")
        sh("ip", "addr", "add", f"{self.net}.1/24", "dev", self.bridge)
        sh("ip", "link", "set", self.bridge, "up")
        self.etcd = harness.Etcd(os.path.join(base_dir, f"etcd-vip-{number}"))
        self.etcd.listen_all = True
        self.etcd.api = 2                   # the keyspace this cluster uses (etcd.api: 2)
        self.etcd.start()
        self.cluster = harness.TestCluster(self.etcd, base_dir, src_dir, f"vip{number}")
        self.log_dir = base_dir
        for i in (1, 2, 3):
            self._member(f"node{i}", 10 + i)

    def _member(self, name: str, host: int) -> None:
        ns, outer, inner = f"gvip{self.tag}-{name}", f"gvo{self.tag}{name[-1]}", f"gvi{self.tag}{name[-1]}"
        address = f"{self.net}.{host}"
        sh("ip", "netns", "add", ns)
        self.namespaces[name] = ns
        sh("ip", "link", "add", outer, "type", "veth", "peer", "name", inner)
        sh("ip", "link", "set", inner, "netns", ns)
        sh("ip", "link", "set", outer, "master", self.bridge)
        sh("ip", "link", "set", outer, "up")
        self.links[name] = outer
        for cmd in (["ip", "link", "set", inner, "name", "eth0"], ["ip", "addr", "add", f"{address}/24", "dev", "eth0"],
                    ["ip", "link", "set", "eth0", "up"], ["ip", "link", "set", "lo", "up"]):
            sh("ip", "netns", "exec", ns, *cmd)
        node = NamespacedNode(self.cluster, name, extra={
            "etcd": {"host": f"{self.net}.1:{self.etcd.port}", "api": 2},
            "restapi": {"listen": f"{address}:8008", **harness.API_CREDENTIALS},
            "metrics": {"listen": f"{address}:9547"},
            # PostgreSQL on every address, so also on the VIP when it arrives; the others reach it at its own
            "postgresql": {"listen": "0.0.0.0:5432", "connect_address": f"{address}:5432",
                           "replication": {"network": f"{self.net}.0/24"}}})
        node.ns = ns
        node.api_host, node.api_port, node.pg_host, node.port = address, 8008, address, 5432
        self.cluster.nodes[name] = node

    def start_manager(self, name: str) -> None:
        """vip-manager as its Debian unit runs it (README), for member `name`."""
        log = open(os.path.join(self.log_dir, f"vip-manager-{name}.log"), "ab")
        proc = subprocess.Popen(
            ["ip", "netns", "exec", self.namespaces[name], "vip-manager", f"--ip={self.vip}", "--netmask=24",
             "--interface=eth0", f"--trigger-key=/service/{self.cluster.scope}/leader", f"--trigger-value={name}",
             "--dcs-type=etcd", f"--dcs-endpoints=http://{self.net}.1:{self.etcd.port}"],
            stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        harness._processes.append(proc)
        self.managers[name] = proc

    def holders(self) -> List[str]:
        """The members whose eth0 carries the VIP right now."""
        found = []
        for name, ns in self.namespaces.items():
            shown = subprocess.run(["ip", "netns", "exec", ns, "ip", "-o", "-4", "addr", "show", "dev", "eth0"],
                                   capture_output=True, text=True).stdout
            if f" {self.vip}/" in shown:
                found.append(name)
        return found

    def crash_host(self, name: str) -> None:
        """Everything on the host dies at once and it drops off the LAN."""
        sh("ip", "link", "set", self.links[name], "down")
        self.managers[name].send_signal(signal.SIGKILL)
        self.cluster.nodes[name].crash()

    def dsn(self) -> str:
        return (f"host={self.vip} port=5432 dbname=postgres user=postgres password={harness.SUPERUSER_PASSWORD} "
                "connect_timeout=1")

    def teardown(self) -> None:
        self.cluster.teardown()
        for proc in self.managers.values():
            if proc.poll() is None:
                proc.kill()
                proc.wait(10)
        self.etcd.stop()
        for name, ns in self.namespaces.items():
            subprocess.run(["ip", "link", "del", self.links[name]], capture_output=True)
            subprocess.run(["ip", "netns", "del", ns], capture_output=True)
        subprocess.run(["ip", "link", "del", self.bridge], capture_output=True)


@pytest.fixture
def vip_lan(base_dir, src_dir):
    forward = set_ip_forward("1")
    lan = None
    try:
        lan = VipLan(base_dir, src_dir)
        yield lan
    finally:
        if lan is not None:
            lan.teardown()
        set_ip_forward(forward)


def test_the_vip_follows_the_primary_through_a_switchover_and_a_host_crash(vip_lan):
    lan, cluster = vip_lan, vip_lan.cluster
    for name, node in cluster.nodes.items():
        node.start()
        lan.start_manager(name)
    leader = cluster.wait_for_primary(120)
    cluster.wait_for_streaming([n for n in cluster.nodes if n != leader.name], 120)
    wait_until(lambda: lan.holders() == [leader.name], 20, "the VIP on the leader")
    leader.sql("CREATE TABLE through_vip (id int PRIMARY KEY)")
    watch = harness.PrimaryWatch(cluster)
    watch.start()
    client = harness.WriteClient(lan.dsn(), "through_vip", interval=0.05)
    client.start()
    try:
        time.sleep(2)
        assert client.acked_ids(), "no write through the VIP"
        target = next(n for n in cluster.nodes.values() if n is not leader)
        asked = time.monotonic()
        done = harness.governorctl(leader, "switchover", "--leader", leader.name, "--candidate", target.name,
                                   "--force")
        assert done.returncode == 0, done.stdout + done.stderr
        wait_until(lambda: lan.holders() == [target.name], 30, "the VIP to move to the new leader", interval=0.05)
        switchover_back = client.first_ack_after(asked + 0.5, 30)
        assert switchover_back is not None, "no write through the VIP after the switchover"
        time.sleep(2)
        switchover_gap = client.longest_gap(asked)

        crashed = time.monotonic()
        lan.crash_host(target.name)
        new = cluster.wait_for_primary(40)
        wait_until(lambda: [n for n in lan.holders() if n != target.name] == [new.name], 30,
                   "the VIP on the new leader", interval=0.05)
        failover_back = client.first_ack_after(crashed, 40)
        assert failover_back is not None, "no write through the VIP after the leader's host crashed"
        time.sleep(1)
    finally:
        client.stop()
        watch.stop()
    assert watch.two_primaries() == []
    stored = {row[0] for row in new.sql("SELECT id FROM through_vip")}
    lost = [i for i in client.acked_ids() if i not in stored]
    assert not lost, f"acknowledged writes lost: {lost[:10]}"
    print(f"VIP (vip-manager, {lan.vip}): switchover longest write gap {switchover_gap:.2f} s; leader host "
          f"crash: writes back after {failover_back - crashed:.1f} s (ttl 10)")
