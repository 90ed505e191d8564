"""etcd v2 API adapter (python-etcd), keys under /service/<scope>/.

Several endpoints are tried in turn; the one that answered last is asked first next time.
Each operation gives up after `retry_timeout` seconds in total and raises DCSError.
"""
from __future__ import annotations

import json
import logging
import threading
from typing import Callable, Dict, Optional, Tuple, TypeVar

import etcd
import urllib3

from governor import clock
from governor.cluster import Cluster
from governor.dcs.errors import DCSError, short_error
from governor.dcs.keys import Entry, build_cluster, wakes
from governor.dcs.onecluster import OneCluster
from governor.dcs.rotation import Endpoint, TryNext
from governor.dcs.store import KeyStore, encode
from governor.settings import EtcdConfig

log = logging.getLogger(__name__)
T = TypeVar("T")


def _standard_tls() -> None:
    """python-etcd, when imported, switches every urllib3 connection of the process (the v3
    adapter's too) to pyOpenSSL, for SNI on Pythons that lacked it. Through pyOpenSSL, checking
    an etcd certificate's host names needs the idna module, which nothing installs: TLS to etcd
    then fails with ModuleNotFoundError. The standard ssl module does SNI and hostname checks
    itself: switch back to it."""
    try:
        from urllib3.contrib import pyopenssl
    except ImportError:
        return
    pyopenssl.extract_from_urllib3()


_standard_tls()
WATCH_SPAN = 30.0     # seconds one waitIndex request may wait (the loop reads at least that often)

# Errors that mean "this endpoint did not answer", as opposed to a logical answer (key exists...).
_CONNECTION_ERRORS = (etcd.EtcdConnectionFailed, urllib3.exceptions.HTTPError, OSError,
                      etcd.EtcdLeaderElectionInProgress, etcd.EtcdClusterIdChanged)


def _event_wakes(event: etcd.EtcdResult, key: str) -> bool:
    """A v2 watch event as keys.wakes sees it. v2 renews a TTL by writing the same value again:
    that is no change, so only a new value, a new key or a deleted/expired one counts."""
    action = str(getattr(event, "action", "") or "")
    previous = getattr(event, "_prev_node", None)
    before = None if action == "create" or previous is None else getattr(previous, "value", None)
    if action in ("delete", "expire", "compareAndDelete"):
        return wakes(key, before, None)
    value = getattr(event, "value", None)
    if before is not None and before == value:
        return False
    return wakes(key, before, value)


class Etcd2(KeyStore):
    API = 2

    def __init__(self, cfg: EtcdConfig, retry_timeout: float = 10):
        self._init_rotation(cfg, retry_timeout)
        self.prefix = f"/service/{cfg.scope}"
        self._clients: Dict[Tuple[str, int], etcd.Client] = {}
        self.clusters = OneCluster()     # every endpoint one etcd cluster (onecluster.py)
        self._claim_index: Optional[int] = None  # modifiedIndex of our `initialize` claim
        self.read_index = 0                      # etcd's index at the newest read of the scope
        self._watcher: Optional[V2Watcher] = None

    # ------------------------------------------------------------------ plumbing

    def _client(self, endpoint: Tuple[str, int]) -> etcd.Client:
        client = self._clients.get(endpoint)
        if client is None:
            cert = (self.cfg.cert, self.cfg.key) if self.cfg.cert and self.cfg.key else self.cfg.cert
            client = etcd.Client(host=endpoint[0], port=endpoint[1], protocol=self.cfg.protocol,
                                 read_timeout=self.request_timeout, cert=cert, ca_cert=self.cfg.cacert,
                                 username=self.cfg.username, password=self.cfg.password,
                                 allow_reconnect=False)
            # urllib3 retries a timed-out request three times by default, which would multiply
            # the time budget; governor moves to the next endpoint itself.
            client.http.connection_pool_kw["retries"] = urllib3.util.Retry(total=0, redirect=0)
            self._clients[endpoint] = client
        return client

    def _call(self, what: str, op: Callable[[etcd.Client], T], budget: Optional[float] = None) -> T:
        """Run `op` against the endpoints in turn until one answers or the budget is spent."""
        def ask(endpoint: Endpoint, _deadline: float) -> T:
            self.clusters.refuse_while_split()
            try:
                result = op(self._client(endpoint))
                self._seen_cluster(endpoint)
                return result
            except _CONNECTION_ERRORS as exc:
                raise TryNext(short_error(exc)) from exc
            except etcd.EtcdInsufficientPermissions as exc:
                raise DCSError(f"etcd refused {what}: permission denied ({short_error(exc)})") from exc
            except etcd.EtcdException as exc:
                if "404 page not found" in str(exc):
                    raise DCSError(f"etcd at {endpoint[0]}:{endpoint[1]} does not serve the v2 API (etcd 3.4 and 3.5 "
                                   "serve it only when started with --enable-v2=true, 3.6 not at all): set etcd.api: "
                                   "3") from exc
                raise DCSError(f"etcd refused {what}: {short_error(exc)}") from exc
        return self._first_answer(what, budget, ask)

    def _get_value(self, what: str, key: str) -> Optional[Tuple[Optional[str], int]]:
        def op(client: etcd.Client) -> Optional[Tuple[Optional[str], int]]:
            try:
                node = client.read(key)
            except etcd.EtcdKeyNotFound:
                return None
            return node.value, node.modifiedIndex or 0

        return self._call(what, op)

    def _put_value(self, what: str, key: str, body: str, version: Optional[int] = None) -> bool:
        compare = {} if version is None else {"prevIndex": version} if version else {"prevExist": False}

        def op(client: etcd.Client) -> bool:
            try:
                client.write(key, body, **compare)
                return True
            except (etcd.EtcdAlreadyExist, etcd.EtcdCompareFailed, etcd.EtcdKeyNotFound):
                return False

        return self._call(what, op)

    def _delete_value(self, what: str, key: str, version: Optional[int] = None) -> bool:
        def op(client: etcd.Client) -> bool:
            try:
                client.delete(key, **({} if version is None else {"prevIndex": version}))
                return True
            except (etcd.EtcdCompareFailed, etcd.EtcdKeyNotFound):
                return version is None

        return self._call(what, op)

    # ------------------------------------------------------------------ reads

    def _seen_cluster(self, endpoint: Tuple[str, int]) -> dict:
        """The cluster id (X-Etcd-Cluster-Id, hex) of the endpoint's last answer, compared with the
        others'; raises Split (a DCSError) while they disagree."""
        found = getattr(self._clients.get(endpoint), "expected_cluster_id", None)
        answer = {"header": {"cluster_id": str(int(found, 16))}} if isinstance(found, str) and found.isalnum() \
            and all(c in "0123456789abcdefABCDEF" for c in found) else {}
        self.clusters.record(endpoint, answer)
        return answer

    def _ask_cluster(self, endpoint: Tuple[str, int]) -> dict:
        try:
            self._client(endpoint).read(self.prefix)
        except etcd.EtcdKeyNotFound:
            pass                     # an answer all the same, with its cluster id
        return self._seen_cluster(endpoint)

    def get_cluster(self) -> Cluster:
        self.clusters.sweep(self.cfg.hosts, self._ask_cluster)

        def read(client: etcd.Client) -> Optional[etcd.EtcdResult]:
            try:
                return client.read(self.prefix, recursive=True)
            except etcd.EtcdKeyNotFound:
                return None

        result = self._call("read of the cluster", read)
        if result is None:
            return Cluster(initialize=None, leader=None)
        entries = [Entry(node.key[len(self.prefix) + 1:], node.value, node.modifiedIndex or 0, node.ttl)
                   for node in result.leaves if not node.dir and node.key is not None]
        self.read_index = max(self.read_index, getattr(result, "etcd_index", 0) or 0)
        return build_cluster(entries, getattr(result, "etcd_index", 0) or 0)

    def keep_watching(self, wake: threading.Event) -> bool:
        """A thread (with its own client) that waits on etcd from the newest index this adapter
        has read, and wakes the loop on a change it acts on."""
        if self._watcher is None:
            self._watcher = V2Watcher(Etcd2(self.cfg, self.retry_timeout), lambda: self.read_index, wake)
            self._watcher.start()
        return True

    def wait_for_change(self, index: int, timeout: float) -> Tuple[bool, int]:
        """v2 has no stream: one waitIndex request per event, resumed after an event that does
        not wake (keys.wakes), until one does or `timeout` passes. Returns whether a change
        wakes, and the index to wait from next."""
        if timeout <= 0:
            return False, index
        deadline = clock.monotonic() + timeout
        client = self._client(self.cfg.hosts[self._current % len(self.cfg.hosts)])
        prefix = self._key("")
        try:
            while True:
                left = deadline - clock.monotonic()
                if left <= 0:
                    return False, index
                event = client.read(prefix.rstrip("/"), wait=True, recursive=True, waitIndex=index + 1,
                                    timeout=left)
                key = str(getattr(event, "key", "") or "")
                modified = getattr(event, "modifiedIndex", None)
                if not isinstance(modified, int) or modified <= index or not key.startswith(prefix):
                    return True, index      # an event that makes no sense: read again
                index = modified
                if _event_wakes(event, key[len(prefix):]):
                    return True, index
        except etcd.EtcdWatchTimedOut:
            return False, index
        except etcd.EtcdEventIndexCleared:
            return True, 0                  # history gone: wait again from the loop's next read
        except (etcd.EtcdException, urllib3.exceptions.HTTPError, OSError) as exc:
            # The loop re-reads on its next pass; do not spin on a dead endpoint.
            log.debug("watch on the scope ended: %s", short_error(exc))
            clock.sleep(min(timeout, 1.0))
            return False, index


    # ------------------------------------------------------------------ writes

    def claim_initialize(self, value: str = "") -> bool:
        def op(client: etcd.Client) -> bool:
            try:
                result = client.write(self._key("initialize"), value, prevExist=False)
                self._claim_index = result.modifiedIndex
                return True
            except etcd.EtcdAlreadyExist:
                return False

        return self._call("claim of initialize", op)

    def set_initialize(self, sysid: str) -> None:
        # Compare on the index of our own claim: nobody else's value can be overwritten.
        self._call("write of initialize",
                   lambda c: c.write(self._key("initialize"), sysid, prevIndex=self._claim_index))

    def cancel_initialize(self) -> None:
        def op(client: etcd.Client) -> None:
            try:
                client.delete(self._key("initialize"), prevIndex=self._claim_index)
            except (etcd.EtcdKeyNotFound, etcd.EtcdCompareFailed):
                pass

        if self._claim_index is not None:
            self._call("delete of initialize", op)

    def acquire_leader(self, name: str) -> bool:
        def op(client: etcd.Client) -> bool:
            try:
                client.write(self._key("leader"), name, ttl=self.cfg.ttl, prevExist=False)
                return True
            except etcd.EtcdAlreadyExist:
                return False

        return self._call("leader lock acquisition", op)

    def renew_leader(self, name: str) -> bool:
        def op(client: etcd.Client) -> bool:
            try:
                client.write(self._key("leader"), name, ttl=self.cfg.ttl, prevValue=name)
                return True
            except (etcd.EtcdCompareFailed, etcd.EtcdKeyNotFound):
                return False

        return self._call("leader lock renewal", op)

    def release_leader(self, name: str) -> bool:
        def op(client: etcd.Client) -> bool:
            try:
                client.delete(self._key("leader"), prevValue=name)
                return True
            except (etcd.EtcdCompareFailed, etcd.EtcdKeyNotFound):
                return False

        return self._call("leader lock release", op)

    def touch_member(self, name: str, data: dict) -> None:
        body = encode(data)
        self._call("member update", lambda c: c.write(self._key(f"members/{name}"), body, ttl=self.cfg.ttl))

    def delete_member(self, name: str) -> None:
        self._delete_value("member delete", self._key(f"members/{name}"))

    def request_switchover(self, data: dict) -> bool:
        ttl = self._switchover_ttl(data)

        def op(client: etcd.Client) -> bool:
            try:
                client.write(self._key("failover"), json.dumps(data), prevExist=False, ttl=ttl)
                return True
            except etcd.EtcdAlreadyExist:
                return False

        return self._call("switchover request", op)

    def set_failsafe(self, holder: str, value: Optional[str]) -> bool:
        """Write (None: delete) the failsafe list. v2 has no transaction across keys: written only
        after the lock was found ours in this pass, and rewritten by a new leader at its first."""
        if value:
            self._put_value("failsafe list update", self._key("failsafe"), value)
        else:
            self._delete_value("failsafe list update", self._key("failsafe"))
        return True

    def remove_cluster(self) -> None:
        def op(client: etcd.Client) -> None:
            try:
                client.delete(self.prefix, recursive=True, dir=True)
            except etcd.EtcdKeyNotFound:
                pass

        self._call("removal of the cluster", op)

    def close(self) -> None:
        if self._watcher is not None:
            self._watcher.stopped.set()
        for client in self._clients.values():
            try:
                client.http.clear()
            except Exception:  # noqa: BLE001 - closing is best effort
                pass
        self._clients.clear()


class V2Watcher(threading.Thread):
    """Waits on etcd v2 from the newest index the loop has read, one waitIndex request after
    another (v2 has no streams), and wakes the loop for a change it acts on."""

    def __init__(self, dcs: Etcd2, read_index: Callable[[], int], wake: threading.Event):
        super().__init__(name="etcd-watch", daemon=True)
        self.dcs, self.read_index, self.wake = dcs, read_index, wake
        self.stopped = threading.Event()

    def run(self) -> None:
        index = 0
        while not self.stopped.is_set():
            index = max(index, self.read_index())
            if index <= 0:
                self.stopped.wait(0.5)
                continue
            woke, index = self.dcs.wait_for_change(index, WATCH_SPAN)
            if woke and not self.stopped.is_set():
                self.wake.set()
                if index == 0:
                    self.stopped.wait(0.5)   # history cleared: give the loop time to read again
