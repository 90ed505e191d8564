"""Who may take the leader lock when nobody holds it: the race cases of the HA decision (their
rows are in ha.py's table, from failsafe_promised to leader_race). Pure."""
from __future__ import annotations

from typing import Optional

from governor import failsafe
from governor.cluster import Cluster, Switchover, failover_priority
from governor.hatypes import Action, Decision, LocalState, common_position
from governor.sync import describe as describe_sync
from governor.sync import voters as sync_voters


def _candidate_caught_up(cluster: Cluster, switchover: Switchover, local: LocalState) -> bool:
    """A switchover's candidate takes the lock without racing because its leader stopped only
    once the candidate had all of its WAL. When the leader lost its lock some other way (an etcd
    outage, a crash) that promise is void: the candidate is then trusted only within
    maximum_lag_on_failover of the last published position (in synchronous mode only when the
    promise says it holds every commit; otherwise the race's promise rules decide). A manual
    failover (no leader in the request) is the operator's explicit choice and always honoured."""
    if switchover.leader is None:
        return True
    promise = cluster.sync
    if promise is not None and promise.synchronous and promise.leader != local.name:
        # Synchronous mode: only the promise can tell who has every acknowledged commit. A leader
        # that stepped down cleanly names the standbys that streamed to the end, each of which
        # has every commit (quorum = all of them): a candidate among those is caught up.
        return switchover.candidate in promise.members and promise.quorum >= len(promise.members)
    if switchover.candidate == local.name:
        lsn = common_position(local.timeline, local.lsn, cluster.history)
    else:
        member = cluster.member(switchover.candidate)
        lsn = common_position(member.timeline, member.lsn, cluster.history) if member is not None else None
    if cluster.leader_lsn is None or lsn is None:
        return False
    return cluster.leader_lsn - lsn <= local.maximum_lag_on_failover


def decide_race(cluster: Cluster, local: LocalState, switchover: Optional[Switchover]) -> Decision:
    """Nobody holds the lock (and this member is not the cluster's first, nor empty)."""
    me = local.name
    if local.role == "replica":
        held_back = failsafe.race_hold(cluster, me, local.failsafe_promise, local.failsafe_fresh)
        if held_back is not None:
            return Decision(*held_back)
    if local.role == "replica" and local.writable_elsewhere:
        return Decision("race_other_primary_writable",
                        f"no leader, but {', '.join(local.writable_elsewhere)} still takes writes as a primary (its "
                        "governor is gone or frozen and nothing stopped it): promoting this member would make two "
                        "primaries; waiting until it stops or is demoted")
    if local.role == "replica" and local.unknown_elsewhere:
        return Decision("race_other_primary_unknown",
                        f"no leader, and {', '.join(local.unknown_elsewhere)} answers but cannot say whether it "
                        "takes writes: not promoting beside a server that may be a primary; asking again")
    if local.pre_promote_vetoed and local.role == "replica":
        return Decision("race_pre_promote_vetoed", "no leader; the pre_promote callback refused this member's "
                        "promotion less than ttl ago: not racing, so another member can lead", (Action.FOLLOW,))
    if switchover and local.role == "replica" and not _candidate_caught_up(cluster, switchover, local):
        switchover = None   # a switchover whose leader did not hand over cleanly: the normal race decides
    if switchover and local.role == "replica":
        if switchover.candidate == me:
            return Decision("switchover_take_over",
                            "this member is the operator's candidate (switchover or failover): taking the "
                            "lock and promoting",
                            (Action.ACQUIRE_LOCK, Action.PROMOTE, Action.ENSURE_SLOTS))
        # Keep the current upstream until the candidate holds the lock: dropping it now would only
        # delay reconnecting to the new primary (whose first commits may wait for this standby).
        return Decision("switchover_defer", f"switchover to {switchover.candidate} in progress: not racing, "
                        "keeping the current upstream until it holds the lock")
    if local.role == "primary":
        return Decision("primary_reacquire", "nobody holds the lock and this member is primary: taking it",
                        (Action.ACQUIRE_LOCK, Action.ENSURE_SLOTS))
    if local.tags.get("nofailover") or failover_priority(local.tags) == 0:
        return Decision("race_not_eligible_nofailover", "no leader; tagged nofailover (or failover_priority 0), so "
                        "not racing", (Action.FOLLOW,))
    # Positions on an older timeline count only up to where that timeline ended: WAL past the
    # switch point is WAL the later leaders never had, not progress.
    my_lsn = common_position(local.timeline, local.lsn, cluster.history)
    known = cluster.leader_lsn is not None and my_lsn is not None
    lag = max(0, cluster.leader_lsn - my_lsn) if known else None
    # No position published at all happens before any leader ran on this data (a cluster just
    # initialized from an existing data directory, keys wiped): the members compare among
    # themselves below. A position that is there but unreadable, or our own unknown, is unknown.
    lag_unknown = cluster.leader_lsn_unreadable or local.lsn is None
    sync = cluster.sync
    promised = sync is not None and sync.synchronous and sync.leader != me
    if promised and me not in sync.members:
        return Decision("race_not_synchronous",
                        f"no leader; {sync.leader} acknowledged commits only once {describe_sync(sync)} had "
                        "them, and this member is not one of them: not racing", (Action.FOLLOW,))
    if not promised and lag_unknown:
        missing = "the leader's last WAL position (optime/leader in etcd) is unreadable" \
            if cluster.leader_lsn_unreadable else "this member's own WAL position is unknown"
        return Decision("race_lag_unknown",
                        f"no leader; {missing}, so this member's lag cannot be known: not racing, to avoid losing "
                        "data (an operator can choose a member with governorctl failover)", (Action.FOLLOW,))
    if not promised and lag is not None and lag > local.maximum_lag_on_failover:
        return Decision("race_not_eligible_lag",
                        f"no leader; lag {lag} bytes exceeds maximum_lag_on_failover "
                        f"{local.maximum_lag_on_failover}: not racing, to avoid losing data", (Action.FOLLOW,))
    others = [local.peers.get(m.name, m) if m.name in local.peers else m
              for m in cluster.members if m.name != me]
    unreachable = sum(1 for m in others if m is None)
    others = [m for m in others if m is not None]  # a member that does not answer cannot block the race
    if promised:
        known_voters, needed = sync_voters(sync, me, local.lsn, [(m.name, m.lsn) for m in others])
        ahead = [name for name, lsn in known_voters if lsn > (local.lsn or 0)]
        if ahead:
            return Decision("race_wait_for_better",
                            f"no leader; synchronous member {ahead[0]} has received more WAL: letting it take over",
                            (Action.FOLLOW,))
        if len(known_voters) < needed:
            return Decision("race_sync_unproven",
                            f"no leader; {len(known_voters)} of the {needed} synchronous members needed to prove "
                            f"that no acknowledged commit is missing answered ({describe_sync(sync)}): waiting",
                            (Action.FOLLOW,))
    # Who would lead better: more WAL, or as much and a higher failover_priority. A member whose
    # pre_promote refused does not race, so it is not waited for (in synchronous mode the `ahead`
    # check above still waits for a member holding commits this one lacks: no acknowledged loss).
    mine = failover_priority(local.tags)
    rivals = [(common_position(m.timeline, m.lsn, cluster.history), failover_priority(m.tags), m) for m in others
              if m.state == "running" and m.role == "replica" and m.can_lead
              and (not promised or m.name in sync.members)]
    better = [(lsn, prio, m) for lsn, prio, m in rivals if lsn is not None and my_lsn is not None
              and (lsn > my_lsn or (lsn == my_lsn and prio > mine))]
    if better:
        lsn, prio, best = max(better, key=lambda b: (b[0], b[1]))
        why = f"has received more WAL ({best.lsn} > {local.lsn})" if lsn > my_lsn else \
            f"has as much WAL and a higher failover_priority ({prio} > {mine})"
        return Decision("race_wait_for_better", f"no leader; {best.name} {why}: letting it take over",
                        (Action.FOLLOW,))
    running = sum(1 for m in others if m.state == "running")
    return Decision("leader_race",
                    f"no leader: taking the lock and promoting (lag {lag if lag is not None else 'unknown'} bytes, "
                    f"{running} of "
                    f"{len(others) + unreachable} other members reachable and running"
                    + (f"; {describe_sync(sync)}, this member has every acknowledged commit)" if promised else ")"),
                    (Action.ACQUIRE_LOCK, Action.PROMOTE, Action.ENSURE_SLOTS), failover=True)
