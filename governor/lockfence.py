"""The lock fence: PostgreSQL stops being writable before the leader lock can expire, whatever the
HA loop is doing.

The loop renews the lock and demotes itself when etcd fails, but a loop can be slow (two etcd
timeouts in one pass), stuck (a call that never returns) or dead. So the lock's deadline (the
send time of the last successful renewal + ttl) is kept apart from the loop, and a thread that
does nothing else stops the postmaster once `margin` seconds are left and no renewal has moved
the deadline. It stops it the quickest way there is, PostgreSQL's immediate shutdown (SIGQUIT to
the postmaster), escalating to SIGKILL: a clean demotion would wait for standbys, which may be
what can no longer be reached. The loop then finds PostgreSQL stopped without the lock and
restarts it as a replica (pg_rewind first), as after any demotion.

The same deadline goes to the supervising parent process (supervisor.py) when there is one, which
fences PostgreSQL should this whole process freeze or die.
"""
from __future__ import annotations

import logging
import os
import signal
import threading
from typing import Callable, Optional

from governor import clock
from governor.postgres.controller import read_postmaster_pid

log = logging.getLogger("governor")


def margin_for(ttl: float) -> float:
    """Seconds before the lock's expiry at which the fence stops PostgreSQL: long enough for an
    immediate shutdown (well under a second) to finish, short enough not to fire while a healthy
    loop (which demotes itself at retry_timeout + 1 before expiry) is still renewing."""
    return max(1.5, min(0.2 * ttl, 5.0))


def stop_postmaster_now(data_dir: str, timeout: float = 2.0) -> Optional[int]:
    """Immediate shutdown of the postmaster running in `data_dir`, SIGKILL if it is not gone within
    `timeout`. Returns the postmaster's PID, or None when none was running."""
    pid = read_postmaster_pid(data_dir)
    if pid is None:
        return None
    try:
        os.kill(pid, signal.SIGQUIT)
    except ProcessLookupError:
        return pid
    deadline = clock.monotonic() + timeout
    while clock.monotonic() < deadline:
        if read_postmaster_pid(data_dir) != pid:
            return pid
        clock.sleep(0.02)
    try:
        os.kill(pid, signal.SIGKILL)   # its backends exit when they notice the postmaster is gone
    except ProcessLookupError:
        pass
    return pid


class LockFence(threading.Thread):
    """Arm with the lock's deadline (clock.monotonic() seconds) whenever it is taken or renewed;
    disarm when it is released or lost. Fires at most once per arming."""

    def __init__(self, data_dir: str, ttl: float, on_fire: Optional[Callable[[float], None]] = None,
                 report: Optional[Callable[[Optional[float]], None]] = None,
                 stop: Optional[Callable[[], Optional[int]]] = None):
        super().__init__(name="lock-fence", daemon=True)
        self.data_dir = data_dir
        # How PostgreSQL is stopped: its postmaster's PID, None when none ran (the simulator's own).
        self.stop = stop or (lambda: stop_postmaster_now(self.data_dir))
        self.margin = margin_for(ttl)
        self.on_fire = on_fire          # called with the seconds that were left, after the stop
        self.report = report            # tells the supervisor the deadline (None: no lock)
        self._deadline: Optional[float] = None
        self._cond = threading.Condition()
        self.fired = 0
        self.set_ttl(ttl)

    def set_ttl(self, ttl: float) -> None:
        with self._cond:
            self.margin = margin_for(ttl)
            self._cond.notify()
        if self.report is not None and hasattr(self.report, "margin"):
            self.report.margin = self.margin * 0.75   # after its own thread, before the watchdog

    def arm(self, deadline: float) -> None:
        with self._cond:
            self._deadline = deadline
            self._cond.notify()
        if self.report:
            self.report(deadline)

    def disarm(self) -> None:
        with self._cond:
            was = self._deadline
            self._deadline = None
            self._cond.notify()
        if self.report and was is not None:
            self.report(None)

    @property
    def deadline(self) -> Optional[float]:
        return self._deadline

    def run(self) -> None:
        while True:
            with self._cond:
                while True:
                    if self._deadline is None:
                        self._cond.wait()
                        continue
                    deadline = self.due()
                    if deadline is not None:
                        break
                    self._cond.wait(self._deadline - self.margin - clock.monotonic())
            self.fire(deadline)

    def due(self) -> Optional[float]:
        """The deadline, disarmed, once `margin` seconds or less are left (None: not yet, or unarmed).
        The thread asks this; so does a simulator, at each of its ticks."""
        deadline = self._deadline
        if deadline is None or deadline - self.margin - clock.monotonic() > 0:
            return None
        self._deadline = None
        return deadline

    def fire(self, deadline: float) -> None:
        left = deadline - clock.monotonic()
        try:
            pid = self.stop()
        except Exception as exc:  # noqa: BLE001 - the fence thread must outlive anything
            log.error("lock_fence: could not stop PostgreSQL: %s", exc)
            pid = None
        self.fired += 1
        when = f"expires in {left:.1f}s" if left >= 0 else f"expired {-left:.1f}s ago"
        if pid is None:
            log.warning("lock_fence: the leader lock was not renewed and %s; PostgreSQL is not running", when)
        else:
            log.error("lock_fence: the leader lock was not renewed and %s: stopped PostgreSQL (postmaster %s) "
                      "immediately so it cannot outlive the lock; %.1fs were left once it had stopped",
                      when, pid, deadline - clock.monotonic())
        if self.report:
            self.report(None)
        if self.on_fire:
            try:
                self.on_fire(left)
            except Exception:  # noqa: BLE001
                log.debug("lock_fence callback failed", exc_info=True)
