"""Feeding systemd's watchdog from a thread of its own.

Pinging only after a completed pass made a slow etcd look like a hung process: a pass may wait
2 * retry_timeout for etcd, and at a small ttl systemd's timeout must be shorter than that, so an
etcd outage got governor killed again and again and its ExecStopPost fence stopped PostgreSQL on
every member. Here a thread pings while two things hold:

- the loop is alive: it said when it would report again (a pass, bounded by its etcd and SQL
  timeouts; or a sleep) and that time has not passed. A hung loop stops the pings.
- the leader lock allows it: a process frozen right after this ping is killed WatchdogSec later and
  fenced within FENCE_SECONDS, before the lock it holds can expire. Near the lock's deadline the
  pings pause; the in-process lock fence fires first (its margin exceeds FENCE_SECONDS) and
  disarms, and they resume.

A frozen process (this thread with it) is still killed and fenced in time; a replica waiting for
etcd is not killed at all.
"""
from __future__ import annotations

import threading
from typing import Callable, Optional

from governor import clock
from governor.lockfence import margin_for

FENCE_SECONDS = 1.0     # ExecStopPost's `governor --fence`: an immediate shutdown, well under this
PASS_SLACK = 30.0       # what a pass may spend beyond its etcd budget: SQL, the peers, pg_ctl


def pass_limit(retry_timeout: float) -> float:
    """How long a healthy pass may take: twice the etcd budget, and PostgreSQL's and the peers'
    timeouts (a longer action feeds systemd's watchdog itself: Notifier.keep_alive_while)."""
    return 2 * retry_timeout + PASS_SLACK


def watchdog_seconds_for(ttl: float, unit_seconds: float) -> float:
    """systemd's timeout for this ttl: a frozen leader killed and fenced before the lock fence's
    margin runs out, never above the unit's WatchdogSec."""
    return max(1.0, min(unit_seconds, ttl - margin_for(ttl) - FENCE_SECONDS))


class WatchdogFeeder(threading.Thread):
    def __init__(self, ping: Callable[[], None], timeout: Callable[[], float],
                 lock_deadline: Callable[[], Optional[float]]):
        super().__init__(name="watchdog-feeder", daemon=True)
        self.ping = ping                      # WATCHDOG=1
        self.timeout = timeout                # systemd's timeout now, seconds
        self.lock_deadline = lock_deadline    # the lock fence's armed deadline (monotonic), None: no lock
        self._alive_until: Optional[float] = None
        self._finished = threading.Event()
        self._poked = threading.Event()

    def expect_within(self, seconds: float) -> None:
        """The loop reports again within `seconds` (it starts a pass, or goes to sleep)."""
        self._alive_until = clock.monotonic() + seconds

    def may_ping(self, now: float) -> bool:
        alive_until = self._alive_until
        if alive_until is None or now > alive_until:
            return False
        deadline = self.lock_deadline()
        return deadline is None or now + self.timeout() + FENCE_SECONDS <= deadline

    def run(self) -> None:
        while not self._finished.is_set():
            now = clock.monotonic()
            if self.may_ping(now):
                self.ping()
            self._poked.wait(self._next_wait(now))
            self._poked.clear()

    def _next_wait(self, now: float) -> float:
        """A tick, or less to ping once more at the last moment the lock allows."""
        wait = min(0.25, self.timeout() / 8)
        deadline = self.lock_deadline()
        if deadline is not None:
            last = deadline - self.timeout() - FENCE_SECONDS - now
            if 0.005 < last < wait:
                wait = last
        return wait

    def poke(self) -> None:
        """Ping now if allowed (the lock fence fired: the lock no longer holds the pings back)."""
        self._poked.set()

    def stop(self) -> None:
        self._finished.set()
        self._poked.set()
