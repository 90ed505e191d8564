"""Rules of the real code switched off, one at a time, for the simulator to show that its
invariants catch what each rule guards. Each is a patch of governor's own functions (or of the
members' configuration), applied with a pytest MonkeyPatch for the length of a search."""
from __future__ import annotations

from dataclasses import replace
from types import SimpleNamespace
from typing import Callable, Dict

import pytest

from governor import daemon, ha, observe, race, sleeping, standby, sync, syncrep, vouch
from governor.actions import lock, roles
from governor.dcs.etcd3 import Etcd3
from governor.leaderlock import LeaderLock
from governor.lockfence import LockFence
from governor.postgres import server
from tests.sim import node
from tests.sim.etcd import b64

Patch = Callable[[pytest.MonkeyPatch], None]


def _decide(mp: pytest.MonkeyPatch, change: Callable) -> None:
    real = ha.decide

    def decide(cluster, local):
        return change(real, cluster, local)
    mp.setattr(daemon, "decide", decide)


def no_lag_check(mp: pytest.MonkeyPatch) -> None:
    """maximum_lag_on_failover not honoured in the race."""
    _decide(mp, lambda real, cluster, local: real(cluster, replace(local, maximum_lag_on_failover=10**12)))


def no_expiry_demotion(mp: pytest.MonkeyPatch) -> None:
    """A primary that cannot reach etcd, or whose lock is about to expire, stays primary."""
    def change(real, cluster, local):
        decision = real(cluster, local)
        if decision.case in ("dcs_unreachable_demote", "lock_expiring_demote"):
            return replace(decision, actions=())
        return decision
    _decide(mp, change)


def no_fence(mp: pytest.MonkeyPatch) -> None:
    """Neither the lock fence thread nor the supervising parent stops PostgreSQL."""
    mp.setattr(LockFence, "due", lambda self: None)
    mp.setattr(node.Supervisor, "__call__", lambda self, deadline: None)


def no_fence_no_demotion(mp: pytest.MonkeyPatch) -> None:
    no_fence(mp)
    no_expiry_demotion(mp)


def renewal_without_cas(mp: pytest.MonkeyPatch) -> None:
    """The lock is renewed by writing it, whoever holds it."""
    def renew(self, name):
        self._recent_keepalive()
        key = self._key("leader")
        self._post("renewal", "/kv/put", {"key": b64(key), "value": b64(name),
                                          "lease": self._member_lease()})
        return True
    mp.setattr(Etcd3, "renew_leader", renew)


def no_sync_promise(mp: pytest.MonkeyPatch) -> None:
    """synchronous mode, but the race does not read the leader's promise (the `sync` key)."""
    _decide(mp, lambda real, cluster, local: real(replace(cluster, sync=None) if cluster else None, local))


def failsafe_promise_ignored(mp: pytest.MonkeyPatch) -> None:
    """failsafe: a member races the leader it vouched for."""
    mp.setattr(vouch, "promised_to", lambda g: None)
    mp.setattr(vouch, "start_racing", lambda g: None)


def failsafe_list_ignored(mp: pytest.MonkeyPatch) -> None:
    """failsafe: members off the list, or just started, race."""
    _decide(mp, lambda real, cluster, local: real(replace(cluster, failsafe=None) if cluster else None,
                                                  replace(local, failsafe_fresh=False)))


def standby_setting_ignored(mp: pytest.MonkeyPatch) -> None:
    """decide() is not shown the standby_cluster setting."""
    def change(real, cluster, local):
        if cluster is not None and standby.KEY in cluster.config:
            cluster = replace(cluster, config={k: v for k, v in cluster.config.items() if k != standby.KEY})
        return real(cluster, local)
    _decide(mp, change)


def promotion_without_reread(mp: pytest.MonkeyPatch) -> None:
    """A promotion decided before demote-cluster, carried out after it, does not read the setting again
    (run with wait_decision=False: the operator waits for the leader's role alone)."""
    mp.setattr(roles, "standby", SimpleNamespace(of=lambda cluster: (False, None)))


def no_recheck_after_acquire(mp: pytest.MonkeyPatch) -> None:
    """A promotion does not re-read the positions once it holds the lock (the fix of a stale promotion
    by a slow host that the first simulator found at schedule 6,869)."""
    mp.setattr(lock, "_still_eligible", lambda g, seen: None)


def fence_dropped_with_the_lock(mp: pytest.MonkeyPatch) -> None:
    """A leader that loses its lock (a failed renewal, another holder seen) disarms its lock fence even
    while PostgreSQL is still primary (the hole the first simulator found in failsafe mode)."""
    real = LeaderLock.lost
    mp.setattr(LeaderLock, "lost", lambda self, keep_fence=False: real(self, False))


def switchover_candidate_on_the_lag_rule(mp: pytest.MonkeyPatch) -> None:
    """In synchronous mode, a switchover candidate whose leader did not hand over cleanly is trusted on
    the lag rule instead of the promise (found by the first simulator)."""
    real = race._candidate_caught_up
    mp.setattr(race, "_candidate_caught_up",
               lambda cluster, switchover, local: real(replace(cluster, sync=None), switchover, local))


def async_widens_the_promise(mp: pytest.MonkeyPatch) -> None:
    """Leaving degraded mode, the promise is widened with the asynchronous one (quorum 0): it stays
    asynchronous while PostgreSQL already waits for the new standbys (found by this simulator)."""
    mp.setattr(syncrep, "promise_for_change",
               lambda ours, applied, target: sync.widened(*(s for s in (ours, applied, target) if s is not None)))


def vouch_from_nothing_while_reading(mp: pytest.MonkeyPatch) -> None:
    """A pass forgets what it knew of PostgreSQL when it starts reading it again: a member asked to
    vouch meanwhile refuses ('not running as a replica'; found by the failsafe integration tests)."""
    real = daemon.observe_local

    def observe_local(g):
        g.server_state = None
        return real(g)
    mp.setattr(daemon, "observe_local", observe_local)


def replica_timeline_from_the_restartpoint(mp: pytest.MonkeyPatch) -> None:
    """A standby without a WAL receiver is taken to be on its last restartpoint's timeline: neither
    the highest timeline it was seen streaming nor the WAL segments it received count (the false
    divergence of issue 15, and its second half: a timeline streamed only briefly)."""
    mp.setattr(observe, "_replica_timeline", lambda g, st: st.timeline)
    start = server.STATE_QUERY.index("greatest(")
    end = server.STATE_QUERY.index("),\n", server.STATE_QUERY.index("pg_ls_waldir()")) + 1
    mp.setattr(server, "STATE_QUERY", server.STATE_QUERY[:start]
               + "(SELECT timeline_id FROM pg_control_checkpoint())" + server.STATE_QUERY[end:])


def not_streaming_timer_across_leaders(mp: pytest.MonkeyPatch) -> None:
    """A replica's time without streaming counts on when the leader changes."""
    real = observe._not_streaming_for

    def not_streaming_for(g, st):
        g.mem.not_streaming_from = g.cluster.leader.name if g.cluster is not None and g.cluster.leader else None
        return real(g, st)
    mp.setattr(observe, "_not_streaming_for", not_streaming_for)


def wake_cleared_when_sleeping(mp: pytest.MonkeyPatch) -> None:
    """The loop clears its wake as it goes to sleep: a change seen while the pass ran (the lock it
    just took) waits for loop_wait."""
    real = sleeping.start_watching

    def start_watching(g):
        g.wake.clear()
        real(g)
    mp.setattr(sleeping, "start_watching", start_watching)


BROKEN: Dict[str, tuple] = {
    "no lag check in the leader race": (no_lag_check, "bounded_loss", {}),
    "no lock fence and no demotion on etcd loss": (no_fence_no_demotion, "one_writer", {}),
    "no lock fence (a frozen loop's primary outlives its lock)": (no_fence, "one_writer", {}),
    "lock renewed without compare-and-swap": (renewal_without_cas, "one_writer", {}),
    "synchronous mode without the sync promise in the race": (no_sync_promise, "sync_loss", {"synchronous": True}),
    "failsafe: a member races the leader it vouched for": (failsafe_promise_ignored, "one_writer",
                                                           {"failsafe_mode": True}),
    "failsafe: members off the list or just restarted race": (failsafe_list_ignored, "one_writer",
                                                              {"failsafe_mode": True}),
    "standby cluster: the standby_cluster setting ignored": (standby_setting_ignored, "standby_writer",
                                                             {"standby": True}),
}
