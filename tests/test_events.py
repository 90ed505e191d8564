"""Nothing waits for the next loop: with loop_wait 30, a bootstrap, a rejoin and a switchover
all finish (PostgreSQL streaming, and /status saying so) in a fraction of it. Each step that
waited for a loop before took at least loop_wait here; the figures themselves come from
bench/failover.py."""
from __future__ import annotations

import signal
import time

import pytest

from tests import harness
from tests.harness import wait_until

pytestmark = pytest.mark.integration
SLOW_LOOP = {"loop_wait": 30, "retry_timeout": 10, "etcd": {"ttl": 60}}
WITHIN = 15.0   # seconds: half a loop


def test_bootstrap_rejoin_and_switchover_do_not_wait_for_the_loop(make_cluster):
    cluster = make_cluster("ev")
    started = time.monotonic()
    for name in ("node1", "node2", "node3"):
        cluster.add(name, extra=SLOW_LOOP)
    primary = cluster.wait_for_primary(60)
    # Replicas clone as soon as `initialize` is written; the leader makes their slots as soon as
    # their member keys appear; each reports streaming as soon as it streams.
    wait_until(lambda: primary.streaming_walsenders() == 2, 60, "two streaming replicas", interval=0.1)
    replicas = [n for n in cluster.nodes.values() if n is not primary]
    wait_until(lambda: all(n.reports_streaming() for n in replicas), 60, "replicas to report streaming",
               interval=0.1)
    took = time.monotonic() - started
    assert took < 20, f"bootstrap to three reporting members took {took:.1f}s with loop_wait 30"

    # A replica's governor restarts: the replica is reported streaming again at once.
    replica = replicas[0]
    replica.signal(signal.SIGTERM)
    assert replica.proc.wait(60) == 0
    restarted = time.monotonic()
    replica.start()
    wait_until(lambda: replica.reports_streaming(), 60, f"{replica.name} to report streaming", interval=0.1)
    took = time.monotonic() - restarted
    assert took < WITHIN, f"{replica.name} reported streaming {took:.1f}s after its restart"

    # A switchover: both other members stream from the new primary (its slots made in the
    # promotion's pass) and report it, well within one loop.
    candidate = replicas[1]
    asked = time.monotonic()
    result = harness.governorctl(primary, "switchover", "--candidate", candidate.name, "--wait", "30")
    assert result.returncode == 0, result.stderr
    wait_until(lambda: candidate.streaming_walsenders() == 2, 60, "both others to stream from the new primary",
               interval=0.1)
    all_streaming = time.monotonic() - asked
    followers = [n for n in cluster.nodes.values() if n is not candidate]
    wait_until(lambda: all(n.reports_streaming() for n in followers), 60, "the others to report streaming",
               interval=0.1)
    reported = time.monotonic() - asked
    assert all_streaming < WITHIN, f"all members streaming {all_streaming:.1f}s after the switchover command"
    assert reported < WITHIN, f"all members reported streaming {reported:.1f}s after the switchover command"
    assert [n.name for n in cluster.primaries()] == [candidate.name]

    # The new leader's API knows at once that it leads and that the old primary is a running
    # replica again (both learnt from the watch, not from a pass loop_wait later): a switchover
    # back is accepted as soon as the old primary reports streaming.
    back = harness.governorctl(candidate, "switchover", "--candidate", primary.name, "--wait", "30")
    assert back.returncode == 0, back.stderr
    assert time.monotonic() - asked < 2 * WITHIN
    assert [n.name for n in cluster.primaries()] == [primary.name]
