"""A small parent process that fences PostgreSQL when governor itself freezes or dies, for hosts
where governor does not run under systemd (foreground, --daemonize).

Under systemd, the watchdog (WatchdogSec) and the ExecStopPost fence do this job. Elsewhere,
`governor CONFIG` forks: the child runs the HA loop; this parent does nothing but listen on a pipe
on which the child tells the deadline of its leader lock whenever it changes (lockfence.py). The
parent stops the local PostgreSQL (immediate shutdown)

- when a deadline it was told is `margin` seconds away and no newer one came: the child is
  frozen or hung so badly that even its own fence thread did not act (SIGSTOP, a stuck GIL);
- when the child dies other than by a clean exit (SIGKILL, a crash): nothing renews the lock
  and nothing would stop PostgreSQL once it expires, as systemd's fence does after a crash.

It forwards SIGTERM, SIGINT and SIGHUP to the child and exits with the child's exit status. When
the parent itself dies (`kill -9` of governor's main PID), the kernel sends the child SIGTERM
(PR_SET_PDEATHSIG): the child stops as on any SIGTERM, PostgreSQL first, then the lock, and exits;
it never exits leaving a primary behind, and its own lock fence thread guards it meanwhile.
What it cannot cover: both processes gone at once. Killed, the kernel stops a PostgreSQL that
governor started (postgres/lifeline.py); frozen (`kill -STOP` of both, a frozen host), the
replicas refuse to promote while it still answers as a writable primary (race.py), and the
Linux watchdog device resets a frozen host (watchdog.mode in the configuration).
"""
from __future__ import annotations

import ctypes
import errno
import logging
import os
import select
import signal
import time
from typing import Callable, Optional

from governor.lockfence import stop_postmaster_now

log = logging.getLogger("governor.supervisor")
PR_SET_PDEATHSIG = 1
FD_ENV = "GOVERNOR_SUPERVISOR_FD"


class Reporter:
    """The child's end of the pipe: one line per change of the lock deadline."""

    def __init__(self, fd: int, parent: int):
        self.fd = fd
        self.parent = parent  # the supervising parent's PID: the child's parent while it lives
        self.margin = 1.0     # the parent fences this long before the deadline

    def __call__(self, deadline: Optional[float]) -> None:
        line = f"lock {deadline:.3f} {self.margin:.3f}\n" if deadline is not None else "nolock\n"
        try:
            os.write(self.fd, line.encode())
        except OSError:
            pass   # the parent is gone: PR_SET_PDEATHSIG has sent this process SIGTERM


def under_systemd() -> bool:
    """systemd sets INVOCATION_ID for every service it starts (and NOTIFY_SOCKET for Type=notify)."""
    return bool(os.environ.get("NOTIFY_SOCKET") or os.environ.get("INVOCATION_ID"))


def parent_died(parent: Optional[int]) -> bool:
    """Whether the supervising parent `parent` is gone (this process was handed to another)."""
    return parent is not None and os.getppid() != parent


def _stop_with_parent(parent: int) -> None:
    """The child stops (as on SIGTERM) when the parent dies; before the child started anything."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(PR_SET_PDEATHSIG, signal.SIGTERM, 0, 0, 0)
    except (OSError, AttributeError):
        pass
    if parent_died(parent):      # the parent died before prctl took effect; nothing runs yet
        os._exit(1)


def supervise(data_dir: str, run_child: Callable[[Reporter], int]) -> int:
    """Fork; the child runs `run_child(reporter)` and exits with its result; the parent supervises
    it and returns its exit status (128 + signal number when it was killed)."""
    read_fd, write_fd = os.pipe()
    parent = os.getpid()
    pid = os.fork()
    if pid == 0:
        os.close(read_fd)
        _stop_with_parent(parent)
        code = 1
        try:
            code = run_child(Reporter(write_fd, parent))
        finally:
            logging.shutdown()
            os._exit(code)
    os.close(write_fd)
    os.set_blocking(read_fd, False)
    return Supervisor(pid, read_fd, data_dir).run()


class Supervisor:
    def __init__(self, child: int, fd: int, data_dir: str):
        self.child = child
        self.fd = fd
        self.data_dir = data_dir
        self.margin = 1.0
        self.deadline: Optional[float] = None
        self.buffer = b""

    def _forward(self, signum: int, frame: object = None) -> None:
        try:
            os.kill(self.child, signum)
        except ProcessLookupError:
            pass

    def run(self) -> int:
        for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
            signal.signal(sig, self._forward)
        log.debug("supervisor: watching governor process %s", self.child)
        while True:
            status = self._reap()
            if status is not None:
                return self._child_exited(status)
            timeout = 0.5
            if self.deadline is not None:
                timeout = min(timeout, max(0.0, self.deadline - self.margin - time.monotonic()))
            try:
                ready, _, _ = select.select([self.fd], [], [], timeout)
            except InterruptedError:
                continue
            if ready:
                self._read()
            if self.deadline is not None and time.monotonic() >= self.deadline - self.margin:
                left = self.deadline - time.monotonic()
                self.deadline = None
                pid = stop_postmaster_now(self.data_dir)
                log.error("supervisor: governor process %s did not renew the leader lock, which expires in %.1fs "
                          "(frozen or hung): %s", self.child, left,
                          f"stopped PostgreSQL (postmaster {pid}) immediately" if pid else "PostgreSQL is not running")

    def _read(self) -> None:
        while True:
            try:
                chunk = os.read(self.fd, 4096)
            except BlockingIOError:
                return
            except OSError as exc:
                if exc.errno == errno.EINTR:
                    continue
                return
            if not chunk:
                return
            self.buffer += chunk
            *lines, self.buffer = self.buffer.split(b"\n")
            for line in lines:
                self._message(line.decode("ascii", "replace").strip())

    def _message(self, line: str) -> None:
        if line == "nolock":
            self.deadline = None
        elif line.startswith("lock "):
            try:
                deadline, margin = (float(x) for x in line[5:].split())
            except ValueError:
                return
            self.deadline, self.margin = deadline, margin

    def _reap(self) -> Optional[int]:
        try:
            pid, status = os.waitpid(self.child, os.WNOHANG)
        except ChildProcessError:
            return 1 << 8
        return status if pid == self.child else None

    def _child_exited(self, status: int) -> int:
        self._read()
        if os.WIFEXITED(status) and os.WEXITSTATUS(status) in (0, 2):
            return os.WEXITSTATUS(status)   # a clean stop, or a configuration error before anything ran
        how = f"was killed by signal {os.WTERMSIG(status)}" if os.WIFSIGNALED(status) else \
            f"exited with status {os.WEXITSTATUS(status)}"
        pid = stop_postmaster_now(self.data_dir, timeout=10)
        log.error("supervisor: governor process %s %s: %s", self.child, how,
                  f"stopped PostgreSQL (postmaster {pid}) so it cannot outlive the leader lock" if pid
                  else "PostgreSQL is not running")
        return 128 + os.WTERMSIG(status) if os.WIFSIGNALED(status) else os.WEXITSTATUS(status)
