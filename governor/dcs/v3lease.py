"""The etcd v3 adapter's lease (a mixin of Etcd3): one per member, TTL = ttl, carrying its member key
and, while it leads, the leader key; a keepalive per loop is the whole heartbeat."""
from __future__ import annotations

import logging
from typing import Any, Callable, Optional

from governor import clock
from governor.dcs.errors import DCSError
from governor.dcs.v3json import _dict, _int

log = logging.getLogger("governor.dcs.etcd3")


class Leases:
    cfg: Any
    _lease: Optional[str]
    _lease_sent: float
    _lease_answered: float
    _lease_ttl: int
    _lease_revision: int
    _lease_stale: bool

    _post: Callable[..., dict]      # Etcd3's request to the gateway

    def _grant(self, ttl: int) -> str:
        data = self._post("lease grant", "/lease/grant", {"TTL": str(ttl)})
        lease = data.get("ID")
        if not lease:
            raise DCSError(f"etcd granted no lease: {data}")
        return str(lease)

    def _member_lease(self) -> str:
        if self._lease is None or self._lease_stale:
            sent = clock.monotonic()
            self._lease = self._grant(self.cfg.ttl)
            self._lease_sent, self._lease_ttl, self._lease_revision = sent, self.cfg.ttl, 0
            self._lease_answered = clock.monotonic()
            self._lease_stale = False
        return self._lease

    def _keepalive(self) -> Optional[int]:
        """Extend our lease: etcd's revision when it answered (0 if it did not say), None when
        the lease had already expired (its keys are gone; the next touch grants a new one)."""
        if self._lease is None:
            return None
        sent = clock.monotonic()
        data = self._post("lease keepalive", "/lease/keepalive", {"ID": self._lease})
        result = _dict(data.get("result"))
        ttl = _int(result.get("TTL"))
        if ttl <= 0:
            log.warning("etcd lease %s had expired; its keys are gone", self._lease)
            self._lease = None
            return None
        revision = _int(_dict(result.get("header")).get("revision"))
        self._lease_sent, self._lease_ttl, self._lease_revision = sent, ttl, revision
        self._lease_answered = clock.monotonic()
        # ttl changed by a reload: the next touch writes the member key on a new lease (and the
        # next renewal moves the lock there); until then lock_expires counts this one's TTL.
        self._lease_stale = ttl != self.cfg.ttl
        return revision

    def _recent_keepalive(self) -> Optional[int]:
        """_keepalive, unless one was answered in the last ttl/10 seconds (at least 0.5): its
        revision then. The pass that read the cluster with a keepalive renews with it too. Counted
        from the answer, not the request, so that a slow etcd is not asked twice as much the slower
        it gets; the lock's deadline still counts from the send (shorter by at most ttl/10)."""
        window = max(0.5, self.cfg.ttl / 10.0)
        if self._lease is not None and clock.monotonic() - self._lease_answered <= window:
            return self._lease_revision
        return self._keepalive()

    def lock_expires(self, sent: float, ttl: float) -> float:
        """The lock lives on our lease: until the send time of its last extension + its TTL."""
        return min(sent + ttl, self._lease_sent + self._lease_ttl)
