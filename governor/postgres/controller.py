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


class Systemctl(ProcessController):
    """PostgreSQL as a systemd unit of the distribution (Debian: postgresql@15-main, PGDG RPMs:
    postgresql-15). governor runs as postgres, so it needs a polkit rule allowing that user to
    start, stop and reload the unit (systemd/50-governor-postgresql.rules)."""

    def __init__(self, unit: str, data_dir: str, systemctl: str = "systemctl"):
        self.unit = unit if "." in unit else f"{unit}.service"
        self.data_dir = data_dir
        self.systemctl = systemctl

    def _run(self, *args: str, timeout: float = 90) -> None:
        cmd = [self.systemctl, *args]
        log.debug("running %s", " ".join(cmd))
        try:
            result = subprocess.run(cmd, env=child_environment(), stdin=subprocess.DEVNULL, capture_output=True,
                                    text=True, timeout=timeout, check=False)
        except subprocess.TimeoutExpired as exc:
            raise ControllerError(f"systemctl {args[0]} {self.unit} did not finish within {timeout:.0f}s") from exc
        if result.returncode != 0:
            detail = (result.stderr or result.stdout).strip().splitlines()
            raise ControllerError(f"systemctl {' '.join(args)} failed ({result.returncode}): "
                                  f"{' / '.join(detail[-2:])}")

    def start(self, timeout: float, wait: bool = True) -> None:
        # The unit's own start job waits for a primary; a standby may need its upstream's WAL
        # before it accepts connections, so governor then only waits for the postmaster.
        self._run("reset-failed", self.unit, timeout=10) if self._failed() else None
        self._run("start", *([] if wait else ["--no-block"]), self.unit, timeout=timeout + 10)
        deadline = time.monotonic() + (timeout if wait else min(timeout, 15))
        while self.postmaster_pid() is None:
            if time.monotonic() > deadline:
                raise ControllerError(f"{self.unit} started but no postmaster runs in {self.data_dir}")
            time.sleep(0.1)

    def _failed(self) -> bool:
        return subprocess.run([self.systemctl, "is-failed", "--quiet", self.unit], env=child_environment(),
                              stdin=subprocess.DEVNULL, capture_output=True, check=False).returncode == 0

    def stop(self, mode: str = "fast", timeout: float = 60) -> None:
        if mode == "immediate" and self.is_running():
            # SIGQUIT to the postmaster is PostgreSQL's immediate shutdown.
            self._run("kill", "--kill-who=main", "--signal=SIGQUIT", self.unit, timeout=10)
            deadline = time.monotonic() + timeout
            while self.is_running() and time.monotonic() < deadline:
                time.sleep(0.1)
        self._run("stop", self.unit, timeout=timeout + 10)
        if self.is_running():
            raise ControllerError(f"{self.unit} stopped but a postmaster still runs in {self.data_dir}")

    def reload(self) -> None:
        self._run("reload", self.unit, timeout=30)

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
