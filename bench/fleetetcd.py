"""The etcd under bench/fleet.py: one member (harness.Etcd), or three (the tests' EtcdTrio), seen
the same way: the endpoints the members are given, etcd's own counters summed over the members
that answer, their processes, and one member stopped and started again."""
from __future__ import annotations

import base64
import json
import os
import urllib.request
from typing import Dict, List

from tests import harness
from tests.etcdtrio import EtcdTrio

COUNTERS = {"etcd_mvcc_put_total": "puts", "etcd_debugging_mvcc_watch_stream_total": "watch_streams",
            "process_cpu_seconds_total": "cpu_s", "etcd_network_client_grpc_received_bytes_total": "bytes_in",
            "etcd_network_client_grpc_sent_bytes_total": "bytes_out"}


def etcd_metrics(port: int) -> Dict[str, float]:
    """One member's own counters: requests served (the JSON gateway is gRPC inside), puts, open
    watch streams, its CPU seconds, client bytes."""
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as resp:
        text = resp.read().decode()
    out = {"requests": 0.0, "puts": 0.0, "watch_streams": 0.0, "cpu_s": 0.0, "bytes_in": 0.0, "bytes_out": 0.0}
    for line in text.splitlines():
        if line.startswith("grpc_server_handled_total{"):
            out["requests"] += float(line.rsplit(" ", 1)[1])
        elif line.split(" ", 1)[0] in COUNTERS:
            out[COUNTERS[line.split(" ", 1)[0]]] = float(line.rsplit(" ", 1)[1])
    return out


class FleetEtcd:
    """`members` etcd members (1 or 3). With three, the member stopped is the first: the one every
    governor asks first, so that all of them move to the others."""

    def __init__(self, base: str, members: int):
        self.members = members
        if members == 1:
            self.one = harness.Etcd(base)
        else:
            directory = os.path.join(base, "etcd3")
            os.makedirs(directory, exist_ok=True)
            self.trio = EtcdTrio(directory)

    def start(self) -> FleetEtcd:
        if self.members == 1:
            self.one.start()
        else:
            for i in range(3):
                self.trio.start(i)
            harness.wait_until(self.trio.healthy, 30, "a 3-member etcd")
        return self

    @property
    def endpoint(self) -> str:
        return self.one.endpoint if self.members == 1 else ",".join(self.trio.hosts)

    @property
    def harness_etcd(self) -> harness.Etcd:
        """For the real fleet's test clusters (one member only)."""
        return self.one

    def _ports(self) -> List[int]:
        return [self.one.port] if self.members == 1 else [client for client, _peer in self.trio.ports]

    def metrics(self) -> Dict[str, float]:
        total: Dict[str, float] = {}
        for port in self._ports():
            try:
                found = etcd_metrics(port)
            except OSError:
                continue      # the member that is down
            for key, value in found.items():
                total[key] = total.get(key, 0.0) + value
        return total

    def pids(self) -> List[int]:
        procs = [self.one.proc] if self.members == 1 else self.trio.procs
        return [p.pid for p in procs if p is not None and p.poll() is None]

    def stop_one(self) -> None:
        if self.members == 1:
            self.one.stop()
        else:
            self.trio.stop(0)

    def start_one(self) -> None:
        if self.members == 1:
            self.one.restart()
        else:
            self.trio.start(0)
            harness.wait_until(self.trio.healthy, 60, "the stopped etcd member back")

    def compact_ahead(self, writes: int = 100) -> int:
        """`writes` puts outside every scope (etcd's revision moves on; no member's watch sees
        them), then a compaction at the new revision: a watch that reconnects from the revision
        it last saw finds it compacted, and its member must read its scope afresh. Returns the
        revision compacted."""
        port = self._ports()[0] if self.members == 1 else self.trio.ports[1][0]   # a member left running
        revision = 0
        for i in range(writes):
            answer = _post(port, "/v3/kv/put", {"key": _b64(f"/bench-compact/{i}"), "value": _b64("x")})
            revision = int(answer["header"]["revision"])
        _post(port, "/v3/kv/compaction", {"revision": revision, "physical": True})
        return revision


def _b64(text: str) -> str:
    return base64.b64encode(text.encode()).decode()


def _post(port: int, path: str, body: dict) -> dict:
    request = urllib.request.Request(f"http://127.0.0.1:{port}{path}", data=json.dumps(body).encode(),
                                     headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=10) as resp:
        return json.load(resp)
