"""Three etcd members on loopback, each started and killed on its own: the tests' and the
benches' 3-member etcd (tests/test_failsafe.py, bench/hiccups.py, bench/fleet.py)."""
from __future__ import annotations

import os
import signal
import subprocess
from typing import List, Optional

from tests import harness


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
