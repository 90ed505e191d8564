"""systemd's watchdog fed by a thread of its own (governor/watchdogfeed.py): a slow etcd is not a
hung loop, and a frozen leader is still killed and fenced before its lock expires."""
from __future__ import annotations

from typing import List, Optional

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from governor import clock
from governor.lockfence import margin_for
from governor.watchdogfeed import FENCE_SECONDS, WatchdogFeeder, pass_limit, watchdog_seconds_for


class Fake:
    def __init__(self) -> None:
        self.now = 1000.0

    def monotonic(self) -> float:
        return self.now

    def wall(self) -> float:
        return 1.8e9 + self.now

    def sleep(self, seconds: float) -> None:
        self.now += seconds


@pytest.fixture
def fake():
    f = Fake()
    before = clock.install(f)
    yield f
    clock.install(before)


def feeder(timeout: float, deadline: List[Optional[float]]) -> WatchdogFeeder:
    return WatchdogFeeder(lambda: None, lambda: timeout, lambda: deadline[0])


def test_no_ping_before_the_loop_said_when_it_reports(fake):
    assert not feeder(2.5, [None]).may_ping(fake.now)


def test_a_replica_waiting_for_etcd_is_fed_until_its_pass_overruns_its_own_limit(fake):
    f = feeder(2.5, [None])
    f.expect_within(pass_limit(2))         # a pass at retry_timeout 2: up to 34 s
    fake.now += 20                          # ten etcd timeouts in a row: still a pass within its limit
    assert f.may_ping(fake.now)
    fake.now += 14.5                        # past it: a hung loop
    assert not f.may_ping(fake.now)
    f.expect_within(1.0)                    # the loop came back and sleeps
    assert f.may_ping(fake.now)


def test_a_leader_is_fed_only_while_a_freeze_now_would_be_fenced_before_its_lock_expires(fake):
    deadline: List[Optional[float]] = [fake.now + 5]     # ttl 5, renewed just now
    timeout = watchdog_seconds_for(5, 25)
    f = feeder(timeout, deadline)
    f.expect_within(pass_limit(2))
    assert f.may_ping(fake.now)
    fake.now += 5 - timeout - FENCE_SECONDS + 0.01
    assert not f.may_ping(fake.now)
    # The lock fence fires at its margin (before systemd's kill could come) and disarms: fed again.
    fake.now = deadline[0] - margin_for(5)
    last_ping = deadline[0] - timeout - FENCE_SECONDS
    assert fake.now < last_ping + timeout, "the lock fence fires before systemd would kill"
    deadline[0] = None
    assert f.may_ping(fake.now)


@pytest.mark.parametrize("ttl,unit,expected", [(5, 25, 2.5), (10, 25, 7.0), (30, 25, 24.0), (60, 25, 25.0),
                                               (3, 25, 1.0)])
def test_systemds_timeout_for_a_ttl(ttl, unit, expected):
    assert watchdog_seconds_for(ttl, unit) == pytest.approx(expected)


@settings(max_examples=300, derandomize=True, deadline=None)
@given(ttl=st.integers(3, 120), unit=st.floats(1, 300), renewed=st.floats(0, 200), at=st.floats(0, 200))
def test_a_process_frozen_right_after_any_ping_is_killed_and_fenced_before_the_lock_expires(ttl, unit, renewed, at):
    fake = Fake()
    before = clock.install(fake)
    try:
        timeout = watchdog_seconds_for(ttl, unit)
        deadline = fake.now + renewed - 100 + ttl
        f = feeder(timeout, [deadline])
        f.expect_within(1e6)
        now = fake.now + at - 100
        if f.may_ping(now):
            assert now + timeout + FENCE_SECONDS <= deadline
        assert margin_for(ttl) > FENCE_SECONDS, "the lock fence fires before the kill a paused feeder risks"
    finally:
        clock.install(before)
