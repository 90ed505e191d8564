"""What both etcd adapters do around each request: try the endpoints in turn, starting with the
one that answered last, until one answers or the time budget is spent (pausing after each full
round: 0.5 s, 1 s, then 2 s, each drawn between half and all of that, so that a fleet of members
that lost etcd together neither hammers it nor comes back in step), and report the call's duration
and outcome to the observer (metrics)."""
from __future__ import annotations

import random
from typing import Any, Callable, List, Optional, Tuple, TypeVar

from governor import clock
from governor.dcs.errors import DCSError

T = TypeVar("T")
ROUND_PAUSES = (0.5, 1.0, 2.0)     # after the first, second, third and later rounds without an answer
jitter = random.Random()           # the simulator seeds it (its runs repeat)
Endpoint = Tuple[str, int]


class TryNext(Exception):
    """This endpoint did not answer (as opposed to an answer that refuses): ask the next one."""


class Rotating:
    """Mixed into an adapter, which holds `cfg` (its hosts), `retry_timeout`, `pass_deadline`,
    `observer` (all changeable from outside: a reload, the loop) and `_current`, the index of the
    endpoint that answered last."""
    cfg: Any
    retry_timeout: float
    pass_deadline: Optional[float]
    observer: Optional[Callable[[str, float, bool], None]]
    _current: int
    request_timeout: float

    def _init_rotation(self, cfg: Any, retry_timeout: float) -> None:
        self.cfg = cfg
        self.retry_timeout = retry_timeout
        self.request_timeout = max(1.0, min(retry_timeout / 2.0, 5.0))    # one request, of the budget
        self._current = 0

    def _deadline(self, budget: Optional[float]) -> float:
        own = clock.monotonic() + (budget if budget is not None else self.retry_timeout)
        return min(own, self.pass_deadline or own)

    def _first_answer(self, what: str, budget: Optional[float], ask: Callable[[Endpoint, float], T]) -> T:
        """`ask(endpoint, deadline)` of each endpoint in turn; one that raises TryNext is passed
        over; any other exception ends the call. DCSError when none answered in time."""
        started = clock.monotonic()
        ok = False
        try:
            result = self._rotate(what, self._deadline(budget), ask)
            ok = True
            return result
        finally:
            if self.observer is not None:
                self.observer(what, clock.monotonic() - started, ok)

    def _rotate(self, what: str, deadline: float, ask: Callable[[Endpoint, float], T]) -> T:
        hosts: List[Endpoint] = list(self.cfg.hosts)
        errors: List[str] = []
        attempt = 0
        while True:
            index = (self._current + attempt) % len(hosts)
            endpoint = hosts[index]
            try:
                result = ask(endpoint, deadline)
                self._current = index
                return result
            except TryNext as exc:
                errors.append(f"{endpoint[0]}:{endpoint[1]}: {exc}")
            attempt += 1
            if clock.monotonic() >= deadline:
                break
            if attempt % len(hosts) == 0:
                pause = ROUND_PAUSES[min(attempt // len(hosts), len(ROUND_PAUSES)) - 1]
                clock.sleep(min(pause * jitter.uniform(0.5, 1.0), max(0.0, deadline - clock.monotonic())))
        raise DCSError(f"etcd unreachable during {what}: {'; '.join(errors[-len(hosts):])}")
