"""etcd as the simulated members' real v3 adapter (governor/dcs/etcd3.py) meets it: the JSON
gateway's requests answered from an in-memory store with etcd's semantics. Revisions, leases that
expire `TTL` after their last grant or keepalive (and take their keys with them), transactions with
compare / success / failure, ranges by prefix. Time is the world's; a request counts as sent at its
member's own clock, converted to the world's (sim/world.py).

What is not modelled: auth, compaction, the watch stream (a watching member is woken by the world
instead, for the keys the real `keys.wakes` names) and several etcd members (one endpoint)."""
from __future__ import annotations

import base64
from dataclasses import dataclass
from typing import Callable, Dict, List, Optional, Tuple

CLUSTER_ID = "14841639068965178418"


def b64(text: str) -> str:
    return base64.b64encode(text.encode()).decode()


def unb64(text: Optional[str]) -> str:
    return base64.b64decode(text or "").decode()


@dataclass
class KV:
    value: str
    create_revision: int
    mod_revision: int
    version: int
    lease: int


class EtcdModel:
    """One etcd cluster. `changed(key, before, after)` is called after every change of a key."""

    def __init__(self, changed: Optional[Callable[[str, Optional[str], Optional[str]], None]] = None):
        self.kvs: Dict[str, KV] = {}
        self.leases: Dict[int, Tuple[int, float]] = {}     # id -> (TTL, expiry in world time)
        self.revision = 1
        self.next_lease = 7000
        self.now = 0.0
        self.changed = changed or (lambda key, before, after: None)

    # ------------------------------------------------------------------ time

    def expire(self, now: float) -> None:
        """Leases whose time is up are revoked, with their keys."""
        self.now = max(self.now, now)
        for lease in [i for i, (_ttl, until) in self.leases.items() if until <= self.now]:
            self._revoke(lease)

    def _revoke(self, lease: int) -> None:
        self.leases.pop(lease, None)
        doomed = [k for k, kv in self.kvs.items() if kv.lease == lease]
        if doomed:
            self.revision += 1
            for key in doomed:
                self._delete(key)

    # ------------------------------------------------------------------ primitives

    def _put(self, key: str, value: str, lease: int) -> None:
        old = self.kvs.get(key)
        self.kvs[key] = KV(value, old.create_revision if old else self.revision, self.revision,
                           old.version + 1 if old else 1, lease)
        self.changed(key, old.value if old else None, value)

    def _delete(self, key: str) -> None:
        old = self.kvs.pop(key, None)
        if old is not None:
            self.changed(key, old.value, None)

    def _range(self, key: str, end: Optional[str]) -> List[str]:
        if end is None:
            return [key] if key in self.kvs else []
        return sorted(k for k in self.kvs if key <= k < end)

    def _kv(self, key: str) -> dict:
        kv = self.kvs[key]
        return {"key": b64(key), "value": b64(kv.value), "create_revision": str(kv.create_revision),
                "mod_revision": str(kv.mod_revision), "version": str(kv.version), "lease": str(kv.lease)}

    def _header(self) -> dict:
        return {"cluster_id": CLUSTER_ID, "member_id": "1", "revision": str(self.revision), "raft_term": "2"}

    # ------------------------------------------------------------------ the gateway

    def request(self, path: str, body: dict, sent: float) -> Tuple[int, dict]:
        """One gateway request, at world time `sent` (a lease granted or kept alive by it lives
        from then). (HTTP status, answer)."""
        self.expire(sent)
        if path == "/maintenance/status":
            return 200, {"header": self._header(), "version": "3.5.0"}
        if path == "/kv/range":
            return 200, self._op_range(body)
        if path == "/kv/put":
            error = self._check_lease(body.get("lease"))
            if error:
                return 400, error
            self.revision += 1
            self._put(unb64(body["key"]), unb64(body.get("value")), int(body.get("lease") or 0))
            return 200, {"header": self._header()}
        if path == "/kv/deleterange":
            keys = self._range(unb64(body["key"]), unb64(body["range_end"]) if "range_end" in body else None)
            if keys:
                self.revision += 1
                for key in keys:
                    self._delete(key)
            return 200, {"header": self._header(), "deleted": str(len(keys))}
        if path == "/kv/txn":
            return self._txn(body)
        if path == "/lease/grant":
            ttl = int(body["TTL"])
            self.next_lease += 1
            self.leases[self.next_lease] = (ttl, sent + ttl)
            return 200, {"header": self._header(), "ID": str(self.next_lease), "TTL": str(ttl)}
        if path == "/lease/keepalive":
            lease = int(body["ID"])
            if lease not in self.leases:
                return 200, {"result": {"header": self._header(), "ID": str(lease)}}
            ttl = self.leases[lease][0]
            self.leases[lease] = (ttl, sent + ttl)
            return 200, {"result": {"header": self._header(), "ID": str(lease), "TTL": str(ttl)}}
        if path == "/lease/revoke":
            self._revoke(int(body["ID"]))
            return 200, {"header": self._header()}
        return 404, {}

    def _check_lease(self, lease: Optional[str]) -> Optional[dict]:
        if lease and int(lease) not in self.leases:
            return {"error": "etcdserver: requested lease not found", "code": 5, "message": "requested lease not found"}
        return None

    def _op_range(self, body: dict) -> dict:
        keys = self._range(unb64(body["key"]), unb64(body["range_end"]) if "range_end" in body else None)
        limit = int(body.get("limit") or 0)
        shown = keys[:limit] if limit else keys
        answer = {"header": self._header(), "count": str(len(keys))}
        if shown:
            answer["kvs"] = [self._kv(k) for k in shown]
        return answer

    def _compare(self, cmp: dict) -> bool:
        kv = self.kvs.get(unb64(cmp["key"]))
        target = cmp["target"]
        if target == "CREATE":
            have, want = (kv.create_revision if kv else 0), int(cmp.get("create_revision") or 0)
        elif target == "MOD":
            have, want = (kv.mod_revision if kv else 0), int(cmp.get("mod_revision") or 0)
        elif target == "VALUE":
            if kv is None:
                return False
            have, want = kv.value, unb64(cmp.get("value"))
        else:
            raise ValueError(f"compare target {target} is not modelled")
        assert cmp.get("result", "EQUAL") == "EQUAL", cmp
        return have == want

    def _txn(self, body: dict) -> Tuple[int, dict]:
        succeeded = all(self._compare(c) for c in body.get("compare") or [])
        ops = body.get("success" if succeeded else "failure") or []
        for op in ops:
            if "request_put" in op:
                error = self._check_lease(op["request_put"].get("lease"))
                if error:
                    return 400, error
        writes = any("request_put" in op or "request_delete_range" in op for op in ops)
        if writes:
            self.revision += 1
        responses = []
        for op in ops:
            if "request_put" in op:
                put = op["request_put"]
                self._put(unb64(put["key"]), unb64(put.get("value")), int(put.get("lease") or 0))
                responses.append({"response_put": {"header": self._header()}})
            elif "request_delete_range" in op:
                rq = op["request_delete_range"]
                keys = self._range(unb64(rq["key"]), unb64(rq["range_end"]) if "range_end" in rq else None)
                for key in keys:
                    self._delete(key)
                responses.append({"response_delete_range": {"header": self._header(), "deleted": str(len(keys))}})
            elif "request_range" in op:
                responses.append({"response_range": self._op_range(op["request_range"])})
        answer = {"header": self._header(), "responses": responses}
        if succeeded:
            answer["succeeded"] = True
        return 200, answer

    # ------------------------------------------------------------------ what the world looks at

    def get(self, key: str) -> Optional[str]:
        self.expire(self.now)
        kv = self.kvs.get(key)
        return kv.value if kv else None
