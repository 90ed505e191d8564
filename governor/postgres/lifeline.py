"""PostgreSQL bound to the life of the governor process that started it (hosts without systemd).

The lock fences (lockfence.py, supervisor.py) are governor code: when every governor process is
killed at once (`pkill -9 -f governor`, the OOM killer, a crashing container runtime), none is
left to stop a primary before its lock expires and a replica is promoted. So outside systemd,
governor starts the postmaster itself, as a child of the HA loop's process, asking the kernel
(PR_SET_PDEATHSIG) to send it SIGQUIT, PostgreSQL's immediate shutdown, the moment that process
dies, however it dies. No governor code has to run for that.

Only a postmaster started this way is bound: one that was already running when governor started
(adopted) is not, until governor next restarts it. Under systemd the unit's watchdog and its
ExecStopPost fence do this job, and a package upgrade restarts governor leaving PostgreSQL running,
so there pg_ctl starts it, unbound.
"""
from __future__ import annotations

import ctypes
import logging
import os
import signal
import subprocess
import threading
import time
from typing import Callable, Optional

from governor.postgres.controller import ControllerError, PgCtl, child_environment, read_postmaster_pid

log = logging.getLogger(__name__)

PR_SET_PDEATHSIG = 1
POLL = 0.05


def _stop_with(governor: int) -> Callable[[], None]:
    """Runs in the forked child before it becomes the postmaster: SIGQUIT when `governor` dies, and
    if it already died between the fork and here, do not start at all."""
    prctl = ctypes.CDLL(None, use_errno=True).prctl    # resolved before the fork: nothing to load after it

    def bind() -> None:
        prctl(PR_SET_PDEATHSIG, signal.SIGQUIT, 0, 0, 0)
        if os.getppid() != governor:
            os._exit(1)
    return bind


def postmaster_status(data_dir: str, pid: int) -> Optional[str]:
    """The status postmaster `pid` wrote in its postmaster.pid (line 8: starting, ready, standby,
    stopping), "" before it wrote one, None when the file is not (yet) that postmaster's."""
    try:
        with open(os.path.join(data_dir, "postmaster.pid"), encoding="ascii", errors="replace") as fh:
            lines = fh.read(4096).splitlines()
    except OSError:
        return None
    if not lines or lines[0].strip() != str(pid):
        return None
    return lines[7].strip() if len(lines) >= 8 else ""


class BoundPgCtl(PgCtl):
    """pg_ctl for everything but start: the postmaster is this process's child, bound to its life."""

    def __init__(self, bin_dir: str, data_dir: str, log_file: Optional[str] = None):
        super().__init__(bin_dir, data_dir, log_file)
        self._child: Optional[subprocess.Popen] = None

    def start(self, timeout: float, wait: bool = True) -> None:
        if threading.current_thread() is not threading.main_thread():
            # The kernel signals the postmaster when the *thread* that forked it ends.
            log.warning("starting PostgreSQL from a thread other than the HA loop's: not bound to governor's life")
            super().start(timeout, wait)
            return
        if self.postmaster_pid() is not None:
            raise ControllerError(f"a postmaster already runs in {self.data_dir}")
        where = f"; see {self.log_file}" if self.log_file else ""
        out = open(self.log_file, "ab") if self.log_file else None    # as pg_ctl -l: appended
        try:
            # Its own session, as pg_ctl does: a terminal's Ctrl-C to governor does not reach it.
            child = subprocess.Popen([os.path.join(self.bin_dir, "postgres"), "-D", self.data_dir],
                                     stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT if out else None,
                                     env=child_environment(), start_new_session=True,
                                     preexec_fn=_stop_with(os.getpid()))
        except OSError as exc:
            raise ControllerError(f"cannot run postgres: {exc.strerror or exc}") from exc
        finally:
            if out is not None:
                out.close()
        self._child = child
        log.debug("started postmaster %s, bound to this process", child.pid)
        # Without `wait`: once the postmaster runs (a standby may wait for WAL before it accepts
        # connections). With it: once it accepts them, as pg_ctl -w.
        limit = timeout if wait else min(timeout, 10)
        deadline = time.monotonic() + limit
        while True:
            if child.poll() is not None:
                raise ControllerError(f"postgres exited with code {child.returncode} while starting{where}")
            status = postmaster_status(self.data_dir, child.pid)
            if status is not None and (not wait or status in ("ready", "standby")):
                return
            if time.monotonic() > deadline:
                raise ControllerError(f"PostgreSQL did not {'start' if wait else 'come up'} within {limit:.0f}s{where}")
            time.sleep(POLL)

    def postmaster_pid(self) -> Optional[int]:
        if self._child is not None and self._child.poll() is not None:
            self._child = None     # reaped: exited postmasters of ours leave no zombie
        return read_postmaster_pid(self.data_dir)

    def bound(self) -> bool:
        """Whether the running postmaster is the one this process started (bound to its life)."""
        pid = self.postmaster_pid()
        return pid is not None and self._child is not None and self._child.pid == pid
