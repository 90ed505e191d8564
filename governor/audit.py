"""The audit trail of control requests: who asked for what, from where, and what came of it.

Every control request the API serves (switchover, failover, restart, reinitialize, PATCH
/config, ...) is logged on one line at INFO (the journal under systemd): the action, what it was
about, the authenticated user or certificate subject, the client's address and the answer.
Refused requests (no valid credentials) are logged at WARNING. The newest KEEP records are also
kept in etcd (the `audit` key), with those of governorctl's own writes to etcd (pause, resume,
edit-config, ...: the OS user and host it ran as, as it says), for `governorctl history
--actions`. Nothing secret is in a request a control endpoint accepts, and values are cut short
and escaped so a request cannot forge lines. The members' own failsafe round (POST /failsafe)
is not an operator's action and is left out.
"""
from __future__ import annotations

import json
import logging
from typing import Any, Dict, Optional

from governor import clock

log = logging.getLogger("governor.audit")
BODY_MAX = 300
KEEP = 50
NOT_OPERATOR_ACTIONS = ("/failsafe",)


def summary(body: Any) -> str:
    """A request body as it appears in the trail: compact JSON, escaped, at most BODY_MAX characters."""
    try:
        text = json.dumps(body, separators=(",", ":"), sort_keys=True, ensure_ascii=True, default=str)
    except (TypeError, ValueError, RecursionError):
        text = "?"
    return text if len(text) <= BODY_MAX else text[:BODY_MAX] + "..."


def record(member: str, method: str, path: str, body: Any, who: str, client: str, code: int,
           answer: Any) -> Optional[Dict[str, Any]]:
    """One line per control request that passed authentication; the record for etcd (None for
    the members' own requests, which are logged at DEBUG only)."""
    outcome = answer.get("message") or answer.get("error") if isinstance(answer, dict) else None
    line = (f"audit: {method} {path[:100]} {summary(body)} by {who} from {client}: {code}"
            f"{' ' + summary(outcome) if outcome else ''}")
    if path in NOT_OPERATOR_ACTIONS:
        log.debug("%s", line)
        return None
    log.info("%s", line)
    return {"time": round(clock.wall(), 3), "member": member, "action": f"{method} {path[:100]}",
            "request": summary(body), "by": who, "from": client, "result": code,
            "outcome": summary(outcome) if outcome else None}
