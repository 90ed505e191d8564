"""What every executor shares."""
from __future__ import annotations

from typing import TYPE_CHECKING, Optional

if TYPE_CHECKING:
    from governor.ports import ActionHost


class ActionFailed(Exception):
    """An action could not be carried out; the rest of the decision is skipped."""


def before_stop(g: ActionHost, role: Optional[str]) -> None:
    """The before_stop callback, waited for within its timeout and, while this member holds the
    lock (PostgreSQL may be a writable primary), within what the lock leaves before the fence
    would act: nothing renews the lock meanwhile. Its exit status changes nothing."""
    left = g.lock_left()
    limit = g.config.callbacks.timeout if left is None else left - g.fence.margin - g.config.retry_timeout
    if limit >= 0.5:
        g.callbacks.wait(g.config.callbacks, "before_stop", role or "replica", limit)
