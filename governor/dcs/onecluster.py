"""The etcd endpoints a member is given must be one etcd cluster.

On Debian, `apt install etcd-server` starts a one-member etcd at once; an operator who then points
/etc/default/etcd at the others without wiping its data directory gets one-member etcds that all
report healthy. Members asking different endpoints would then each see their own leader lock:
two primaries. So every etcd v3 answer's cluster_id is compared with what the other endpoints
said, and every endpoint is asked (maintenance status: no credentials needed) when the adapter
first reads and every SWEEP_INTERVAL seconds after. Endpoints of two clusters make every etcd
operation fail with Split: the loop then treats etcd as unreachable (a primary demotes before
its lock could expire, nobody races or bootstraps) and says why, until they agree.
"""
from __future__ import annotations

from typing import Any, Callable, Dict, Optional, Tuple

from governor import clock
from governor.dcs.errors import DCSError

Endpoint = Tuple[str, int]
SWEEP_INTERVAL = 60.0


class Split(DCSError):
    """The endpoints answered from different etcd clusters."""


def cluster_id(answer: Any) -> Optional[str]:
    header = answer.get("header") if isinstance(answer, dict) else None
    value = header.get("cluster_id") if isinstance(header, dict) else None
    text = str(value) if isinstance(value, (str, int)) and not isinstance(value, bool) else ""
    return text if text.isdigit() and len(text) <= 20 else None


class OneCluster:
    def __init__(self, interval: float = SWEEP_INTERVAL):
        self.interval = interval
        self.seen: Dict[Endpoint, str] = {}
        self.swept: Optional[float] = None
        self.split: Optional[str] = None      # what is wrong, while the endpoints disagree

    @property
    def current(self) -> Optional[str]:
        """The etcd cluster id every endpoint answered with (None: none seen yet, or a split)."""
        ids = set(self.seen.values())
        return next(iter(ids)) if len(ids) == 1 else None

    def record(self, endpoint: Endpoint, answer: Any) -> None:
        """An answer from `endpoint`; raises Split while the endpoints seen disagree."""
        found = cluster_id(answer)
        if found is None:
            return
        self.seen[endpoint] = found
        if len(set(self.seen.values())) <= 1:
            self.split = None
            return
        self.split = ("etcd endpoints of different etcd clusters: " +
                      "; ".join(f"{h}:{p} is cluster {c}" for (h, p), c in sorted(self.seen.items())) +
                      ". Each would hold its own leader lock: not acting on either until they are one cluster "
                      "(etcdctl endpoint status --cluster shows each endpoint's cluster; an etcd member that "
                      "started alone keeps its own cluster until its data directory is emptied)")
        raise Split(self.split)

    def refuse_while_split(self) -> None:
        """Before any operation: nothing is written to either cluster while they disagree."""
        if self.split:
            raise Split(self.split)

    def sweep(self, endpoints: Tuple[Endpoint, ...], ask: Callable[[Endpoint], Any]) -> None:
        """When due (first, then every `interval` seconds): ask every endpoint for its cluster id
        (`ask` returns the answer, or raises when it does not answer: asked again next time).
        Raises Split while the endpoints seen disagree."""
        now = clock.monotonic()
        if self.swept is None or now - self.swept >= self.interval or self.split:
            self.swept = now
            for endpoint in endpoints:
                try:
                    answer = ask(endpoint)
                except Exception:  # noqa: BLE001 - an adapter's recording of a Split lands here too
                    continue
                try:
                    self.record(endpoint, answer)
                except Split:
                    pass
        if self.split:
            raise Split(self.split)
