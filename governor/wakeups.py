"""What wakes the loop early, and what it hands between threads.

OnChange logs a message once per change; ChangeWatcher watches etcd in a thread;
OperatorRequest carries a restart or re-initialization from the API thread to the loop.
"""
from __future__ import annotations

import logging
import threading
from typing import Dict, Optional

from governor.dcs import DCS

log = logging.getLogger("governor")


class OnChange:
    """Logs a message only when it differs from the previous one under the same key."""

    def __init__(self) -> None:
        self._last: Dict[str, Optional[str]] = {}

    def __call__(self, key: str, message: Optional[str], level: int = logging.INFO) -> None:
        if self._last.get(key) != message:
            self._last[key] = message
            if message is not None:
                log.log(level, message)


class ChangeWatcher(threading.Thread):
    """Watches the scope's keys in the background so the loop wakes the moment something it
    acts on changes (dcs.keys.wakes: the lock, initialize, a switchover, pause, the dynamic
    configuration, the sync key, a new member)."""

    def __init__(self, dcs: DCS, wake: threading.Event):
        super().__init__(name="etcd-watch", daemon=True)
        self.dcs = dcs
        self.wake = wake
        self._request = threading.Event()
        self._index = 0
        self._timeout = 0.0

    def watch(self, index: int, timeout: float) -> None:
        self._index, self._timeout = index, timeout
        self._request.set()

    def run(self) -> None:
        while True:
            self._request.wait()
            self._request.clear()
            if self.dcs.wait_for_change(self._index, self._timeout):
                self.wake.set()


class OperatorRequest:
    """An operator's restart or re-initialization, handed from the API thread to the loop."""

    def __init__(self, kind: str):
        self.kind = kind
        self.done = threading.Event()
        self.result: tuple = (500, {"error": "not carried out"})

    def finish(self, code: int, body: dict) -> None:
        self.result = (code, body)
        self.done.set()
