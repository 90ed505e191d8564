"""The scope's keys kept in memory by one long-lived etcd v3 watch, so an idle member reads
etcd once per loop (its lease keepalive) instead of reading the whole prefix every pass.

The cache is only ever used when it is provably current: a keepalive's response carries etcd's
revision at that moment, and a cache that has applied every change of the scope up to at least
that revision is exactly what a read would have returned then. Anything else (the watch
lagging, broken, compacted, or other scopes writing to the same etcd) falls back to a range
read, which also brings the cache up to date. Correctness never depends on the watch being
alive; only how early a member wakes does.
"""
from __future__ import annotations

import http.client
import json
import logging
import socket
import ssl
import threading
import time
from typing import Any, Callable, Dict, List, NamedTuple, Optional, Tuple

from governor.dcs.keys import Entry, wakes
from governor.dcs.rotation import jitter
from governor.dcs.v3json import _b64, _dict, _int, _prefix_end, _unb64_lenient

log = logging.getLogger(__name__)

STREAM_IDLE = 300.0     # reconnect a watch that said nothing for this long (a half-open connection)
RECONNECT_PAUSE = 1.0   # between a broken watch and the next attempt (doubled while it keeps breaking)
RECONNECT_PAUSE_MAX = 8.0
STUCK_AFTER = 2.0
REVISION_MAX = 2**63 - 1       # a read showed a change the watch has not delivered this long after: reconnect


class Item(NamedTuple):
    entry: Entry
    lease: str
    created: bool           # the key's first version (a new member key wakes the leader)


def parse_kv(kv: object, prefix: str) -> Tuple[Optional[Item], Optional[str]]:
    """One key-value as etcd returns it (range read or watch event): the item, and a problem to
    log when part of it could not be read. A key outside the scope is no item at all."""
    kv = _dict(kv)
    key, why = _unb64_lenient(kv.get("key"))
    if key is None or why or not key.startswith(prefix):
        return None, f"a key under {prefix} is {why or 'outside the scope'}: ignored ({key!r:.80})"
    name = key[len(prefix):]
    value, why = _unb64_lenient(kv.get("value"))
    problem = None
    if why:
        # The leader key keeps its (unreadable) holder: a lock held by someone unknown is still
        # held. Other values are unknown, which every parser downstream handles.
        problem = f"{name}: value is {why}; taken as unknown"
        if value is None:
            value = "\ufffd"
    entry = Entry(name, value, _int(kv.get("mod_revision")))
    return Item(entry, str(kv.get("lease") or ""), str(kv.get("version")) == "1"), problem


class KeyCache:
    """The scope's keys at `revision`: every change of the scope up to it is applied."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._items: Dict[str, Item] = {}
        self._problems: Dict[str, str] = {}
        self.revision = 0          # 0: nothing read yet (or the history was compacted away)
        self.synced = threading.Event()

    def reset(self, items: List[Item], problems: List[str], revision: int) -> int:
        """A range read at `revision`. Returns the newest modification it showed that the cache
        lacked (0: none, or nothing to compare with)."""
        with self._lock:
            if revision < self.revision or revision > REVISION_MAX:
                return 0           # the watch already brought something newer (or nonsense)
            was_synced = self.synced.is_set()
            missed = max((i.entry.index for i in items
                          if self._items.get(i.entry.key, (None,))[0] != i.entry), default=0)
            self._items = {i.entry.key: i for i in items}
            self._problems = {str(n): p for n, p in enumerate(problems)}
            self.revision = revision
            self.synced.set()
        return missed if was_synced else 0

    def invalidate(self) -> None:
        """The watch cannot continue from our revision (compacted): only a read can resync."""
        with self._lock:
            self.revision = 0
            self.synced.clear()

    def apply(self, events: List[object], prefix: str) -> Optional[bool]:
        """The events of one watch response: whether one of them wakes the loop (keys.wakes), or
        None when they cannot be applied (the cache is invalid; the watch must start again)."""
        woke = False
        with self._lock:
            if not self.synced.is_set():
                return None
            newest = self.revision
            for event in events:
                event = _dict(event)
                kv = _dict(event.get("kv"))
                revision = _int(kv.get("mod_revision"))
                if revision > REVISION_MAX:
                    self.revision = 0      # not a revision etcd can have: trust nothing cached
                    self.synced.clear()
                    return None
                if revision <= self.revision:
                    continue       # already in the snapshot a read brought
                item, problem = parse_kv(kv, prefix)
                if item is None:
                    # An event that does not parse: read again rather than guess what changed.
                    self.revision = 0
                    self.synced.clear()
                    return None
                key = item.entry.key
                self._problems.pop(key, None)
                before = self._items.get(key)
                before_value = None if before is None or item.created else before.entry.value
                if event.get("type") == "DELETE":
                    self._items.pop(key, None)
                    woke = woke or wakes(key, before_value, None)
                else:
                    self._items[key] = item
                    if problem:
                        self._problems[key] = problem
                    woke = woke or wakes(key, before_value, item.entry.value)
                newest = max(newest, revision)
            self.revision = newest
        return woke

    def progress(self, revision: int) -> None:
        """etcd reports every change up to `revision` has been sent on this watch."""
        with self._lock:
            if self.synced.is_set() and revision <= REVISION_MAX:
                self.revision = max(self.revision, revision)

    def current(self, revision: int) -> Optional[Tuple[List[Item], List[str], int]]:
        """The cached keys if they include every change up to `revision` (etcd's revision at a
        moment after the caller's question began), else None: read instead."""
        with self._lock:
            if not self.synced.is_set() or self.revision < revision or revision <= 0:
                return None
            return list(self._items.values()), list(self._problems.values()), self.revision

    def item(self, key: str) -> Optional[Item]:
        with self._lock:
            return self._items.get(key)


class WatchStream(threading.Thread):
    """One long-lived watch over the scope's prefix that applies every event to the cache and
    wakes the loop on a change it acts on. Reconnects from the cache's revision, so nothing is
    skipped across a broken stream; compaction invalidates the cache (the loop reads again)."""

    def __init__(self, cache: KeyCache, prefix: str, wake: threading.Event,
                 connect: Callable[[float], Tuple[http.client.HTTPConnection, str, Dict[str, str]]]):
        super().__init__(name="etcd-watch", daemon=True)
        self.cache, self.prefix, self.wake, self.connect = cache, prefix, wake, connect
        self.stopped = threading.Event()
        self.delivered = 0            # newest revision this watch has brought
        self._conn: Optional[http.client.HTTPConnection] = None
        self._missed: Optional[Tuple[int, float]] = None   # (revision a read found, when)

    def stop(self) -> None:
        self.stopped.set()
        self.restart()

    def restart(self) -> None:
        """Break the current stream (from another thread): the next one starts where it ended."""
        conn = self._conn
        sock = getattr(conn, "sock", None)
        if sock is not None:
            try:
                sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass

    def read_found_change(self, revision: int) -> None:
        """A range read at `revision` showed a change the cache lacked. If the watch still has not
        brought anything that new a while later, it is stuck (a half-open connection): restart."""
        now = time.monotonic()
        if self._missed is None or self.delivered >= self._missed[0]:
            self._missed = (revision, now)
        elif now - self._missed[1] >= STUCK_AFTER:
            log.info("the etcd watch missed a change at revision %d for %.0fs; reconnecting it",
                     self._missed[0], now - self._missed[1])
            self._missed = None
            self.restart()

    def run(self) -> None:
        failures = 0
        while not self.stopped.is_set():
            if not self.cache.synced.wait(1.0):
                continue
            began = time.monotonic()
            try:
                self._stream()
            except (OSError, http.client.HTTPException, ValueError) as exc:
                if not self.stopped.is_set():
                    log.debug("etcd watch ended: %s", exc)
            finally:
                conn, self._conn = self._conn, None
                if conn is not None:
                    conn.close()
            # A fleet's members whose watches broke together (an etcd restart) come back spread
            # out, and a watch that keeps breaking is tried less often (1, 2, 4, up to 8 s).
            failures = 0 if time.monotonic() - began > RECONNECT_PAUSE_MAX else failures + 1
            pause = min(RECONNECT_PAUSE * 2 ** max(failures - 1, 0), RECONNECT_PAUSE_MAX)
            self.stopped.wait(pause * jitter.uniform(0.5, 1.0))

    def _stream(self) -> None:
        start = self.cache.revision + 1
        if start <= 1:
            return
        conn, path, headers = self.connect(STREAM_IDLE)
        self._conn = conn
        if self.stopped.is_set():
            return
        body = {"create_request": {"key": _b64(self.prefix), "range_end": _prefix_end(self.prefix),
                                   "start_revision": str(start), "progress_notify": True}}
        conn.request("POST", path, body=json.dumps(body), headers=headers)
        resp = conn.getresponse()
        if resp.status != 200:
            raise http.client.HTTPException(f"watch answered HTTP {resp.status}")
        decoder = json.JSONDecoder()
        buffer = ""
        while not self.stopped.is_set():
            chunk = resp.read1(65536)
            if not chunk:
                return
            buffer += chunk.decode("utf-8", "replace")
            while buffer.strip():
                try:
                    message, end = decoder.raw_decode(buffer.lstrip())
                except ValueError:
                    if len(buffer) > 16 * 1024 * 1024:
                        raise ValueError("a watch message over 16 MB") from None
                    break
                buffer = buffer.lstrip()[end:]
                if not self._apply(_dict(message)):
                    return

    def _apply(self, message: dict) -> bool:
        """One message of the stream; False when the stream cannot go on."""
        result = _dict(message.get("result"))
        if result.get("compact_revision"):
            log.info("etcd compacted the history the watch needed; reading the scope again")
            self.cache.invalidate()
            self.wake.set()
            return False
        if message.get("error") or result.get("canceled"):
            log.debug("etcd ended the watch: %.200s", message.get("error") or result.get("cancel_reason"))
            return False
        events = result.get("events")
        if isinstance(events, list) and events:
            woke = self.cache.apply(events, self.prefix)
            if woke is None:
                self.wake.set()      # the loop reads (and resyncs the cache); this stream ends
                return False
            if woke:
                self.wake.set()
            self.delivered = max([self.delivered] + [_int(_dict(_dict(e).get("kv")).get("mod_revision"))
                                                     for e in events])
        elif not result.get("created"):
            revision = _int(_dict(result.get("header")).get("revision"))
            self.cache.progress(revision)
            self.delivered = max(self.delivered, revision)
        return True


def stream_connection(cfg: Any, host: str, port: int, timeout: float) -> http.client.HTTPConnection:
    """The watch's own connection to etcd (cfg: settings.EtcdConfig): TLS verified, as the
    requests are, with the client certificate when there is one."""
    if cfg.protocol != "https":
        return http.client.HTTPConnection(host, port, timeout=timeout)
    context = ssl.create_default_context(cafile=cfg.cacert)
    if cfg.cert:
        context.load_cert_chain(cfg.cert, cfg.key)
    return http.client.HTTPSConnection(host, port, timeout=timeout, context=context)
