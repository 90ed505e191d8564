"""What wakes the loop early, and what it hands between threads.

OnChange logs a message once per change (the etcd adapters watch in their own threads);
OperatorRequest carries a restart or re-initialization from the API thread to the loop.
"""
from __future__ import annotations

import logging
import threading
from typing import Dict, Optional

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


class OperatorRequest:
    """An operator's restart or re-initialization, handed from the API thread to the loop."""

    def __init__(self, kind: str):
        self.kind = kind
        self.done = threading.Event()
        self.result: tuple = (500, {"error": "not carried out"})

    def finish(self, code: int, body: dict) -> None:
        self.result = (code, body)
        self.done.set()
