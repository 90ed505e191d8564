"""The fence systemd runs after governor stops (ExecStopPost=governor --fence CONFIG).

When systemd killed governor for a missed watchdog ping, or governor crashed, nobody renews the
leader lock any more: a PostgreSQL left running would stay writable after the lock expires and a
replica is promoted. The fence stops it at once. After a clean stop ($SERVICE_RESULT=success)
governor has already stopped PostgreSQL and handed the lock over, and the fence does nothing.
"""
from __future__ import annotations

import logging
import os

from governor.config import Config
from governor.postgres.controller import ControllerError
from governor.postgres.controllers import make_controller

log = logging.getLogger("governor.fence")


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
