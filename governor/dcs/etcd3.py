"""etcd v3 API adapter, over etcd's JSON gateway (`/v3/...`) with urllib3; same key layout as v2.

Each member holds one lease with TTL = ttl; its member key and, while it leads, the leader
key are attached to it, so a keepalive per loop is the whole heartbeat and a dead member's
keys vanish when the lease expires. The lock is taken by a transaction on
`create_revision == 0`; renewing checks, in a transaction, that the key still holds our name
(the keepalive extends it); releasing deletes it under the same comparison. Nothing another
node writes can be overwritten or removed by these.

etcd 3.4 serves the gateway at /v3/, 3.3 at /v3beta/, 3.2 at /v3alpha/: the first that answers
is used. Keys and values travel base64-encoded, 64-bit integers as strings. Every answer's
cluster id is checked against the other endpoints' (onecluster.py)."""
from __future__ import annotations

import http.client
import json
import logging
import threading
from typing import Any, Callable, Dict, List, Optional, Tuple

import urllib3

from governor import clock
from governor.cluster import Cluster
from governor.dcs.errors import DCSError, short_error
from governor.dcs.keys import build_cluster
from governor.dcs.onecluster import OneCluster
from governor.dcs.rotation import Endpoint, TryNext
from governor.dcs.store import KeyStore, encode
from governor.dcs.v2probe import refuse_scope_in_v2
from governor.dcs.v3cache import Item, KeyCache, WatchStream, parse_kv, stream_connection
from governor.dcs.v3json import (
    _b64,
    _dict,
    _int,
    _prefix_end,
    _unb64,
    created_cmp,
    delete_op,
    put_op,
    revision_cmp,
    value_cmp,
)
from governor.dcs.v3lease import Leases
from governor.settings import EtcdConfig

log = logging.getLogger(__name__)
GATEWAY_PREFIXES = ("/v3", "/v3beta", "/v3alpha")
WRITE_PATHS = ("/kv/txn", "/kv/put", "/kv/deleterange")


# Gateway answers of an etcd going away or overloaded, tried again within the budget like no answer:
# 408 gRPC Canceled ("the client connection is closing": a request in flight while etcd shuts
# down), 429 ResourceExhausted ("too many requests"), 503 Unavailable (no leader, raft timeout).
GOING_AWAY = (408, 429, 503)


class Unreachable(Exception):
    """This endpoint did not answer (try the next one)."""


class Refused(Exception):
    """etcd answered with an error that another endpoint would repeat."""


class Etcd3(Leases, KeyStore):
    API = 3

    def __init__(self, cfg: EtcdConfig, retry_timeout: float = 10,
                 transport: Optional[Callable[[Tuple[str, int], str, dict, float], Tuple[int, dict]]] = None):
        self._init_rotation(cfg, retry_timeout)
        self.transport = transport        # None: HTTP (_send)
        self.prefix = f"/service/{cfg.scope}/"
        kw: Dict[str, Any] = {"retries": False, "maxsize": 2}
        if cfg.protocol == "https":
            # Always verified: against etcd.cacert, or the system's CAs without one.
            kw.update(cert_reqs="CERT_REQUIRED", ca_certs=cfg.cacert, cert_file=cfg.cert, key_file=cfg.key)
        self.http = urllib3.PoolManager(**kw)
        self._gateway: Optional[str] = None
        self._token: Optional[str] = None
        self._lease: Optional[str] = None
        self._lease_sent, self._lease_answered = 0.0, float("-inf")    # last grant or keepalive: sent, answered
        self._lease_ttl = 0
        self._lease_revision = 0          # etcd's revision in that keepalive's answer
        self._lease_stale = False         # granted with a ttl the configuration no longer has
        self.cache = KeyCache()
        # etcd's revision after our own newest write: a keepalive answered by a follower carries
        # that follower's revision, which may predate it; the cache must at least hold our writes.
        self._written_revision = 0
        self.stream: Optional[WatchStream] = None
        self._watch_endpoint: Optional[int] = None    # index in cfg.hosts the watch streams from
        self._claim_revision: Optional[int] = None
        self._member_written: Optional[Tuple[str, str, str]] = None   # (name, value, lease) last put
        self.duplicate_owner: Optional[str] = None   # another lease that wrote our member key
        self._v2_ruled_out = cfg.api == 3             # etcd.api set: no look at the v2 keyspace
        self.clusters = OneCluster()                  # every endpoint one etcd cluster (onecluster.py)

    # ------------------------------------------------------------------ plumbing

    def _url(self, endpoint: Tuple[str, int], path: str) -> str:
        host = f"[{endpoint[0]}]" if ":" in endpoint[0] else endpoint[0]
        return f"{self.cfg.protocol}://{host}:{endpoint[1]}{self._gateway or '/v3'}{path}"

    def _send(self, endpoint: Tuple[str, int], path: str, body: dict, timeout: float) -> Tuple[int, dict]:
        """One request to the gateway: its HTTP status and JSON answer ({} when it is not JSON);
        Unreachable when none came. The transport (urllib3); the simulator passes its own."""
        headers = {"Content-Type": "application/json"}
        if self._token:
            headers["Authorization"] = self._token
        try:
            resp = self.http.request("POST", self._url(endpoint, path), body=json.dumps(body).encode(),
                                     headers=headers, timeout=urllib3.Timeout(connect=timeout, read=timeout))
        except (urllib3.exceptions.HTTPError, OSError) as exc:
            raise Unreachable(short_error(exc)) from exc
        try:
            data = json.loads(resp.data or b"{}")
        except ValueError:
            data = {}
        return resp.status, data if isinstance(data, dict) else {}

    def _raw_post(self, endpoint: Tuple[str, int], path: str, body: dict, timeout: float) -> dict:
        status, data = (self.transport or self._send)(endpoint, path, body, timeout)
        if status == 404 and not data.get("error") and not data.get("message"):
            raise LookupError(path)
        if status >= 500 and status != 503:
            raise Unreachable(f"HTTP {status}")
        if status >= 400 or "error" in data and "result" not in data:
            message = data.get("message") or data.get("error") or f"HTTP {status}"
            if status in GOING_AWAY or "no leader" in str(message):
                raise Unreachable(str(message))
            raise Refused(str(message))
        self.clusters.record(endpoint, data)     # raises Split (a DCSError) while the endpoints disagree
        return data

    def _detect_gateway(self, endpoint: Tuple[str, int], timeout: float) -> None:
        for prefix in GATEWAY_PREFIXES:
            self._gateway = prefix
            try:
                self._raw_post(endpoint, "/kv/range", {"key": _b64(self.prefix), "limit": 1}, timeout)
                return
            except LookupError:
                continue
            except Refused:
                return   # an etcd error (e.g. authentication needed) still proves the gateway is there
        self._gateway = None
        raise Refused("this etcd serves no v3 JSON gateway (/v3, /v3beta, /v3alpha)")

    def _authenticate(self, endpoint: Tuple[str, int], timeout: float) -> None:
        self._token = None
        try:
            data = self._raw_post(endpoint, "/auth/authenticate",
                                  {"name": self.cfg.username, "password": self.cfg.password or ""}, timeout)
        except Refused as exc:
            raise Refused(f"authentication as {self.cfg.username!r} failed: {exc}") from exc
        self._token = data.get("token")

    def _post(self, what: str, path: str, body: dict, budget: Optional[float] = None) -> dict:
        reauthenticated = [False]

        def ask(endpoint: Endpoint, deadline: float) -> dict:
            self.clusters.refuse_while_split()
            while True:
                timeout = max(0.1, min(self.request_timeout, deadline - clock.monotonic()))
                try:
                    if self._gateway is None:
                        self._detect_gateway(endpoint, timeout)
                    if self.cfg.username and self._token is None:
                        self._authenticate(endpoint, timeout)
                    return self._raw_post(endpoint, path, body, timeout)
                except Unreachable as exc:
                    raise TryNext(str(exc)) from exc
                except LookupError as exc:
                    raise DCSError(f"etcd refused {what}: no such API endpoint {exc}") from exc
                except Refused as exc:
                    text = str(exc)
                    if self.cfg.username and not reauthenticated[0] and "token" in text:
                        self._token, reauthenticated[0] = None, True   # expired token: log in again once
                        continue
                    raise DCSError(f"etcd refused {what}: {text}") from exc

        result = self._first_answer(what, budget, ask)
        if path in WRITE_PATHS:
            revision = _int(_dict(result.get("header")).get("revision"))
            self._written_revision = max(self._written_revision, revision)
        return result

    def _txn(self, what: str, compare: List[dict], success: List[dict], failure: Optional[List[dict]] = None) -> dict:
        return self._post(what, "/kv/txn", {"compare": compare, "success": success, "failure": failure or []})

    # Transaction operations and comparisons (v3json.py).
    _put, _delete, _created = staticmethod(put_op), staticmethod(delete_op), staticmethod(created_cmp)
    _value_is, _revision_is = staticmethod(value_cmp), staticmethod(revision_cmp)

    def _cas(self, what: str, key: str, index: int, success: dict) -> bool:
        """A write that happens only if `key` is still at `index` (0: only if it does not exist)."""
        compare = self._revision_is(key, index) if index else self._created(key)
        return bool(self._txn(what, [compare], [success]).get("succeeded"))

    def _get_value(self, what: str, key: str) -> Optional[Tuple[Optional[str], int]]:
        kvs = self._post(what, "/kv/range", {"key": _b64(key)}).get("kvs")
        if not isinstance(kvs, list) or not kvs or not isinstance(kvs[0], dict):
            return None
        return _unb64(kvs[0].get("value")), _int(kvs[0].get("mod_revision"))

    def _put_value(self, what: str, key: str, body: str, version: Optional[int] = None) -> bool:
        if version is not None:
            return self._cas(what, key, version, self._put(key, body))
        self._post(what, "/kv/put", {"key": _b64(key), "value": _b64(body)})
        return True

    def _delete_value(self, what: str, key: str, version: Optional[int] = None) -> bool:
        if version is None:
            self._post(what, "/kv/deleterange", {"key": _b64(key)})
            return True
        return bool(self._txn(what, [self._revision_is(key, version)], [self._delete(key)]).get("succeeded"))

    # ------------------------------------------------------------------ reads

    def get_cluster(self) -> Cluster:
        """The scope as etcd holds it now. With a lease and a live watch this is the keepalive
        alone: its answer carries etcd's current revision, and a cache that has every change up
        to it is what a read would return. Otherwise (or when the cache lags) a range read."""
        self.clusters.sweep(self.cfg.hosts, lambda e: self._raw_post(e, "/maintenance/status", {}, 2.0))
        revision = (self._keepalive() or 0) if self._lease is not None else 0
        cached = self._current_cache(revision)
        if cached is not None:
            items, problems, revision = cached
        else:
            items, problems, revision = self._read_scope()
            missed = self.cache.reset(items, problems, revision)
            if missed and self.stream is not None:
                self.stream.read_found_change(missed)
        if self._watch_endpoint is not None and self._watch_endpoint != self._current and self.stream is not None:
            # Our requests moved to another endpoint (the one the watch streams from stopped
            # answering, perhaps without closing anything): the watch follows at once.
            self._watch_endpoint = None
            self.stream.restart()
        entries = [i.entry for i in items]
        if self._member_written:
            own = f"members/{self._member_written[0]}"
            mine = [i for i in items if i.entry.key == own]
            if mine:
                self._check_own_member_key(mine[0].entry.value, mine[0].lease)
            else:
                self._member_written = None   # our member key is gone (deleted by hand?): the next touch writes it
        cluster = build_cluster(entries, revision, problems)
        if cluster.initialize is None and not self._v2_ruled_out:
            self._refuse_scope_in_v2()
        return cluster

    def _refuse_scope_in_v2(self) -> None:
        refuse_scope_in_v2(self.cfg, self.http, self.cfg.hosts[self._current % len(self.cfg.hosts)], self.prefix,
                           self.request_timeout)
        self._v2_ruled_out = True

    def _current_cache(self, revision: int) -> Optional[Tuple[List[Item], List[str], int]]:
        if self.stream is None or revision <= 0:
            return None
        return self.cache.current(max(revision, self._written_revision))

    def _read_scope(self) -> Tuple[List[Item], List[str], int]:
        data = self._post("read of the cluster", "/kv/range",
                          {"key": _b64(self.prefix), "range_end": _prefix_end(self.prefix)})
        items, problems = [], []
        kvs = data.get("kvs")
        for kv in kvs if isinstance(kvs, list) else ():
            item, problem = parse_kv(kv, self.prefix)
            if problem:
                problems.append(problem)
            if item is not None:
                items.append(item)
        return items, problems, _int(_dict(data.get("header")).get("revision"))

    def keep_watching(self, wake: threading.Event) -> bool:
        """One long-lived watch for this adapter's life, feeding the cache get_cluster reads."""
        if self.stream is None:
            self.stream = WatchStream(self.cache, self.prefix, wake, self._watch_connection)
            self.stream.start()
        return True

    def _watch_connection(self, timeout: float) -> Tuple[http.client.HTTPConnection, str, Dict[str, str]]:
        if self._gateway is None:
            raise OSError("no etcd answered yet")
        self._watch_endpoint = self._current
        host, port = self.cfg.hosts[self._current % len(self.cfg.hosts)]
        headers = {"Content-Type": "application/json"}
        if self._token:
            headers["Authorization"] = self._token
        return self._stream_connection(host, port, timeout), f"{self._gateway}/watch", headers

    def _check_own_member_key(self, value: Optional[str], lease: str) -> None:
        """Our member key as read back: when it is not what we last wrote on our lease, write it
        again on the next touch; when another lease wrote it, another governor uses our name."""
        name, body, our_lease = self._member_written or ("", "", "")
        if value == body and lease == our_lease:
            return
        self._member_written = None
        if lease and lease != our_lease and lease != "0" and lease != self.duplicate_owner:
            self.duplicate_owner = lease
            log.error("member key members/%s was written by another etcd lease (%s, ours is %s): another governor "
                      "runs with postgresql.name %s; give every member its own name", name, lease, our_lease, name)

    def _stream_connection(self, host: str, port: int, timeout: float) -> http.client.HTTPConnection:
        return stream_connection(self.cfg, host, port, timeout)

    # ------------------------------------------------------------------ writes

    def claim_initialize(self, value: str = "") -> bool:
        if not self._v2_ruled_out:
            self._refuse_scope_in_v2()
        key = self._key("initialize")
        data = self._txn("claim of initialize", [self._created(key)], [self._put(key, value)])
        if data.get("succeeded"):
            self._claim_revision = int(data["header"]["revision"])
            return True
        return False

    def set_initialize(self, sysid: str) -> None:
        key = self._key("initialize")
        if not self._cas("write of initialize", key, self._claim_revision or -1, self._put(key, sysid)):
            raise DCSError("the initialize key changed under our claim")

    def cancel_initialize(self) -> None:
        if self._claim_revision is not None:
            key = self._key("initialize")
            self._txn("delete of initialize", [self._revision_is(key, self._claim_revision)], [self._delete(key)])

    def acquire_leader(self, name: str) -> bool:
        key = self._key("leader")
        self._recent_keepalive()     # the lock lives on the lease: extended now, not a loop ago
        lease = self._member_lease()
        data = self._txn("leader lock acquisition", [self._created(key)], [self._put(key, name, lease)])
        return bool(data.get("succeeded"))

    def renew_leader(self, name: str) -> bool:
        """The keepalive extends the lock. When the cache is current at the keepalive's revision
        and shows the lock ours on this lease, that is the whole renewal; otherwise a transaction
        checks the holder's name (and moves the lock onto this lease if needed)."""
        had_lease = self._lease is not None
        revision = self._recent_keepalive()
        if had_lease and revision is None:
            return False          # our lease expired: the leader key went with it
        lease = self._member_lease()
        key = self._key("leader")
        cached = self._current_cache(revision or 0)
        if cached is not None:
            held = [i for i in cached[0] if i.entry.key == "leader"]
            if held and held[0].entry.value == name and held[0].lease == lease:
                return True
        data = self._txn("leader lock renewal", [self._value_is(key, name)], [{"request_range": {"key": _b64(key)}}])
        if not data.get("succeeded"):
            return False
        responses = data.get("responses") or [{}]
        kv = ((responses[0].get("response_range") or {}).get("kvs") or [{}])[0]
        if str(kv.get("lease") or "") == lease:
            return True
        # Still ours by name but on another lease: the one of the governor that ran before this
        # process (a package upgrade leaves the lock in place). Move it onto ours while it lives.
        revision = int(kv.get("mod_revision") or 0)
        moved = self._txn("leader lock renewal", [self._value_is(key, name), self._revision_is(key, revision)],
                          [self._put(key, name, lease)])
        return bool(moved.get("succeeded"))

    def release_leader(self, name: str) -> bool:
        key = self._key("leader")
        data = self._txn("leader lock release", [self._value_is(key, name)], [self._delete(key)])
        return bool(data.get("succeeded"))

    def touch_member(self, name: str, data: dict) -> None:
        """Keep our lease alive (skipped right after renew_leader did) and write the member key
        on it. An expired lease is replaced."""
        self._recent_keepalive()
        lease = self._member_lease()
        body = encode(data)
        if self._member_written == (name, body, lease):
            return   # unchanged and on a live lease: the keepalive was the whole heartbeat
        self._post("member update", "/kv/put", {"key": _b64(self._key(f"members/{name}")), "value": _b64(body),
                                                "lease": lease})
        self._member_written = (name, body, lease)

    def delete_member(self, name: str) -> None:
        self._member_written = None
        self._delete_value("member delete", self._key(f"members/{name}"))

    def request_switchover(self, data: dict) -> bool:
        key = self._key("failover")
        lease = self._grant(self._switchover_ttl(data))
        result = self._txn("switchover request", [self._created(key)], [self._put(key, json.dumps(data), lease)])
        return bool(result.get("succeeded"))

    def set_failsafe(self, holder: str, value: Optional[str]) -> bool:
        """Write (None: delete) the failsafe list, only while `holder` holds the lock."""
        key, change = self._key("failsafe"), self._put(self._key("failsafe"), value) if value else None
        data = self._txn("failsafe list update", [self._value_is(self._key("leader"), holder)],
                         [change or self._delete(key)])
        return bool(data.get("succeeded"))

    def remove_cluster(self) -> None:
        self._post("removal of the cluster", "/kv/deleterange",
                   {"key": _b64(self.prefix), "range_end": _prefix_end(self.prefix)})

    def close(self) -> None:
        """Drop connections and stop the watch. The lease is not revoked: on a restart for a
        package upgrade the lock and member key must outlive this process until the next one
        takes them over."""
        if self.stream is not None:
            self.stream.stop()
        self.http.clear()


