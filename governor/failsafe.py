"""Failsafe mode, the pure part: the member list the leader keeps in etcd, and the timing.

With `failsafe_mode: true` a leader that cannot use etcd stays primary only while every member of
the list it last wrote to etcd (the `failsafe` key) vouches for it, each pass, over the member
API (`POST /failsafe`). By vouching, a member promises not to race for the lock for `ttl` seconds
from the moment it answered; the leader's PostgreSQL may stay primary until `ttl` after it *sent*
the round every member answered (the lock fence is armed with that deadline, as with a lock
renewal). So every member that could take the lock is bound:

- a member on the list either vouched in the leader's last good round (and will not race until
  after the leader's deadline), or made the round fail (and the leader demotes before its
  deadline, as without failsafe);
- a member not on the list (it joined after the leader last wrote it, or its key had expired)
  does not race while a `failsafe` key exists: only the leader that wrote the key can vouch for
  it, and it does so at its next pass with etcd;
- a member whose governor started less than `ttl` ago does not know what it promised before, so
  it does not race until `ttl` has passed;
- a `failsafe` key that does not parse is unknown, and nobody races on unknown.

The leader keeps the key current while it holds the lock, and deletes it when failsafe_mode is
turned off.
"""
from __future__ import annotations

from typing import TYPE_CHECKING, Optional, Tuple

from governor.failsafelist import FailsafeList

if TYPE_CHECKING:
    from governor.cluster import Cluster



def margin_for(ttl: float) -> float:
    """The lock fence's margin before a deadline (lockfence.margin_for, repeated here so the
    pure modules need not import the fence's thread)."""
    return max(1.5, min(0.2 * ttl, 5.0))


def timing(ttl: float, loop_wait: float, retry_timeout: float) -> Optional[Tuple[float, float]]:
    """(seconds a round waits for the members' answers, seconds an etcd read may take during an
    outage), or None when the timing leaves no room for failsafe.

    A round sent at s keeps PostgreSQL primary until s + ttl, minus the fence's margin; the next
    round is sent at most round + loop_wait + read later and answered a round after that. With
    round + read = retry_timeout and round <= retry_timeout - margin - 0.5 s (the rest of a pass),
    loop_wait + 2 * retry_timeout <= ttl (the rule every configuration obeys) keeps that inside.
    The first round follows the last renewal by loop_wait + a whole failed read (retry_timeout):
    it must be answered by ttl - margin after that renewal too."""
    margin = margin_for(ttl)
    answer = min(retry_timeout - margin - 0.5, retry_timeout / 2, ttl - margin - loop_wait - retry_timeout - 0.5)
    if answer < 1.0:
        return None
    return answer, retry_timeout - answer


def timing_problem(ttl: float, loop_wait: float, retry_timeout: float) -> Optional[str]:
    if timing(ttl, loop_wait, retry_timeout) is not None:
        return None
    return (f"failsafe_mode needs at least 1 s for the members to answer before the lock fence's margin "
            f"({margin_for(ttl):g} s at ttl {ttl:g}): retry_timeout - margin - 0.5 and ttl - margin - loop_wait - "
            f"retry_timeout - 0.5 must both be >= 1; got ttl {ttl:g}, loop_wait {loop_wait:g}, retry_timeout "
            f"{retry_timeout:g}")


def wanted(cluster: Cluster, me: str, mode: bool) -> Optional[FailsafeList]:
    """The `failsafe` key a leader keeps: every other member with an API address, or none when
    failsafe_mode is off."""
    if not mode:
        return None
    return FailsafeList(me, {m.name: m.api_url for m in cluster.members if m.name != me and m.api_url})


def race_hold(cluster: Cluster, me: str, promise: Optional[str], fresh: bool) -> Optional[Tuple[str, str]]:
    """Nobody holds the lock and this member is a replica: (case, why) when the rules above keep
    it from racing a leader that may still be primary on its members' promises; None: it races."""
    if promise is not None:
        return ("failsafe_promised", f"no leader in etcd, but this member vouched for {promise} less than ttl ago "
                "(failsafe): not racing while that promise holds")
    if cluster.failsafe_unreadable:
        return ("failsafe_list_unknown", "no leader in etcd and the failsafe member list does not parse: a leader "
                "may be primary on promises this member cannot check, so it does not race")
    listed = cluster.failsafe
    if listed is None:
        return None
    if me not in listed.members:
        return ("failsafe_not_listed", f"no leader in etcd, and {listed.leader}'s failsafe list does not name this "
                f"member: {listed.leader} may still be primary on its listed members' promises, so only they race")
    if fresh:
        return ("failsafe_promise_unknown", "no leader in etcd, and governor started less than ttl ago: what this "
                "member promised before (failsafe) is unknown, so it does not race until ttl has passed")
    return None
