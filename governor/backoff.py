"""How long the loop waits before its next pass."""
from __future__ import annotations

from typing import Optional

from governor import clock

FIRST_RETRY = 0.1


class Backoff:
    """After a pass whose action failed the loop runs again soon, to act on a lost race at once;
    each further failure in a row doubles the wait (0.1 s, 0.2 s, 0.4 s, ...) up to loop_wait, so
    an action that keeps failing (an initdb that cannot start, an unreachable leader) does not spin.
    A pass that succeeds resets it."""

    def __init__(self) -> None:
        self.failures = 0

    def next_delay(self, ok: bool, loop_wait: float, started: float, now: Optional[float] = None) -> float:
        now = clock.monotonic() if now is None else now
        if ok:
            self.failures = 0
            return loop_wait - (now - started)
        self.failures += 1
        return min(FIRST_RETRY * 2 ** min(self.failures - 1, 20), max(loop_wait, FIRST_RETRY))
