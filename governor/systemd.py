"""Talking to systemd through sd_notify (the `sdnotify` package): readiness, status, watchdog.

Everything is a no-op when governor does not run under systemd (no NOTIFY_SOCKET).
"""
from __future__ import annotations

import logging
import os
import threading
import time
from typing import Optional

import sdnotify

from governor.watchdogfeed import watchdog_seconds_for

log = logging.getLogger(__name__)


class Notifier:
    def __init__(self) -> None:
        self.enabled = bool(os.environ.get("NOTIFY_SOCKET"))
        self._notifier = sdnotify.SystemdNotifier() if self.enabled else None
        self.watchdog_usec = _watchdog_usec()
        self.unit_watchdog_usec = self.watchdog_usec   # WatchdogSec as the unit says: the upper bound
        self._last_status: Optional[str] = None
        self._lock = threading.Lock()
        self._keepalive: Optional[threading.Thread] = None
        self._keepalive_stop = threading.Event()
        self.ready_sent = False

    def send(self, *lines: str) -> None:
        if self._notifier is not None:
            with self._lock:
                self._notifier.notify("\n".join(lines))

    def ready(self, status: Optional[str] = None) -> None:
        self.send("READY=1", *([f"STATUS={status}"] if status else []))
        self.ready_sent = True
        if status:
            self._last_status = status

    def status(self, text: str) -> None:
        """STATUS= for `systemctl status`, sent only when it changes."""
        if text != self._last_status:
            self._last_status = text
            self.send(f"STATUS={text}")

    def watchdog(self) -> None:
        if self.watchdog_usec:
            self.send("WATCHDOG=1")

    def fit_watchdog(self, ttl: float) -> None:
        """Keep systemd's watchdog timeout fit for the lock's ttl whatever ttl is now (a reload, or
        `edit-config --set ttl=...`): a frozen leader is killed WatchdogSec after its last ping and
        fenced within about a second, before its lock expires (watchdogfeed.py). The unit's
        WatchdogSec stays the upper bound; WATCHDOG_USEC= changes it live."""
        if not self.unit_watchdog_usec:
            return
        seconds = watchdog_seconds_for(ttl, self.unit_watchdog_usec / 1e6)
        usec = int(seconds * 1e6)
        if usec != self.watchdog_usec:
            self.send(f"WATCHDOG_USEC={usec}")
            self.watchdog_usec = usec
            log.info("watchdog: systemd's timeout set to %.1fs for the leader lock's ttl %ss", seconds, ttl)

    def watchdog_seconds(self) -> float:
        return (self.watchdog_usec or 0) / 1e6

    def reloading(self) -> None:
        self.send("RELOADING=1", f"MONOTONIC_USEC={time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000}")

    def stopping(self) -> None:
        self.send("STOPPING=1")

    def keep_alive_while(self, activity: str) -> _KeepAlive:
        """For a long action that cannot leave a writable primary behind (cloning, pg_rewind):
        keep pinging the watchdog and, before readiness, extend the start timeout."""
        return _KeepAlive(self, activity)


class _KeepAlive:
    def __init__(self, notifier: Notifier, activity: str):
        self.notifier = notifier
        self.activity = activity
        self.stop = threading.Event()
        self.thread: Optional[threading.Thread] = None

    def __enter__(self) -> _KeepAlive:
        if self.notifier.enabled:
            self.notifier.status(f"{self.activity} ...")
            self.thread = threading.Thread(target=self._run, name="keepalive", daemon=True)
            self.thread.start()
        return self

    def _run(self) -> None:
        interval = 5.0
        if self.notifier.watchdog_usec:
            interval = min(interval, self.notifier.watchdog_usec / 1e6 / 2)
        while not self.stop.wait(interval):
            self.notifier.watchdog()
            if not self.notifier.ready_sent:
                self.notifier.send(f"EXTEND_TIMEOUT_USEC={int(interval * 3 * 1e6)}")

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        if self.thread:
            self.thread.join(5)


def _watchdog_usec() -> Optional[int]:
    usec = os.environ.get("WATCHDOG_USEC")
    pid = os.environ.get("WATCHDOG_PID")
    if not usec or (pid and pid != str(os.getpid())):
        return None
    try:
        return int(usec)
    except ValueError:
        return None
