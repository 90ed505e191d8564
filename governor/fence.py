"""The fence systemd runs after governor stops (ExecStopPost=governor --fence CONFIG).

When systemd killed governor for a missed watchdog ping, or governor crashed, nobody renews the
leader lock any more: a PostgreSQL left running would stay writable after the lock expires and a
replica is promoted. The fence stops it at once. After a clean stop ($SERVICE_RESULT=success)
governor has already stopped PostgreSQL and handed the lock over, and the fence does nothing.

A standby of a member that held no lock is left running: it takes no writes and serves reads,
and governor adopts it when systemd starts it again. What says so: PostgreSQL runs in standby
mode (standby.signal) and the leader marker (LEADER_MARKER in the unit's RuntimeDirectory) is
absent. governor writes the marker when its lock fence is armed — the lock taken, before any
promotion — and removes it only once the fence stands down (PostgreSQL no longer primary under
the lock). Everything else, an unreadable data directory included, is stopped.
"""
from __future__ import annotations

import logging
import os
from typing import Optional

from governor.config import Config
from governor.postgres.controller import ControllerError
from governor.postgres.controllers import make_controller

log = logging.getLogger("governor.fence")


LEADER_MARKER = "leader"


def runtime_directory() -> Optional[str]:
    """The unit's RuntimeDirectory (systemd sets $RUNTIME_DIRECTORY for every Exec* command)."""
    return os.environ.get("RUNTIME_DIRECTORY", "").split(":")[0] or None


class LeaderMarker:
    """The lock fence's reporter under systemd: the marker file exists while the fence is armed."""

    def __init__(self, directory: str, data_dir: str):
        self.path = os.path.join(directory, LEADER_MARKER)
        self.present = os.path.exists(self.path)
        if self.present and os.path.exists(os.path.join(data_dir, "standby.signal")) \
                and not os.path.exists(os.path.join(data_dir, "postmaster.pid")):
            # Left by a governor that led before: this one starts from a stopped standby, under no
            # lock. (A running one might be promoting still, if the fence after that governor failed.)
            self(None)

    def __call__(self, deadline: Optional[float]) -> None:
        try:
            if deadline is not None and not self.present:
                with open(self.path, "w") as fh:
                    fh.write(f"{os.getpid()}\n")
                self.present = True
            elif deadline is None and self.present:
                os.unlink(self.path)
                self.present = False
        except OSError as exc:
            log.warning("leader marker %s: %s", self.path, exc.strerror or exc)


def lockless_standby(data_dir: str) -> bool:
    """PostgreSQL in standby mode and no leader marker: a member that held no lock."""
    runtime = runtime_directory()
    return runtime is not None and not os.path.exists(os.path.join(runtime, LEADER_MARKER)) \
        and os.path.isfile(os.path.join(data_dir, "standby.signal"))


def fence(cfg: Config) -> int:
    result = os.environ.get("SERVICE_RESULT", "")
    if result in ("", "success"):
        log.info("fence: governor stopped cleanly (SERVICE_RESULT=%s); nothing to do", result or "unset")
        return 0
    controller = make_controller(cfg.postgresql)
    pid = controller.postmaster_pid()
    if pid is None:
        log.warning("fence: governor ended with %s; PostgreSQL is not running", result)
        return 0
    if lockless_standby(cfg.postgresql.data_dir):
        log.warning("fence: governor ended with %s (exit %s %s); PostgreSQL (PID %s) runs as a standby and this "
                    "member held no leader lock: left running (it takes no writes, serves reads, and governor "
                    "adopts it when it starts again)", result, os.environ.get("EXIT_CODE", "?"),
                    os.environ.get("EXIT_STATUS", "?"), pid)
        return 0
    log.warning("fence: governor ended with %s (exit %s %s); stopping PostgreSQL (PID %s) immediately so it "
                "cannot outlive the leader lock", result, os.environ.get("EXIT_CODE", "?"),
                os.environ.get("EXIT_STATUS", "?"), pid)
    try:
        controller.stop("immediate", timeout=10)
    except ControllerError as exc:
        log.error("fence: %s", exc)
        return 1
    log.warning("fence: PostgreSQL stopped")
    return 0
