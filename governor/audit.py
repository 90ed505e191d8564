"""The audit trail of control requests: who asked for what, from where, and what came of it.

Every control request the API serves (switchover, failover, restart, reinitialize, pause, PATCH
/config, ...) is logged on one line at INFO (the journal under systemd): the action, what it was
about, the authenticated user or certificate subject, the client's address and the answer.
Refused requests (no valid credentials) are logged at WARNING. Nothing secret is in a request a
control endpoint accepts, and values are cut short and escaped so a request cannot forge lines.
"""
from __future__ import annotations

import json
import logging
from typing import Any

log = logging.getLogger("governor.audit")
BODY_MAX = 300


def summary(body: Any) -> str:
    """A request body as it appears in the trail: compact JSON, escaped, at most BODY_MAX characters."""
    try:
        text = json.dumps(body, separators=(",", ":"), sort_keys=True, ensure_ascii=True, default=str)
    except (TypeError, ValueError, RecursionError):
        text = "?"
    return text if len(text) <= BODY_MAX else text[:BODY_MAX] + "..."


def record(method: str, path: str, body: Any, who: str, client: str, code: int, answer: Any) -> None:
    """One line per control request that passed authentication."""
    outcome = answer.get("message") or answer.get("error") if isinstance(answer, dict) else None
    log.info("audit: %s %s %s by %s from %s: %s%s", method, path[:100], summary(body), who, client, code,
             f" {summary(outcome)}" if outcome else "")
