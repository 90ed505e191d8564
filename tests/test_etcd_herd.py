"""Many members meeting an etcd that does not answer (a restart of an etcd that serves a fleet)
must not hammer it, and must not all come back at the same instant: between rounds over the
endpoints an etcd call waits 0.5 s, then 1 s, 2 s (at most), each wait drawn between half and
all of that. bench/fleet.py --model met the herd: 3,000 members asking twice a second kept a
restarted etcd from answering for 18.5 s."""
from __future__ import annotations

from typing import List

import pytest

from governor import clock
from governor.dcs import rotation
from governor.dcs.errors import DCSError
from governor.dcs.rotation import Rotating, TryNext
from tests.test_watchdogfeed import Fake as FakeClock


class Config:
    hosts = (("10.0.0.1", 2379),)


class Member(Rotating):
    def __init__(self) -> None:
        self._init_rotation(Config(), 10.0)
        self.pass_deadline = None
        self.observer = None
        self.asked: List[float] = []

    def call(self) -> None:
        def ask(endpoint, deadline):
            self.asked.append(clock.monotonic())
            raise TryNext("connection refused")
        self._first_answer("lease keepalive", None, ask)


@pytest.fixture
def fake_clock():
    rotation.jitter.seed(1)        # the draws repeat, whatever ran before
    fake = FakeClock()
    before = clock.install(fake)
    yield fake
    clock.install(before)


def test_a_member_backs_off_while_etcd_does_not_answer(fake_clock):
    member = Member()
    with pytest.raises(DCSError, match="unreachable"):
        member.call()
    gaps = [b - a for a, b in zip(member.asked, member.asked[1:])]
    assert len(member.asked) <= 12                 # was 21: every 0.5 s for 10 s; 12 if every draw is ½
    assert all(0.25 <= gap <= 2.0 for gap in gaps)
    assert max(gaps) >= 1.0


def test_members_that_lost_etcd_together_do_not_retry_together(fake_clock):
    rotation.jitter.seed(7)
    times = []
    for _ in range(20):
        member = Member()
        fake_clock.now = 1000.0
        with pytest.raises(DCSError):
            member.call()
        times.append(round(member.asked[2] - member.asked[0], 3))
    assert len(set(times)) >= 15                   # was 1: everyone at 0.5 and 1.0 s
