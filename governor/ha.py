"""The HA decision: a pure function of (DCS snapshot, local PostgreSQL state) -> one Decision.

No I/O happens here. The daemon executes the returned actions in order; when one fails (a lost
race, a failed compare-and-swap) the rest are skipped and the loop runs again at once.

Cases, checked top to bottom (the first that matches wins):

  case                          when                                          actions
  ----------------------------  --------------------------------------------  ---------------------------
  failsafe_keep_primary         etcd unusable, failsafe_mode, this primary    failsafe_hold (the fence's
                                holds the lock, and every member of its       deadline: that round + ttl)
                                failsafe list vouched for it this pass
  failsafe_demote               same, but some member did not vouch           demote, start_as_replica
  lock_expiring_demote          etcd did not answer and our lock expires      demote, start_as_replica
                                within retry_timeout + 1 s: no waiting again  (following nobody)
  dcs_unreachable_demote        etcd unreachable, local server is a primary   demote, start_as_replica
  dcs_unreachable               etcd unreachable otherwise                    -
  data_dir_not_postgres         data_dir holds files that are not PostgreSQL  -  (never touched)
  foreign_data_dir              system identifier differs from `initialize`  -  (never touched)
  upgrade_unknown               the `upgrade` key does not parse: hold        (renew_lock)
  upgrade_rollback              upgrading leader (upgrade_plan.py's steps),   (renew_lock), upgrade_rollback
                                failed or aborted before `starting`
  upgrade_stop                  upgrading leader, upgrade requested           (renew_lock), upgrade_stop
  upgrade_pg_upgrade            upgrading leader, old version stopped         (renew_lock), upgrade_run
  upgrade_start_new             upgrading leader, pg_upgrade done (or the     (renew_lock), upgrade_start
                                new version not running yet)
  upgrade_done                  upgrading leader on the new version, every    renew_lock, ensure_slots,
                                other member running it as a replica          manage_sync, upgrade_done
  upgrade_hold                  another member upgrades: no failover          - (start_as_replica if stopped)
  upgrade_link                  the leader runs the new version and left a    upgrade_link
                                seed; this data directory is the old system's
                                (its files are linked, the catalogs fetched)
  upgrade_reclone               the leader runs the new version; this data    upgrade_set_aside, clone
                                directory is the old system's (no seed, or
                                linking failed here)
  restart_requested             operator asked to restart PostgreSQL here    (renew_lock), restart
  scheduled_restart_skipped     an operator's scheduled restart is due, but   forget_scheduled_restart
                                PostgreSQL is not running, or it was for a
                                pending setting and none is pending
  scheduled_restart_due         an operator's scheduled restart is due (the  (renew_lock),
                                leader waits, at most LEADER_RESTART_WAIT,   forget_scheduled_restart,
                                while running replicas have one due no later restart
                                than its own: replicas first, leader last)
  reinitialize_requested        operator asked to re-clone this replica      reinitialize
  paused_leader                 maintenance mode, this member holds the lock renew_lock, manage_sync
  paused_primary_reacquire      maintenance mode, nobody holds the lock,     acquire_lock
                                running as primary (e.g. moved to a new etcd)
  paused                        maintenance mode otherwise                   -
  standby_cluster_unknown       the standby_cluster setting does not parse:   -  (or renew_lock when this
                                no bootstrap, promotion or race (unknown is  member holds it)
                                never "may be primary"); else as below
  bootstrap_gave_up             cluster not initialized, data_dir empty,     -  (operator must act)
                                BOOTSTRAP_ATTEMPTS failed bootstraps in a row
  bootstrap_race                cluster not initialized, data_dir empty      bootstrap
  standby_bootstrap_race        as bootstrap_race, standby_cluster set        bootstrap (pg_basebackup of
                                                                             the primary cluster)
  initialize_from_existing      cluster not initialized, data_dir has data   claim_initialize
  bootstrap_in_progress         another member is running initdb             -
  clone_from_replica            data_dir empty, a leader is running, and a   clone (from that replica,
                                streaming replica is tagged clonefrom        then following the leader)
  clone_from_leader             data_dir empty, a leader is running          clone
  wait_for_leader_to_clone      data_dir empty, no usable leader             -
  standby_leader_rewind_failed  standby_cluster set, holds the lock (these   renew_lock (operator must act)
                                seven: standby.py), pg_rewind failed
  standby_leader_demote         ... running as primary (demote-cluster)      demote, rewind, start_as_replica
  standby_leader_rewind         ... former primary (not rewound yet)         renew_lock, rewind, start_as_replica
  standby_leader_diverged       ... not streaming for max(5 s, 2 * loop_wait) renew_lock, rewind,
                                while the primary cluster is on a later      start_as_replica
                                timeline (asked with IDENTIFY_SYSTEM)
  standby_leader_start          ... stopped                                  renew_lock, start_as_replica
  standby_leader_starting       ... not accepting queries yet                renew_lock
  standby_leader_follow_remote  ... running as a standby (never promoted;    renew_lock, follow (the
                                its lock arms no fence: nothing writable)    primary cluster), replica_slots
  rewind_failed_reclone         pg_rewind failed, remove_data_directory_on_  reinitialize (then clone)
                                rewind_failure: start afresh from the leader
  rewind_failed_wait            pg_rewind failed, no permission to re-clone  -  (operator must act)
  switchover_await_candidate    stopped after stepping down, switchover due  -
  start_timeout_release         holds the lock, PostgreSQL not up for        release_lock
                                primary_start_timeout: let a replica lead
  start_lock_holder             stopped, this member holds the lock          renew_lock, start_as_leader
  rewind_await_leader           former primary (stopped, or a replica not    -  (its member key wakes us)
                                yet rewound), the lock holder does not run
                                as primary yet (still promoting: pg_rewind
                                would compare against a standby's stale
                                control file and copy needlessly, or find
                                nothing to rewind that is there)
  rewind_then_follow            stopped former primary, another leader       rewind, start_as_replica
                                running as primary
  start_following_leader        stopped, another member holds the lock       start_as_replica
  start_read_only               stopped, nobody holds the lock               start_as_replica
  lock_holder_starting          holds the lock, running but not accepting     renew_lock
                                queries yet (crash recovery under the lock)
  postgres_not_answering        running but not accepting queries            -
  switchover_not_ready          holds the lock, switchover due, candidate    renew_lock, ensure_slots,
                                not a running replica (postponed)            manage_sync
  switchover_step_down          holds the lock, switchover to another member step_down
  leader_renew                  holds the lock, running as primary           renew_lock, ensure_slots,
                                                                             manage_sync (, failsafe_list
                                                                             when the key differs)
  lock_held_promote             holds the lock, running as replica           renew_lock, promote, ensure_slots
  demote_other_leader           primary, but another member holds the lock   demote, rewind, start_as_replica
                                and runs as primary
  demote_for_new_leader         primary, another member holds the lock but   demote (pg_rewind once it runs
                                does not run as primary yet (or unknown)     as primary)
  rewind_demoted                replica that was primary, another leader     rewind, start_as_replica
                                running as primary
  replica_diverged              replica not streaming for max(5 s,           rewind, start_as_replica
                                2 * loop_wait) while the running leader is
                                on a later timeline: it may hold WAL the
                                leader never had
  follow_cascade                replica tagged replicatefrom, and that       follow (that member),
                                member runs as a replica on the leader's     replica_slots
                                timeline (Cluster.upstream_of)
  follow_leader                 replica, another member holds the lock       follow, replica_slots (slots
                                                                             of members streaming from it,
                                                                             permanent slots' copies)
  standby_primary_take_lock     standby cluster, nobody holds the lock,       acquire_lock (then
                                running as primary                           standby_leader_demote)
  standby_race_not_eligible     standby cluster, nobody holds the lock,       -
                                tagged nofailover
  standby_leader_race           standby cluster, nobody holds the lock       acquire_lock, follow (remote)
  failsafe_promised             nobody holds the lock, this replica vouched   -  (keeps its upstream)
                                for a leader less than ttl ago
  failsafe_list_unknown         nobody holds the lock, `failsafe` key does    -
                                not parse
  failsafe_not_listed           nobody holds the lock, the failsafe list      -
                                does not name this replica
  failsafe_promise_unknown      nobody holds the lock, listed, governor       -
                                started less than ttl ago
  race_other_primary_writable   nobody holds the lock, and another server of  -  (keeps its upstream)
                                this cluster (a member, the last leader, the
                                upstream; asked directly) still takes writes:
                                its governor is gone or frozen
  race_other_primary_unknown    ... answers but cannot say whether it takes  -  (asks again)
                                writes (login refused, starting up): unknown
                                is never "not a primary"
  race_pre_promote_vetoed       nobody holds the lock, this member's          follow (nobody)
                                pre_promote callback refused a promotion
                                less than ttl ago (a switchover it was the
                                candidate of was cancelled then)
  race_not_eligible_nofailover  nobody holds the lock, tagged nofailover     follow (nobody)
  race_not_synchronous          nobody holds the lock, the dead leader's      follow (nobody)
                                sync promise does not name this member
  race_lag_unknown              nobody holds the lock, the leader's last     follow (nobody)
                                position in etcd does not parse, or this
                                member's is unknown (async): unknown lag is
                                not 0 (an absent key is no leader yet: the
                                members compare among themselves)
  race_not_eligible_lag         nobody holds the lock, lag > max (async)     follow (nobody)
  race_wait_for_better          nobody holds the lock, a healthier member    follow (nobody)
  race_sync_unproven            nobody holds the lock, too few synchronous   follow (nobody)
                                members answer to prove no commit is missing
  primary_reacquire             nobody holds the lock, running as primary    acquire_lock, ensure_slots
  switchover_take_over          nobody holds the lock, this is the candidate acquire_lock, promote,
                                                                             ensure_slots (the replicas'
                                                                             slots in the same pass)
                                (of a failover, or of a switchover whose
                                candidate is within the lag limit; otherwise
                                the race below decides)
  switchover_defer              nobody holds the lock, another is candidate  -  (keeps its upstream)
  leader_race                   nobody holds the lock, eligible replica      acquire_lock, promote,
                                                                             ensure_slots
"""
from __future__ import annotations

from dataclasses import replace
from typing import Optional

from governor import failsafe, upgrade_plan
from governor import standby as standby_cluster
from governor.cluster import Cluster, clone_source
from governor.hatypes import (  # noqa: F401 - re-exported: the executors and tests name them through ha
    BOOTSTRAP_ATTEMPTS,
    EMPTY,
    NOT_POSTGRES,
    POSTGRES,
    Action,
    Decision,
    LocalState,
    common_position,
)
from governor.race import decide_race
from governor.restarts import LEADER_RESTART_WAIT, scheduled_restart  # noqa: F401 - re-exported


def _await_leader(leader: str) -> Decision:
    return Decision("rewind_await_leader",
                    f"former primary: waiting for {leader} to run as primary before checking this data directory "
                    "against it with pg_rewind")


def _start_timeout(local: LocalState) -> Decision:
    return Decision("start_timeout_release",
                    f"PostgreSQL has not come up for {local.starting_for:.0f}s under the lock "
                    f"(primary_start_timeout {local.primary_start_timeout:.0f}s): stopping it and releasing the lock "
                    "so a replica takes over", (Action.RELEASE_LOCK,))


def decide(cluster: Optional[Cluster], local: LocalState) -> Decision:
    me = local.name
    if cluster is None and local.failsafe_mode and local.running and local.role == "primary" \
            and local.lock_left is not None:
        if local.failsafe_vouched is not None:
            return Decision("failsafe_keep_primary",
                            "etcd unusable, and every member of the failsafe list vouched for this primary: staying "
                            "primary (failsafe)", (Action.FAILSAFE_HOLD,))
        return Decision("failsafe_demote",
                        "etcd unusable, and not every member of the failsafe list vouched for this primary: "
                        "demoting to a read-only standby before the lock can expire",
                        (Action.DEMOTE, Action.START_AS_REPLICA))
    if cluster is None:
        if local.running and local.role == "primary" and local.lock_left is not None \
                and local.lock_left <= local.retry_timeout + 1:
            return Decision("lock_expiring_demote",
                            f"etcd did not answer and the leader lock expires in {max(local.lock_left, 0):.1f}s, less "
                            "than another etcd call may take: demoting to a read-only standby now",
                            (Action.DEMOTE, Action.START_AS_REPLICA))
        if local.running and local.role == "primary":
            return Decision("dcs_unreachable_demote",
                            "etcd unreachable: demoting to a read-only standby before the lock can expire",
                            (Action.DEMOTE, Action.START_AS_REPLICA))
        return Decision("dcs_unreachable", "etcd unreachable: no primary here, leaving PostgreSQL as it is")

    # A major upgrade: the leader's old data directory loses its pg_control to pg_upgrade --link
    # (not PostgreSQL's any more), a replica's belongs to the old system identifier.
    upgrading = upgrade_plan.decide(cluster, local)
    if upgrading is not None:
        return upgrading
    if local.data == NOT_POSTGRES:
        return Decision("data_dir_not_postgres",
                        f"{local.data_dir} holds files but is not a PostgreSQL data directory; refusing to "
                        "touch it: empty it or point postgresql.data_dir elsewhere")
    if cluster.initialized and local.sysid and local.sysid != cluster.initialize:
        return Decision("foreign_data_dir",
                        f"{local.data_dir} belongs to another cluster (system identifier {local.sysid}, "
                        f"cluster has {cluster.initialize}); leaving it untouched: move it away to let this "
                        "member clone the leader")

    leader_name = cluster.leader.name if cluster.leader else None
    standby_set, standby = standby_cluster.of(cluster)
    # A standby leader restarts as a standby of the primary cluster, not of itself.
    remote = standby.upstream if standby is not None and leader_name == me else None
    if local.request == "restart" and local.running and local.role:
        return Decision("restart_requested", "restart requested by the operator: restarting PostgreSQL"
                        + (" in place, keeping the leader lock" if leader_name == me else ""),
                        (Action.RENEW_LOCK, Action.RESTART) if leader_name == me else (Action.RESTART,),
                        leader=leader_name, remote=remote, serves="restart")
    due = scheduled_restart(cluster, local, leader_name)
    if due is not None:
        return replace(due, remote=remote)
    if local.request == "reinitialize" and leader_name and leader_name != me and cluster.initialized:
        return Decision("reinitialize_requested",
                        f"re-initialization requested by the operator: removing {local.data_dir} to clone "
                        f"{leader_name} afresh", (Action.REINITIALIZE,), leader=leader_name, serves="reinitialize")
    if cluster.paused:
        if leader_name == me:
            # Synchronous standbys are still managed: a standby stopped for maintenance must not
            # block writes in non-strict mode.
            return Decision("paused_leader", "maintenance mode: keeping the leader lock, taking no other action",
                            (Action.RENEW_LOCK, Action.MANAGE_SYNC))
        if leader_name is None and local.running and local.role == "primary":
            return Decision("paused_primary_reacquire",
                            "maintenance mode: nobody holds the leader lock and this member runs the primary: "
                            "taking the lock, nothing else", (Action.ACQUIRE_LOCK,))
        return Decision("paused", "maintenance mode: taking no automatic action")
    unknown = standby_cluster.decide_unknown(cluster, local) if standby_set and standby is None else None
    if unknown is not None:
        return unknown
    if cluster.initialize is None:
        if local.data == EMPTY and local.bootstrap_failures >= BOOTSTRAP_ATTEMPTS:
            return Decision("bootstrap_gave_up",
                            f"bootstrap failed {local.bootstrap_failures} times in a row (the reasons are logged "
                            "above; each half-made data directory was moved to *.failed-*): not trying again. Fix "
                            "the cause, then restart governor")
        if local.data == EMPTY and standby is not None:
            return standby_cluster.bootstrap(standby)
        if local.data == EMPTY:
            return Decision("bootstrap_race", "cluster not initialized: racing to bootstrap it",
                            (Action.BOOTSTRAP,))
        return Decision("initialize_from_existing",
                        f"cluster not initialized: offering this data directory (system identifier "
                        f"{local.sysid}) as the cluster's", (Action.CLAIM_INITIALIZE,))
    if not cluster.initialized:
        return Decision("bootstrap_in_progress", "another member is bootstrapping the cluster; waiting")

    leader = cluster.leader.name if cluster.leader else None
    leader_member = cluster.leader_member
    # pg_rewind compares against the leader's control file, which shows its new timeline only once
    # its promotion is done: a former primary is checked only against a leader running as primary.
    leader_runs_primary = leader_member is not None and leader_member.role == "primary" \
        and leader_member.state == "running"
    # In a standby cluster the leader is a standby: the others clone it and rewind against it.
    leader_ready = leader_runs_primary or standby is not None and leader_member is not None \
        and leader_member.role == "replica" and leader_member.state == "running"
    if local.data == EMPTY:
        if leader and leader != me and leader_member and leader_member.conn_url \
                and (leader_member.role == "primary" or leader_ready):
            source = clone_source(cluster, me, local.clone_failed_from)
            if source is not None:
                return Decision("clone_from_replica", f"data directory empty: cloning {source} (tagged clonefrom) "
                                f"to spare the leader, then following leader {leader}", (Action.CLONE,),
                                leader=leader, source=source)
            return Decision("clone_from_leader", f"data directory empty: cloning leader {leader}",
                            (Action.CLONE,), leader=leader)
        return Decision("wait_for_leader_to_clone", "data directory empty: waiting for a running leader to clone")

    if standby is not None and leader == me:
        return standby_cluster.decide_leader(cluster, local, standby)
    if local.rewind_failed and leader and leader != me and local.remove_data_directory_on_rewind_failure:
        return Decision("rewind_failed_reclone",
                        f"pg_rewind against {leader} failed: removing {local.data_dir} to clone {leader} afresh "
                        "(postgresql.remove_data_directory_on_rewind_failure)", (Action.REINITIALIZE,), leader=leader)
    if local.rewind_failed and leader != me:
        return Decision("rewind_failed_wait",
                        f"pg_rewind against the leader failed; staying stopped. To rejoin, remove {local.data_dir} "
                        "and restart governor (it clones the leader), or set "
                        "postgresql.remove_data_directory_on_rewind_failure: true")
    switchover = cluster.switchover if cluster.switchover and cluster.switchover.due(local.now) else None
    if not local.running:
        if leader is None and switchover and switchover.candidate != me:
            return Decision("switchover_await_candidate",
                            f"switchover: waiting for {switchover.candidate} to take the lock")
        if leader == me:
            if local.starting_for is not None and local.starting_for >= local.primary_start_timeout:
                return _start_timeout(local)
            return Decision("start_lock_holder", "PostgreSQL stopped and this member holds the lock: starting it",
                            (Action.RENEW_LOCK, Action.START_AS_LEADER))
        if leader and local.rewind_pending and not leader_ready:
            return _await_leader(leader)
        if leader and local.rewind_pending:
            return Decision("rewind_then_follow",
                            f"former primary: checking its timeline against {leader} with pg_rewind before "
                            "following it", (Action.REWIND, Action.START_AS_REPLICA), leader=leader)
        if leader:
            return Decision("start_following_leader", f"PostgreSQL stopped: starting it as a replica of {leader}",
                            (Action.START_AS_REPLICA,), leader=leader)
        return Decision("start_read_only", "PostgreSQL stopped and nobody holds the lock: starting it read-only",
                        (Action.START_AS_REPLICA,))
    if local.role is None:
        if leader == me:
            if local.starting_for is not None and local.starting_for >= local.primary_start_timeout:
                return _start_timeout(local)
            return Decision("lock_holder_starting", "PostgreSQL is starting (not accepting queries yet) and this "
                            "member holds the lock: keeping it while it comes up", (Action.RENEW_LOCK,))
        return Decision("postgres_not_answering", "PostgreSQL is running but not accepting queries yet; waiting")

    if leader == me:
        if local.role == "primary" and switchover and switchover.candidate != me \
                and switchover.leader in (None, me):
            candidate = cluster.member(switchover.candidate)
            if candidate is None or candidate.role != "replica" or candidate.state != "running":
                return Decision("switchover_not_ready",
                                f"switchover to {switchover.candidate} postponed: it is not a running replica "
                                f"({candidate.role + ', ' + candidate.state if candidate else 'not a member'})",
                                (Action.RENEW_LOCK, Action.ENSURE_SLOTS, Action.MANAGE_SYNC))
            # Only connected standbys get the last WAL at the shutdown: one that lags (it just came
            # back, its stream stalled) would take over without it.
            behind = None if candidate.lsn is None or local.lsn is None else local.lsn - candidate.lsn
            if behind is None or behind > local.maximum_lag_on_failover:
                return Decision("switchover_not_ready",
                                f"switchover to {switchover.candidate} postponed: it lags "
                                f"{'an unknown amount' if behind is None else f'{behind} bytes'} behind, more than "
                                f"maximum_lag_on_failover {local.maximum_lag_on_failover}",
                                (Action.RENEW_LOCK, Action.ENSURE_SLOTS, Action.MANAGE_SYNC))
            return Decision("switchover_step_down",
                            f"switchover to {switchover.candidate} requested: stopping PostgreSQL, so the "
                            "candidate receives all of its WAL, then releasing the lock", (Action.STEP_DOWN,),
                            leader=switchover.candidate)
        if local.role == "primary":
            wanted = failsafe.wanted(cluster, me, local.failsafe_mode)
            listing = (Action.FAILSAFE_LIST,) if wanted != cluster.failsafe or cluster.failsafe_unreadable else ()
            return Decision("leader_renew", "holding the lock as primary",
                            (Action.RENEW_LOCK, Action.ENSURE_SLOTS, Action.MANAGE_SYNC) + listing)
        return Decision("lock_held_promote", "this member holds the lock but runs as a replica: promoting",
                        (Action.RENEW_LOCK, Action.PROMOTE, Action.ENSURE_SLOTS))
    if leader:
        if local.role == "primary" and not leader_ready:
            return Decision("demote_for_new_leader",
                            f"{leader} holds the lock: demoting; checking with pg_rewind once {leader} runs as "
                            "primary", (Action.DEMOTE,), leader=leader)
        if local.role == "primary":
            return Decision("demote_other_leader",
                            f"{leader} holds the lock: demoting, checking with pg_rewind, following it",
                            (Action.DEMOTE, Action.REWIND, Action.START_AS_REPLICA), leader=leader)
        if local.rewind_pending and not leader_ready:
            return _await_leader(leader)
        if local.rewind_pending:
            return Decision("rewind_demoted",
                            f"former primary: checking it against {leader} with pg_rewind",
                            (Action.REWIND, Action.START_AS_REPLICA), leader=leader)
        waited = local.not_streaming_for
        if waited is not None and waited >= max(5.0, 2 * local.loop_wait) and leader_ready \
                and leader_member.timeline and local.timeline and leader_member.timeline > local.timeline:
            return Decision("replica_diverged",
                            f"not streaming from {leader} for {waited:.0f}s and on timeline {local.timeline} while "
                            f"it is on {leader_member.timeline}: this replica may have WAL the leader never had; "
                            "checking it with pg_rewind", (Action.REWIND, Action.START_AS_REPLICA), leader=leader)
        upstream = cluster.upstream_of(me)
        if upstream is not None:
            return Decision("follow_cascade", f"following {upstream} (replicatefrom), which follows leader {leader}",
                            (Action.FOLLOW, Action.REPLICA_SLOTS), leader=upstream)
        return Decision("follow_leader", f"following leader {leader}", (Action.FOLLOW, Action.REPLICA_SLOTS),
                        leader=leader)

    # Nobody holds the lock.
    if standby is not None:
        return standby_cluster.decide_race(cluster, local, standby)
    return decide_race(cluster, local, switchover)
