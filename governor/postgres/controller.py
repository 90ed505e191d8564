"""Starting and stopping the local PostgreSQL: the process-controller interface and pg_ctl.

A systemctl-based controller (PostgreSQL as a systemd unit) implements the same interface.
"""
from __future__ import annotations

import abc
import logging
import os
import subprocess
import time
from typing import List, Optional

log = logging.getLogger(__name__)


def child_environment(extra: Optional[dict] = None) -> dict:
    """The environment for PostgreSQL tools: without systemd's notify socket, so a postmaster
    can never speak for governor, plus `extra`."""
    env = {k: v for k, v in os.environ.items() if k not in ("NOTIFY_SOCKET", "WATCHDOG_USEC", "WATCHDOG_PID")}
    env.update(extra or {})
    return env


class ControllerError(Exception):
    pass


class ProcessController(abc.ABC):
    @abc.abstractmethod
    def start(self, timeout: float, wait: bool = True) -> None:
        """Start PostgreSQL. With `wait`, return once it accepts connections (error after
        `timeout`); without, once the postmaster runs: a standby may need WAL from its
        upstream before it accepts connections, and governor must keep looping meanwhile."""

    @abc.abstractmethod
    def stop(self, mode: str = "fast", timeout: float = 60) -> None:
        """Stop PostgreSQL (`fast` or `immediate`); no error if it is not running."""

    @abc.abstractmethod
    def postmaster_pid(self) -> Optional[int]:
        """PID of the running postmaster, or None."""

    @abc.abstractmethod
    def reload(self) -> None:
        """Make PostgreSQL re-read its configuration files."""

    def is_running(self) -> bool:
        return self.postmaster_pid() is not None


class PgCtl(ProcessController):
    def __init__(self, bin_dir: str, data_dir: str, log_file: Optional[str] = None):
        self.bin_dir = bin_dir
        self.data_dir = data_dir
        self.log_file = log_file

    def _run(self, args: List[str], timeout: float) -> subprocess.CompletedProcess:
        cmd = [os.path.join(self.bin_dir, "pg_ctl"), "-D", self.data_dir] + args
        log.debug("running %s", " ".join(cmd))
        try:
            # The postmaster inherits stdout/stderr when no log file is set (under systemd: the
            # journal); never capture them through a pipe it would hold open.
            return subprocess.run(cmd, env=child_environment(), stdin=subprocess.DEVNULL,
                                  timeout=timeout + 10, check=False)
        except subprocess.TimeoutExpired as exc:
            raise ControllerError(f"pg_ctl {args[0]} did not finish within {timeout + 10:.0f}s") from exc

    def start(self, timeout: float, wait: bool = True) -> None:
        args = ["start", "-w" if wait else "-W", "-t", str(int(timeout))]
        if self.log_file:
            args += ["-l", self.log_file]
        result = self._run(args, timeout)
        where = f"; see {self.log_file}" if self.log_file else ""
        if result.returncode != 0:
            raise ControllerError(f"pg_ctl start failed with exit code {result.returncode}{where}")
        if not wait:
            deadline = time.monotonic() + min(timeout, 10)
            while self.postmaster_pid() is None:
                if time.monotonic() > deadline:
                    raise ControllerError(f"the postmaster did not come up{where}")
                time.sleep(0.1)

    def stop(self, mode: str = "fast", timeout: float = 60) -> None:
        if not self.is_running():
            return
        result = self._run(["stop", "-w", "-m", mode, "-t", str(int(timeout))], timeout)
        if result.returncode != 0 and self.is_running():
            raise ControllerError(f"pg_ctl stop -m {mode} failed with exit code {result.returncode}")

    def reload(self) -> None:
        result = self._run(["reload", "-s"], 10)
        if result.returncode != 0:
            raise ControllerError(f"pg_ctl reload failed with exit code {result.returncode}")

    def postmaster_pid(self) -> Optional[int]:
        return read_postmaster_pid(self.data_dir)


def read_postmaster_pid(data_dir: str) -> Optional[int]:
    """The PID in postmaster.pid if that process is a live postgres (not a zombie, and not another
    program that reused the PID of a crashed postmaster)."""
    try:
        with open(os.path.join(data_dir, "postmaster.pid"), encoding="ascii") as fh:
            pid = int(fh.readline().strip())
    except (OSError, ValueError):
        return None
    try:
        with open(f"/proc/{pid}/stat", encoding="ascii", errors="replace") as fh:
            stat = fh.read()
    except FileNotFoundError:
        return None
    except OSError:
        return _signal_alive(pid)
    comm, _, rest = stat.partition("(")[2].rpartition(")")
    state = rest.split()[0] if rest.split() else "?"
    if state in ("Z", "X") or comm not in ("postgres", "postmaster"):
        return None
    return pid


def _signal_alive(pid: int) -> Optional[int]:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return None
    except PermissionError:
        pass  # alive, owned by someone else
    return pid
