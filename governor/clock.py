"""The node's clock, as a port: every reading of time in the pass, the executors, the lock fence and
the etcd adapters goes through here, so time is an input. The daemon runs on the system clock; the
simulator (tests/sim) installs its own, one per member while that member's code runs (skew, jumps,
and the time a pass spends waiting all become its to choose).

monotonic() for durations and deadlines (never compared across hosts), wall() for what is shown or
compared with other hosts' wall clocks (scheduled restarts and switchovers), sleep() for waits."""
from __future__ import annotations

import time
from typing import Protocol


class Clock(Protocol):
    def monotonic(self) -> float: ...

    def wall(self) -> float: ...

    def sleep(self, seconds: float) -> None: ...


class SystemClock:
    def monotonic(self) -> float:
        return time.monotonic()

    def wall(self) -> float:
        return time.time()

    def sleep(self, seconds: float) -> None:
        time.sleep(seconds)


SYSTEM = SystemClock()
_current: Clock = SYSTEM


def monotonic() -> float:
    return _current.monotonic()


def wall() -> float:
    return _current.wall()


def sleep(seconds: float) -> None:
    _current.sleep(seconds)


def install(clock: Clock) -> Clock:
    """Make `clock` the one every reading goes to; returns the one it replaces."""
    global _current
    before, _current = _current, clock
    return before
