"""The decision table: one named case per row, every case covered."""
from __future__ import annotations

import re
from dataclasses import replace

import pytest

from governor import ha
from governor.cluster import Cluster, Leader, Member, Switchover, UpgradeRecord
from governor.failsafe import FailsafeList
from governor.ha import Action as A
from governor.sync import SyncState

SYSID = "7000000000000000001"
ME = "node1"


def member(name, role="replica", state="running", lsn=100, **tags):
    return Member(name=name, role=role, state=state, conn_url=f"postgres://127.0.0.1:5432/{name}", lsn=lsn,
                  tags=tags)


def cluster(leader=None, initialize=SYSID, members=(), leader_lsn=None, switchover_to=None, paused=False,
            sync=None, unreadable_lsn=False, failsafe=None, failsafe_unreadable=False, config=None):
    switchover = Switchover(leader=None, candidate=switchover_to, requested_at=0) if switchover_to else None
    return Cluster(initialize=initialize, leader=Leader(leader) if leader else None, members=tuple(members),
                   leader_lsn=leader_lsn, switchover=switchover, paused=paused, sync=sync,
                   leader_lsn_unreadable=unreadable_lsn, failsafe=failsafe, failsafe_unreadable=failsafe_unreadable,
                   config=config or {})


SITE_A = {"standby_cluster": {"host": "site-a", "port": 5000}}


def standby(leader=None, **kwargs):
    """A snapshot of a standby cluster following site-a:5000."""
    return cluster(leader, config=SITE_A, **kwargs)


def local(data=ha.POSTGRES, running=True, role="replica", lsn=100, sysid=SYSID, rewind_pending=False,
          rewind_failed=False, peers=None, request=None, now=0.0, bootstrap_failures=0, timeline=None,
          not_streaming_for=None, lock_left=None, starting_for=None, failsafe_mode=False, failsafe_vouched=None,
          failsafe_promise=None, failsafe_fresh=False, pre_promote_vetoed=False, clone_failed_from=None,
          scheduled_restart=None, scheduled_pending_only=False, pending_restart=False, writable_elsewhere=(),
          unknown_elsewhere=(), **tags):
    return ha.LocalState(name=ME, data=data, sysid=sysid if data == ha.POSTGRES else None, running=running,
                         role=role if running else None, lsn=lsn, tags=tags, maximum_lag_on_failover=1000,
                         data_dir="/var/lib/pg", rewind_pending=rewind_pending, rewind_failed=rewind_failed,
                         peers=peers or {}, request=request, now=now, bootstrap_failures=bootstrap_failures,
                         timeline=timeline, not_streaming_for=not_streaming_for, loop_wait=1, retry_timeout=3,
                         primary_start_timeout=30, lock_left=lock_left, starting_for=starting_for,
                         failsafe_mode=failsafe_mode, failsafe_vouched=failsafe_vouched,
                         failsafe_promise=failsafe_promise, failsafe_fresh=failsafe_fresh,
                         pre_promote_vetoed=pre_promote_vetoed, clone_failed_from=clone_failed_from,
                         scheduled_restart=scheduled_restart, scheduled_pending_only=scheduled_pending_only,
                         pending_restart=pending_restart, writable_elsewhere=writable_elsewhere,
                         unknown_elsewhere=unknown_elsewhere)


PRIMARY_NODE2 = member("node2", role="primary")
NODE2_TL3 = Member(name="node2", role="primary", state="running", conn_url="postgres://127.0.0.1:5432/x",
                   timeline=3, lsn=100)

# (case, cluster snapshot, local state, expected actions, expected leader to follow/clone)
FAILSAFE_NODE2 = FailsafeList("node2", {ME: "http://127.0.0.1:8008", "node3": "http://127.0.0.1:8009"})
STANDBY_NODE2 = member("node2", role="replica")
TABLE = [
    ("standby_cluster_unknown", cluster(ME, config={"standby_cluster": {"host": "a b"}}), local(role="replica"),
     (A.RENEW_LOCK,), None),
    ("standby_bootstrap_race", standby(initialize=None), local(data=ha.EMPTY, running=False), (A.BOOTSTRAP,), None),
    ("standby_leader_rewind_failed", standby(ME), local(running=False, rewind_failed=True), (A.RENEW_LOCK,), None),
    ("standby_leader_demote", standby(ME), local(role="primary"), (A.DEMOTE, A.REWIND, A.START_AS_REPLICA), None),
    ("standby_leader_rewind", standby(ME), local(rewind_pending=True),
     (A.RENEW_LOCK, A.REWIND, A.START_AS_REPLICA), None),
    ("standby_leader_start", standby(ME), local(running=False), (A.RENEW_LOCK, A.START_AS_REPLICA), None),
    ("standby_leader_starting", standby(ME), local(role=None), (A.RENEW_LOCK,), None),
    ("standby_leader_diverged", standby(ME), ha.LocalState(name=ME, data=ha.POSTGRES, sysid=SYSID, running=True,
                                                           role="replica", timeline=3, not_streaming_for=5.0,
                                                           loop_wait=1, remote_timeline=4),
     (A.RENEW_LOCK, A.REWIND, A.START_AS_REPLICA), None),
    ("standby_leader_follow_remote", standby(ME), local(), (A.RENEW_LOCK, A.FOLLOW, A.REPLICA_SLOTS), None),
    ("standby_primary_take_lock", standby(), local(role="primary"), (A.ACQUIRE_LOCK,), None),
    ("standby_race_not_eligible", standby(), local(nofailover=True), (), None),
    ("standby_leader_race", standby(), local(), (A.ACQUIRE_LOCK, A.FOLLOW), None),
    ("failsafe_keep_primary", None, local(role="primary", lock_left=3.5, failsafe_mode=True, failsafe_vouched=7.0),
     (A.FAILSAFE_HOLD,), None),
    ("failsafe_demote", None, local(role="primary", lock_left=20, failsafe_mode=True),
     (A.DEMOTE, A.START_AS_REPLICA), None),
    ("lock_expiring_demote", None, local(role="primary", lock_left=3.5), (A.DEMOTE, A.START_AS_REPLICA), None),
    ("dcs_unreachable_demote", None, local(role="primary", lock_left=8), (A.DEMOTE, A.START_AS_REPLICA), None),
    ("dcs_unreachable", None, local(role="replica"), (), None),
    ("data_dir_not_postgres", cluster(), local(data=ha.NOT_POSTGRES, running=False), (), None),
    ("foreign_data_dir", cluster("node2", members=[PRIMARY_NODE2]), local(sysid="123"), (), None),
    ("restart_requested", cluster(ME, paused=True), local(role="primary", request="restart"),
     (A.RENEW_LOCK, A.RESTART), ME),
    ("scheduled_restart_skipped", cluster("node2", members=[PRIMARY_NODE2]),
     local(scheduled_restart=100.0, now=100.0, scheduled_pending_only=True), (A.FORGET_SCHEDULED_RESTART,), None),
    ("scheduled_restart_due", cluster(ME, paused=True), local(role="primary", scheduled_restart=100.0, now=101.0),
     (A.RENEW_LOCK, A.FORGET_SCHEDULED_RESTART, A.RESTART), ME),
    ("reinitialize_requested", cluster("node2", members=[PRIMARY_NODE2]), local(request="reinitialize"),
     (A.REINITIALIZE,), "node2"),
    ("paused_leader", cluster(ME, paused=True), local(running=False), (A.RENEW_LOCK, A.MANAGE_SYNC), None),
    ("paused_primary_reacquire", cluster(paused=True), local(role="primary"), (A.ACQUIRE_LOCK,), None),
    ("paused", cluster(paused=True), local(role="replica"), (), None),
    ("bootstrap_gave_up", cluster(initialize=None),
     local(data=ha.EMPTY, running=False, bootstrap_failures=ha.BOOTSTRAP_ATTEMPTS), (), None),
    ("bootstrap_race", cluster(initialize=None), local(data=ha.EMPTY, running=False), (A.BOOTSTRAP,), None),
    ("initialize_from_existing", cluster(initialize=None), local(running=False), (A.CLAIM_INITIALIZE,), None),
    ("bootstrap_in_progress", cluster(initialize=""), local(data=ha.EMPTY, running=False), (), None),
    ("clone_from_leader", cluster("node2", members=[PRIMARY_NODE2]), local(data=ha.EMPTY, running=False),
     (A.CLONE,), "node2"),
    ("wait_for_leader_to_clone", cluster(), local(data=ha.EMPTY, running=False), (), None),
    ("clone_from_replica", cluster("node2", members=[PRIMARY_NODE2, member("node3", lsn=90, clonefrom=True),
                                                     member("node4", lsn=95, clonefrom=True),
                                                     member("node5", lsn=99, clonefrom="yes")]),
     local(data=ha.EMPTY, running=False), (A.CLONE,), "node2"),
    ("clone_from_leader", cluster("node2", members=[PRIMARY_NODE2, member("node3", clonefrom=True)]),
     local(data=ha.EMPTY, running=False, clone_failed_from="node3"), (A.CLONE,), "node2"),
    ("clone_from_leader", cluster("node2", members=[PRIMARY_NODE2, member("node3", state="stopped", clonefrom=True)]),
     local(data=ha.EMPTY, running=False), (A.CLONE,), "node2"),
    ("rewind_failed_reclone", cluster("node2", members=[PRIMARY_NODE2]),
     replace(local(running=False, rewind_failed=True), remove_data_directory_on_rewind_failure=True),
     (A.REINITIALIZE,), "node2"),
    ("rewind_failed_wait", cluster("node2", members=[PRIMARY_NODE2]), local(running=False, rewind_failed=True),
     (), None),
    ("switchover_await_candidate", cluster(switchover_to="node2"), local(running=False), (), None),
    ("start_timeout_release", cluster(ME), local(running=False, starting_for=31), (A.RELEASE_LOCK,), None),
    ("start_lock_holder", cluster(ME), local(running=False, starting_for=5), (A.RENEW_LOCK, A.START_AS_LEADER),
     None),
    ("rewind_await_leader", cluster("node2", members=[member("node2")]), local(running=False, rewind_pending=True),
     (), None),
    ("rewind_then_follow", cluster("node2", members=[PRIMARY_NODE2]), local(running=False, rewind_pending=True),
     (A.REWIND, A.START_AS_REPLICA), "node2"),
    ("start_following_leader", cluster("node2", members=[PRIMARY_NODE2]), local(running=False),
     (A.START_AS_REPLICA,), "node2"),
    ("start_read_only", cluster(), local(running=False), (A.START_AS_REPLICA,), None),
    ("lock_holder_starting", cluster(ME), local(role=None, starting_for=12), (A.RENEW_LOCK,), None),
    ("postgres_not_answering", cluster(), local(role=None), (), None),
    ("switchover_not_ready", cluster(ME, switchover_to="node2", members=[member("node2", state="stopped")]),
     local(role="primary"), (A.RENEW_LOCK, A.ENSURE_SLOTS, A.MANAGE_SYNC), None),
    ("switchover_step_down", cluster(ME, switchover_to="node2", members=[member("node2")]), local(role="primary"),
     (A.STEP_DOWN,), "node2"),
    ("leader_renew", cluster(ME), local(role="primary"), (A.RENEW_LOCK, A.ENSURE_SLOTS, A.MANAGE_SYNC), None),
    ("lock_held_promote", cluster(ME), local(role="replica"), (A.RENEW_LOCK, A.PROMOTE, A.ENSURE_SLOTS), None),
    ("demote_other_leader", cluster("node2", members=[PRIMARY_NODE2]), local(role="primary"),
     (A.DEMOTE, A.REWIND, A.START_AS_REPLICA), "node2"),
    ("demote_for_new_leader", cluster("node2", members=[member("node2")]), local(role="primary"), (A.DEMOTE,),
     "node2"),
    ("rewind_demoted", cluster("node2", members=[PRIMARY_NODE2]), local(rewind_pending=True),
     (A.REWIND, A.START_AS_REPLICA), "node2"),
    ("replica_diverged", cluster("node2", members=[NODE2_TL3]), local(timeline=2, not_streaming_for=6),
     (A.REWIND, A.START_AS_REPLICA), "node2"),
    ("follow_leader", cluster("node2", members=[PRIMARY_NODE2]), local(), (A.FOLLOW, A.REPLICA_SLOTS), "node2"),
    ("follow_cascade", cluster("node2", members=[PRIMARY_NODE2, member("node3"), member(ME, replicatefrom="node3")]),
     local(), (A.FOLLOW, A.REPLICA_SLOTS), "node3"),
    # replicatefrom falls back to the leader: the upstream is not a running replica, is gone, is on
    # another timeline, or its own tag leads back here
    ("follow_leader", cluster("node2", members=[PRIMARY_NODE2, member("node3", state="stopped"),
                                                member(ME, replicatefrom="node3")]), local(),
     (A.FOLLOW, A.REPLICA_SLOTS), "node2"),
    ("follow_leader", cluster("node2", members=[PRIMARY_NODE2, member(ME, replicatefrom="node9")]), local(),
     (A.FOLLOW, A.REPLICA_SLOTS), "node2"),
    ("follow_leader", cluster("node2", members=[NODE2_TL3, replace(member("node3"), timeline=2),
                                                member(ME, replicatefrom="node3")]), local(timeline=3),
     (A.FOLLOW, A.REPLICA_SLOTS), "node2"),
    ("follow_leader", cluster("node2", members=[PRIMARY_NODE2, member("node3", replicatefrom="node4"),
                                                member("node4", replicatefrom=ME), member(ME, replicatefrom="node3")]),
     local(), (A.FOLLOW, A.REPLICA_SLOTS), "node2"),
    ("primary_reacquire", cluster(), local(role="primary"), (A.ACQUIRE_LOCK, A.ENSURE_SLOTS), None),
    ("switchover_take_over", cluster(switchover_to=ME, leader_lsn=10**9), local(lsn=100),
     (A.ACQUIRE_LOCK, A.PROMOTE, A.ENSURE_SLOTS), None),
    ("switchover_defer", cluster(members=[member("node2", lsn=1)], switchover_to="node3"), local(lsn=100),
     (), None),
    ("failsafe_promised", cluster(failsafe=FAILSAFE_NODE2), local(failsafe_promise="node2"), (), None),
    ("failsafe_list_unknown", cluster(failsafe_unreadable=True), local(), (), None),
    ("failsafe_not_listed", cluster(failsafe=FailsafeList("node2", {"node3": "http://127.0.0.1:8009"})), local(),
     (), None),
    ("failsafe_promise_unknown", cluster(failsafe=FAILSAFE_NODE2), local(failsafe_fresh=True), (), None),
    # another server still takes writes (its governor gone or frozen): no race, no switchover, the
    # upstream kept; one that answers but cannot say counts as maybe a primary
    ("race_other_primary_writable", cluster(), local(writable_elsewhere=("node2 (10.0.0.12:5432)",)), (), None),
    ("race_other_primary_writable", cluster(switchover_to=ME), local(writable_elsewhere=("node2",)), (), None),
    ("race_other_primary_unknown", cluster(), local(unknown_elsewhere=("node2",)), (), None),
    ("primary_reacquire", cluster(), local(role="primary", writable_elsewhere=("node2",)),
     (A.ACQUIRE_LOCK, A.ENSURE_SLOTS), None),
    ("race_pre_promote_vetoed", cluster(), local(pre_promote_vetoed=True), (A.FOLLOW,), None),
    ("race_pre_promote_vetoed", cluster(switchover_to=ME), local(pre_promote_vetoed=True), (A.FOLLOW,), None),
    ("race_not_eligible_nofailover", cluster(), local(nofailover=True), (A.FOLLOW,), None),
    ("race_not_eligible_nofailover", cluster(), local(failover_priority=0), (A.FOLLOW,), None),
    # failover_priority breaks ties among equally advanced members, and only ties
    ("race_wait_for_better", cluster(members=[member("node2", lsn=100, failover_priority=5)], leader_lsn=100),
     local(lsn=100), (A.FOLLOW,), None),
    ("leader_race", cluster(members=[member("node2", lsn=100)], leader_lsn=100), local(lsn=100, failover_priority=5),
     (A.ACQUIRE_LOCK, A.PROMOTE, A.ENSURE_SLOTS), None),
    ("race_wait_for_better", cluster(members=[member("node2", lsn=200)], leader_lsn=200),
     local(lsn=100, failover_priority=9), (A.FOLLOW,), None),
    ("leader_race", cluster(members=[member("node2", lsn=100, failover_priority="99")], leader_lsn=100),
     local(lsn=100), (A.ACQUIRE_LOCK, A.PROMOTE, A.ENSURE_SLOTS), None),      # a priority that is no integer: 1
    # members that will not race are not waited for: priority 0, or a pre_promote that refused
    ("leader_race", cluster(members=[member("node2", lsn=200, failover_priority=0)], leader_lsn=200),
     local(lsn=100), (A.ACQUIRE_LOCK, A.PROMOTE, A.ENSURE_SLOTS), None),
    ("leader_race", cluster(members=[replace(member("node2", lsn=200), pre_promote_refused=True)], leader_lsn=200),
     local(lsn=100), (A.ACQUIRE_LOCK, A.PROMOTE, A.ENSURE_SLOTS), None),
    ("race_not_synchronous", cluster(sync=SyncState("node9", ("node2",), 1)), local(), (A.FOLLOW,), None),
    ("race_lag_unknown", cluster(leader_lsn=None, unreadable_lsn=True), local(lsn=100), (A.FOLLOW,), None),
    ("race_not_eligible_lag", cluster(leader_lsn=5000), local(lsn=100), (A.FOLLOW,), None),
    ("race_wait_for_better", cluster(members=[member("node2", lsn=200)], leader_lsn=200), local(lsn=100),
     (A.FOLLOW,), None),
    ("race_sync_unproven", cluster(sync=SyncState("node9", (ME, "node2", "node3"), 2),
                                   members=[member("node2"), member("node3")]),
     local(peers={"node2": None, "node3": None}), (A.FOLLOW,), None),
    ("leader_race", cluster(members=[member("node2", lsn=50)], leader_lsn=150), local(lsn=100),
     (A.ACQUIRE_LOCK, A.PROMOTE, A.ENSURE_SLOTS), None),
]


def upgrading(step, leader=ME, holder=ME, members=(), unreadable=False, seed=False):
    """A snapshot during a major upgrade from 15 to 17 that `leader` drives."""
    record = None if unreadable else UpgradeRecord(to=17, source=15, leader=leader, sysid=SYSID, step=step, index=9,
                                                   facts={"seed": True} if seed else {})
    return replace(cluster(holder, members=members), upgrade=record, upgrade_unreadable=unreadable)


NODE2_ON_17 = replace(PRIMARY_NODE2, pg_version=170002)
NODE2_REPLICA_17 = replace(member("node2"), pg_version=170002)
NODE2_REPLICA_15 = replace(member("node2"), pg_version=150010)
TABLE += [
    ("upgrade_unknown", upgrading("requested", unreadable=True), local(role="primary"), (A.RENEW_LOCK,), None),
    ("upgrade_unknown", upgrading("requested", holder="node2", unreadable=True), local(), (), None),
    ("upgrade_rollback", upgrading("rollback"), local(running=False), (A.RENEW_LOCK, A.UPGRADE_ROLLBACK), None),
    ("upgrade_stop", upgrading("requested"), local(role="primary"), (A.RENEW_LOCK, A.UPGRADE_STOP), None),
    ("upgrade_pg_upgrade", upgrading("stopped"), local(running=False), (A.RENEW_LOCK, A.UPGRADE_RUN), None),
    ("upgrade_pg_upgrade", upgrading("stopped", holder=None), local(running=False), (A.ACQUIRE_LOCK, A.UPGRADE_RUN),
     None),
    ("upgrade_start_new", upgrading("upgraded"), local(running=False), (A.RENEW_LOCK, A.UPGRADE_START), None),
    ("upgrade_start_new", upgrading("started"), local(running=False), (A.RENEW_LOCK, A.UPGRADE_START), None),
    ("upgrade_done", upgrading("started", members=[member(ME, role="primary"), NODE2_REPLICA_17]),
     local(role="primary"), (A.RENEW_LOCK, A.ENSURE_SLOTS, A.MANAGE_SYNC, A.UPGRADE_DONE), None),
    ("leader_renew", upgrading("started", members=[member(ME, role="primary"), NODE2_REPLICA_15]),
     local(role="primary"), (A.RENEW_LOCK, A.ENSURE_SLOTS, A.MANAGE_SYNC), None),
    ("upgrade_hold", upgrading("stopped", leader="node2", holder="node2"), local(), (), None),
    # aborted while its leader is gone: the others have every write (it stopped cleanly first), the old
    # cluster goes on and a lost leader is replaced as always
    ("leader_race", upgrading("rollback", leader="node2", holder=None, members=[member("node3", lsn=90)]),
     local(), (A.ACQUIRE_LOCK, A.PROMOTE, A.ENSURE_SLOTS), None),
    ("upgrade_hold", upgrading("requested", leader="node2", holder=None), local(), (), None),
    ("upgrade_hold", upgrading("upgraded", leader="node2", holder="node2"), local(running=False),
     (A.START_AS_REPLICA,), "node2"),
    ("upgrade_hold", upgrading("started", leader="node2", holder="node2", members=[member("node2", state="starting")]),
     ha.LocalState(name=ME, data=ha.POSTGRES, sysid=SYSID, running=True, role="replica", data_major=15), (), None),
    ("upgrade_reclone", upgrading("started", leader="node2", holder="node2", members=[NODE2_ON_17]),
     ha.LocalState(name=ME, data=ha.POSTGRES, sysid=SYSID, running=True, role="replica", data_major=15),
     (A.UPGRADE_SET_ASIDE, A.CLONE), "node2"),
    # the leader left a seed: the replica links its own files instead of cloning
    ("upgrade_link", upgrading("started", leader="node2", holder="node2", members=[NODE2_ON_17], seed=True),
     ha.LocalState(name=ME, data=ha.POSTGRES, sysid=SYSID, running=True, role="replica", data_major=15),
     (A.UPGRADE_LINK,), "node2"),
    # ... and clones when linking failed here (e.g. it stopped at another checkpoint)
    ("upgrade_reclone", upgrading("started", leader="node2", holder="node2", members=[NODE2_ON_17], seed=True),
     ha.LocalState(name=ME, data=ha.POSTGRES, sysid=SYSID, running=False, data_major=15, upgrade_link_failed=SYSID),
     (A.UPGRADE_SET_ASIDE, A.CLONE), "node2"),
    # a seed that is not the boolean a leader writes is no seed
    ("upgrade_reclone", replace(upgrading("started", leader="node2", holder="node2", members=[NODE2_ON_17]),
                                upgrade=UpgradeRecord(to=17, source=15, leader="node2", sysid=SYSID, step="started",
                                                      index=9, facts={"seed": "yes"})),
     ha.LocalState(name=ME, data=ha.POSTGRES, sysid=SYSID, running=True, role="replica", data_major=15),
     (A.UPGRADE_SET_ASIDE, A.CLONE), "node2"),
    # a member whose host was down throughout comes back after the upgrade is done
    ("upgrade_reclone", upgrading("done", leader="node2", holder="node2", members=[NODE2_ON_17]),
     ha.LocalState(name=ME, data=ha.POSTGRES, sysid=SYSID, running=False, data_major=15),
     (A.UPGRADE_SET_ASIDE, A.CLONE), "node2"),
    ("foreign_data_dir", upgrading("done", leader="node2", holder="node2", members=[NODE2_ON_17]),
     ha.LocalState(name=ME, data=ha.POSTGRES, sysid="42", running=False, data_major=15), (), None),
]


@pytest.mark.parametrize("case,snapshot,state,actions,leader", TABLE, ids=[row[0] for row in TABLE])
def test_decision_table(case, snapshot, state, actions, leader):
    decision = ha.decide(snapshot, state)
    assert decision.case == case
    if case == "clone_from_replica":    # the most advanced replica tagged clonefrom: true (not "yes")
        assert decision.source == "node4"
    assert decision.actions == actions
    assert decision.leader == leader
    assert decision.message


def test_every_documented_case_is_in_the_table():
    documented = set(re.findall(r"^  ([a-z_]+) {2,}", ha.__doc__, re.M)) - {"case"}
    tested = {row[0] for row in TABLE}
    assert documented == tested


def test_nofailover_or_lagging_members_do_not_block_the_race():
    others = [member("node2", lsn=500, nofailover=True), member("node3", lsn=900, state="stopped")]
    decision = ha.decide(cluster(members=others, leader_lsn=100), local(lsn=100))
    assert decision.case == "leader_race"


def test_a_replica_is_only_rewound_when_the_running_leader_is_ahead_for_long_enough():
    """A replica waiting for a new leader to come up, or one on the leader's timeline, is not
    stopped for pg_rewind: only a running leader on a later timeline, not streamed from for
    max(5 s, 2 * loop_wait), makes it a divergence."""
    diverged = ha.decide(cluster("node2", members=[NODE2_TL3]), local(timeline=2, not_streaming_for=6))
    assert diverged.case == "replica_diverged" and "timeline 2 while it is on 3" in diverged.message
    dead = Member(name="node2", role="primary", state="stopped", conn_url="postgres://h:1/x", timeline=3)
    for snapshot, state in ((cluster("node2", members=[NODE2_TL3]), local(timeline=2, not_streaming_for=4)),
                            (cluster("node2", members=[NODE2_TL3]), local(timeline=3, not_streaming_for=60)),
                            (cluster("node2", members=[NODE2_TL3]), local(timeline=None, not_streaming_for=60)),
                            (cluster("node2", members=[dead]), local(timeline=2, not_streaming_for=60)),
                            (cluster("node2", members=[NODE2_TL3]), local(timeline=2, not_streaming_for=None))):
        assert ha.decide(snapshot, state).case == "follow_leader"


def test_unknown_lag_is_not_zero():
    """A garbage or missing optime/leader, or a replica that cannot report its position, never
    counts as 'no lag': the member does not race."""
    for snapshot, state in ((cluster(leader_lsn=None, unreadable_lsn=True), local(lsn=100)),
                            (cluster(leader_lsn=5000), local(lsn=None))):
        decision = ha.decide(snapshot, state)
        assert decision.case == "race_lag_unknown" and decision.actions == (A.FOLLOW,)
    # No position published at all (no leader has run on this data yet): the members compare
    # among themselves.
    assert ha.decide(cluster(leader_lsn=None, members=[member("node2", lsn=50)]), local(lsn=100)).case == \
        "leader_race"
    assert ha.decide(cluster(leader_lsn=None, members=[member("node2", lsn=500)]), local(lsn=100)).case == \
        "race_wait_for_better"


def test_lag_within_limit_races_and_message_explains():
    decision = ha.decide(cluster(members=[member("node2", lsn=90)], leader_lsn=1000), local(lsn=100))
    assert decision.case == "leader_race"
    assert "lag 900 bytes" in decision.message
    assert "1 of 1 other members reachable and running" in decision.message


def test_fresh_answers_from_peers_override_published_positions():
    stale = [member("node2", lsn=50), member("node3", lsn=50)]
    fresh_ahead = {"node2": member("node2", lsn=500), "node3": None}
    decision = ha.decide(cluster(members=stale, leader_lsn=100), local(lsn=100, peers=fresh_ahead))
    assert decision.case == "race_wait_for_better" and "node2" in decision.message
    fresh_behind = {"node2": member("node2", lsn=90), "node3": None}
    decision = ha.decide(cluster(members=[member("node2", lsn=500), member("node3", lsn=900)], leader_lsn=100),
                         local(lsn=100, peers=fresh_behind))
    assert decision.case == "leader_race", "an unreachable member does not block the race"
    assert "1 of 2 other members reachable" in decision.message


def test_never_promotes_without_taking_the_lock_first():
    for _case, snapshot, state, actions, _leader in TABLE:
        if A.PROMOTE in actions:
            decision = ha.decide(snapshot, state)
            lock_step = decision.actions.index(A.PROMOTE) - 1
            assert lock_step >= 0 and decision.actions[lock_step] in (A.ACQUIRE_LOCK, A.RENEW_LOCK)


def test_a_primary_never_keeps_running_when_another_member_holds_the_lock():
    for snapshot in (cluster("node2", members=[PRIMARY_NODE2]), cluster("node3")):
        assert ha.decide(snapshot, local(role="primary")).actions[0] == A.DEMOTE


def test_a_scheduled_switchover_waits_for_its_time():
    planned = Switchover(leader=ME, candidate="node2", requested_at=0, scheduled_at=1000.0)
    snapshot = Cluster(initialize=SYSID, leader=Leader(ME), switchover=planned, members=(member("node2"),))
    assert ha.decide(snapshot, local(role="primary", now=999.0)).case == "leader_renew"
    assert ha.decide(snapshot, local(role="primary", now=1000.0)).case == "switchover_step_down"


def test_operator_requests_never_reinitialize_the_leader_or_restart_a_stopped_server():
    assert ha.decide(cluster(ME), local(role="primary", request="reinitialize")).case == "leader_renew"
    assert ha.decide(cluster(), local(request="reinitialize")).actions != (A.REINITIALIZE,)
    assert A.RESTART not in ha.decide(cluster("node2", members=[PRIMARY_NODE2]),
                                      local(running=False, request="restart")).actions


SYNC_2_OF_3 = SyncState("node9", (ME, "node2", "node3"), 2)
PEERS = [member("node2"), member("node3")]


def test_sync_quorum_needs_enough_voters_and_the_most_wal():
    # 2 of 3 acknowledge each commit: any 2 of the 3 include one with every commit.
    one_answers = {"node2": member("node2", lsn=90), "node3": None}
    decision = ha.decide(cluster(sync=SYNC_2_OF_3, members=PEERS), local(lsn=100, peers=one_answers))
    assert decision.case == "leader_race" and "every acknowledged commit" in decision.message
    ahead = {"node2": member("node2", lsn=120, nofailover=True), "node3": None}
    decision = ha.decide(cluster(sync=SYNC_2_OF_3, members=PEERS), local(lsn=100, peers=ahead))
    assert decision.case == "race_wait_for_better"


def test_a_sync_member_races_even_when_lagging_and_an_async_member_ahead_does_not_block_it():
    promise = SyncState("node9", (ME,), 1)
    async_ahead = {"node2": member("node2", lsn=500)}
    decision = ha.decide(cluster(sync=promise, leader_lsn=10**6, members=[member("node2")]),
                         local(lsn=100, peers=async_ahead))
    assert decision.case == "leader_race"


def test_a_degraded_promise_falls_back_to_the_asynchronous_rules():
    degraded = SyncState("node9", (), 0)
    assert ha.decide(cluster(sync=degraded, leader_lsn=5000), local(lsn=100)).case == "race_not_eligible_lag"
    assert ha.decide(cluster(sync=degraded, leader_lsn=100), local(lsn=100)).case == "leader_race"
    assert ha.decide(cluster(sync=degraded, unreadable_lsn=True), local(lsn=100)).case == "race_lag_unknown"
    nobody = SyncState("node9", (), 1)   # strict, no standby: nobody has every commit
    assert ha.decide(cluster(sync=nobody), local(lsn=100)).case == "race_not_synchronous"


def test_a_lagging_switchover_candidate_is_waited_for():
    lagging = Member(name="node2", role="replica", state="running", conn_url="postgres://h:1/x", lsn=100)
    decision = ha.decide(cluster(ME, switchover_to="node2", members=[lagging]), local(role="primary", lsn=5000))
    assert decision.case == "switchover_not_ready" and "lags 4900 bytes" in decision.message


def test_a_switchover_whose_leader_did_not_hand_over_is_decided_by_the_race():
    """The request names a leader that lost its lock some other way: its candidate is trusted only
    within the lag limit; a manual failover (no leader named) is always honoured."""
    snapshot = Cluster(initialize=SYSID, leader=None, members=(member("node2", lsn=100),), leader_lsn=9000,
                       switchover=Switchover(leader="node3", candidate=ME, requested_at=0))
    assert ha.decide(snapshot, local(lsn=100)).case == "race_not_eligible_lag"
    assert ha.decide(replace(snapshot, leader_lsn=500), local(lsn=100)).case == "switchover_take_over"
    failover = replace(snapshot, switchover=Switchover(leader=None, candidate=ME, requested_at=0))
    assert ha.decide(failover, local(lsn=100)).case == "switchover_take_over"


def test_positions_on_an_old_timeline_count_up_to_its_switch_point():
    history = ({"timeline": 2, "lsn": 1000}, {"timeline": 3, "lsn": 5000})
    assert ha.common_position(1, 4000, history) == 1000
    assert ha.common_position(2, 4000, history) == 4000
    assert ha.common_position(3, 7000, history) == 7000
    assert ha.common_position(None, 7000, history) == 7000
    # A replica on timeline 1 past the switch point lags from where timeline 1 ended.
    snapshot = Cluster(initialize=SYSID, leader=None, leader_lsn=5200, history=history)
    decision = ha.decide(snapshot, local(lsn=5100, timeline=1))
    assert decision.case == "race_not_eligible_lag" and "lag 4200 bytes" in decision.message


def test_in_synchronous_mode_a_switchover_candidate_takes_over_only_when_the_promise_says_it_has_everything():
    """A leader that stepped down cleanly names every standby that streamed to the end, with a
    quorum of all of them: its candidate takes the lock and the other defers. A promise that only
    says "one of them" (a leader that lost its lock otherwise) leaves it to the race's rules."""
    others = (member("node2", lsn=100), member("node3", lsn=100))
    handed = Cluster(initialize=SYSID, leader=None, members=others, leader_lsn=100,
                     switchover=Switchover(leader="node9", candidate=ME, requested_at=0),
                     sync=SyncState("node9", (ME, "node3"), 2))
    assert ha.decide(handed, local(lsn=100)).case == "switchover_take_over"
    assert ha.decide(handed, replace(local(lsn=100), name="node3")).case == "switchover_defer"
    one_of = replace(handed, sync=SyncState("node9", (ME, "node3"), 1))
    assert ha.decide(one_of, local(lsn=100)).case != "switchover_take_over"
    outside = replace(handed, sync=SyncState("node9", ("node3",), 1))
    assert ha.decide(outside, local(lsn=100)).case == "race_not_synchronous"


# --------------------------------------------------------------------------- failsafe


def test_failsafe_off_keeps_todays_demotion_whatever_was_vouched():
    d = ha.decide(None, local(role="primary", lock_left=20, failsafe_vouched=7.0))
    assert d.case == "dcs_unreachable_demote"


def test_failsafe_is_only_for_the_lock_holder_running_as_primary():
    assert ha.decide(None, local(role="primary", failsafe_mode=True, failsafe_vouched=7.0)).case == \
        "dcs_unreachable_demote"            # a primary without the lock: nothing to keep
    assert ha.decide(None, local(role="replica", lock_left=20, failsafe_mode=True, failsafe_vouched=7.0)).case == \
        "dcs_unreachable"


def test_the_leader_keeps_its_failsafe_list_current_and_deletes_it_when_the_mode_is_off():
    me_node2 = [member(ME, role="primary"), member("node2")]
    members = [replace(m, api_url=f"http://127.0.0.1:80{i}") for i, m in enumerate(me_node2)]
    current = FailsafeList(ME, {"node2": "http://127.0.0.1:801"})
    on = local(role="primary", failsafe_mode=True)
    assert A.FAILSAFE_LIST in ha.decide(cluster(ME, members=members), on).actions
    assert A.FAILSAFE_LIST not in ha.decide(cluster(ME, members=members, failsafe=current), on).actions
    stale = FailsafeList(ME, {"node2": "http://127.0.0.1:801", "node9": "http://127.0.0.1:809"})
    assert A.FAILSAFE_LIST in ha.decide(cluster(ME, members=members, failsafe=stale), on).actions
    off = local(role="primary")
    assert A.FAILSAFE_LIST in ha.decide(cluster(ME, members=members, failsafe=current), off).actions
    assert A.FAILSAFE_LIST in ha.decide(cluster(ME, members=members, failsafe_unreadable=True), off).actions
    assert A.FAILSAFE_LIST not in ha.decide(cluster(ME, members=members), off).actions


def test_a_listed_replica_races_normally_once_its_promise_is_over():
    d = ha.decide(cluster(members=[member("node2", lsn=50)], leader_lsn=150, failsafe=FAILSAFE_NODE2), local(lsn=100))
    assert d.case == "leader_race"


def test_a_promise_holds_even_for_the_switchover_candidate_and_with_the_mode_off():
    d = ha.decide(cluster(switchover_to=ME, leader_lsn=10**9), local(lsn=100, failsafe_promise="node2"))
    assert d.case == "failsafe_promised" and not d.actions


def test_the_failsafe_list_is_parsed_defensively():
    from governor.dcs.keys import valid_member_name
    good = FailsafeList("node2", {"node1": "https://10.0.0.11:8008"})
    assert FailsafeList.from_json(good.as_json(), valid_member_name) == good
    for text in (None, "", "[]", "{}", '{"leader": "node2"}', '{"leader": 5, "members": {}}',
                 '{"leader": "node2", "members": {"node1": "ftp://x"}}', '{"leader": "node2", "members": []}',
                 '{"leader": "bad name!", "members": {}}', '{"leader": "n", "members": {"a": 1}}',
                 "[" * 100000, '{"leader": "n", "members": {' + ",".join(f'"m{i}": "http://x"' for i in range(65))
                 + "}}"):
        assert FailsafeList.from_json(text, valid_member_name) is None, text


def test_a_scheduled_restart_waits_for_its_time_and_restarts_a_replica_once_due():
    snapshot = cluster("node2", members=[PRIMARY_NODE2])
    assert ha.decide(snapshot, local(scheduled_restart=100.0, now=99.9)).case != "scheduled_restart_due"
    due = ha.decide(snapshot, local(scheduled_restart=100.0, now=100.0))
    assert (due.case, due.actions, due.leader) == ("scheduled_restart_due", (A.FORGET_SCHEDULED_RESTART, A.RESTART),
                                                   "node2")
    pending = ha.decide(snapshot, local(scheduled_restart=100.0, now=100.0, scheduled_pending_only=True,
                                        pending_restart=True))
    assert pending.case == "scheduled_restart_due"


def test_a_due_scheduled_restart_is_forgotten_when_postgresql_is_not_running():
    decision = ha.decide(cluster("node2", members=[PRIMARY_NODE2]), local(running=False, scheduled_restart=5.0,
                                                                          now=10.0))
    assert (decision.case, decision.actions) == ("scheduled_restart_skipped", (A.FORGET_SCHEDULED_RESTART,))


def test_the_leader_restarts_after_the_replicas_scheduled_no_later_but_not_forever():
    replica = Member(name="node2", role="replica", state="running", lsn=100, scheduled_restart=100.0)
    later = Member(name="node3", role="replica", state="running", lsn=100, scheduled_restart=200.0)
    leader = local(role="primary", scheduled_restart=100.0, now=100.0)
    waits = ha.decide(cluster(ME, members=[replica, later]), leader)
    assert waits.case == "leader_renew"          # the replica first: the leader goes on leading
    stopped = replace(replica, state="stopped")   # a replica that is not running restarts nothing
    assert ha.decide(cluster(ME, members=[stopped, later]), leader).case == "scheduled_restart_due"
    assert ha.decide(cluster(ME, members=[later]), leader).case == "scheduled_restart_due"
    late = replace(leader, now=100.0 + ha.LEADER_RESTART_WAIT)
    assert ha.decide(cluster(ME, members=[replica]), late).case == "scheduled_restart_due"


def test_a_standby_cluster_never_promotes_and_follows_the_remote():
    """Whatever its state, no member of a standby cluster is told to promote or bootstrap with
    initdb; its leader's decisions carry the remote address, and the others follow the leader."""
    from governor.standby import Upstream
    states = [local(), local(role="primary"), local(running=False), local(role=None), local(rewind_pending=True),
              local(running=False, rewind_pending=True), local(lsn=None), local(data=ha.EMPTY, running=False)]
    snapshots = [standby(ME, members=[STANDBY_NODE2]), standby("node2", members=[STANDBY_NODE2]),
                 standby(None, members=[STANDBY_NODE2]), standby(initialize=None), standby("node2", members=[])]
    for snapshot in snapshots:
        for state in states:
            decision = ha.decide(snapshot, state)
            assert A.PROMOTE not in decision.actions, (decision, state)
            if decision.remote is not None:
                assert decision.remote == Upstream("site-a", 5000)
            if snapshot.leader and snapshot.leader.name == ME and A.FOLLOW in decision.actions:
                assert decision.remote is not None
    follower = ha.decide(standby("node2", members=[STANDBY_NODE2]), local())
    assert (follower.case, follower.leader, follower.remote) == ("follow_leader", "node2", None)
    clone = ha.decide(standby("node2", members=[STANDBY_NODE2]), local(data=ha.EMPTY, running=False))
    assert (clone.case, clone.leader) == ("clone_from_leader", "node2")
    rewound = ha.decide(standby("node2", members=[STANDBY_NODE2]), local(running=False, rewind_pending=True))
    assert (rewound.case, rewound.leader) == ("rewind_then_follow", "node2")
    restart = ha.decide(standby(ME), local(request="restart"))
    assert restart.case == "restart_requested" and restart.remote == Upstream("site-a", 5000)


def test_removing_standby_cluster_promotes_the_standby_leader():
    assert ha.decide(cluster(ME), local()).case == "lock_held_promote"
    assert ha.decide(standby(ME), local()).case == "standby_leader_follow_remote"


def test_an_unparsable_standby_cluster_setting_promotes_nothing():
    for value in ("site-a", {"host": "x", "port": 0}, {"port": 5432}, {"host": "h; rm -rf /"}, [1], None,
                  {"host": "h", "primary_slot_name": "Bad-Name"}, {"host": "h", "extra": 1},
                  {"host": "h", "restore_command": "a\nb"}, {"host": "h", "port": True}):
        bad = {"standby_cluster": value}
        assert ha.decide(cluster(ME, config=bad), local()).case == "standby_cluster_unknown"
        assert ha.decide(cluster(None, config=bad), local()).case == "standby_cluster_unknown"
        assert ha.decide(cluster(initialize=None, config=bad), local(data=ha.EMPTY, running=False)).actions == ()
        # what runs as primary stays so: no demotion on a value nobody can read
        assert ha.decide(cluster(ME, config=bad), local(role="primary")).case == "leader_renew"


def test_a_standby_leader_is_checked_against_the_remote_only_when_it_is_behind_a_later_timeline():
    def state(**kw):
        base = dict(name=ME, data=ha.POSTGRES, sysid=SYSID, running=True, role="replica", timeline=3,
                    not_streaming_for=6.0, loop_wait=1, remote_timeline=3)
        return ha.LocalState(**{**base, **kw})
    assert ha.decide(standby(ME), state()).case == "standby_leader_follow_remote"          # same timeline
    assert ha.decide(standby(ME), state(remote_timeline=None)).case == "standby_leader_follow_remote"  # unknown
    assert ha.decide(standby(ME), state(not_streaming_for=4.0, remote_timeline=4)).case == \
        "standby_leader_follow_remote"                                                    # not long enough
    assert ha.decide(standby(ME), state(remote_timeline=4)).case == "standby_leader_diverged"
    stopped = ha.decide(standby(ME), local(running=False, rewind_pending=True))
    assert stopped.case == "standby_leader_rewind" and stopped.remote is not None
    # a former primary may take a standby cluster's lock: it is checked against the remote first
    assert ha.decide(standby(), local(rewind_pending=True)).case == "standby_leader_race"
    diverged = ha.decide(standby("node2", members=[Member(name="node2", role="replica", state="running",
                                                          conn_url="postgres://127.0.0.1:5432/x", timeline=4)]),
                         local(timeline=3, not_streaming_for=6.0))
    assert (diverged.case, diverged.leader) == ("replica_diverged", "node2")
