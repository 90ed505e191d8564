"""A deterministic simulation of a governor cluster on a simulated clock.

Each member runs the real `governor.ha.decide()` on snapshots of an in-memory etcd with the
adapters' semantics (a lock that expires ttl after its last renewal, taken only if absent, renewed
and released only by its holder; member keys that expire) and a model of its PostgreSQL (WAL as a
list of write ids, a timeline, streaming from an upstream with a lag). The effects of each action
are modelled at the level decide() reasons about; the lock fence (thread, supervising parent)
is modelled as what it does: stop PostgreSQL `margin` seconds before the lock's deadline as its
member knows it.

A schedule of faults comes from a seed: crashes of a member (governor and PostgreSQL), freezes
of the HA loop longer than ttl, partitions between a member and etcd, replication stalls, clean
stops, operator switchovers. Every other group of six seeds runs with failsafe_mode: a leader cut
off from etcd asks every member on its failsafe list (answered at once by those alive, unfrozen,
running as replicas of it) and holds on to their promises. Invariants are checked at every tick:

  one_writer   never two PostgreSQL servers that accept writes at the same moment;
  bounded_loss a member promoted after a failure holds every write acknowledged at or before
               the leader's last published position minus maximum_lag_on_failover;
  sync_loss    in synchronous mode (every other seed), a promoted member holds every write
               acknowledged (a write is acknowledged once one of the promise's members has it);
  progress     once the faults are over, a leader is elected within a bound.

With `standby=True` the schedules are about standby clusters (the `standby_cluster` setting).
Even seeds start as a standby cluster of a remote primary cluster whose WAL grows every tick, and
half of them end it with promote-cluster. Odd seeds start as a primary cluster and get
demote-cluster at a random moment: the other site, which had this cluster's WAL up to its last
primary's (less a random tail it may not have received), is promoted the moment no member
here accepts writes (demote-cluster --wait, then promote-cluster there); its new timeline
grows from then on. While this cluster is a standby of a writable remote:

  standby_writer  no member accepts writes, whatever the faults;
  standby_progress once the faults are over, a member holds the lock and streams from the remote.

`Rules` switches parts of governor off on purpose, to show the invariants catch what they guard.
"""
from __future__ import annotations

import random
from dataclasses import dataclass, field, replace
from typing import Dict, List, Optional, Tuple

from governor import failsafe, ha
from governor.cluster import Cluster, Leader, Member, Switchover
from governor.failsafe import FailsafeList
from governor.ha import Action, LocalState
from governor.sync import SyncState

SYSID = "7000000000000000001"
TICK = 0.1
LEADER = "<leader>"
REMOTE = "<remote>"      # a standby cluster's upstream: the primary cluster
STANDBY_SETTING = {"standby_cluster": {"host": "site-a", "port": 5432}}


@dataclass(frozen=True)
class Rules:
    """What governor does, each switchable for a deliberately broken variant."""
    lag_check: bool = True          # maximum_lag_on_failover is honoured in the race
    expiry_demotion: bool = True    # a primary that cannot reach etcd demotes itself
    fence: bool = True              # the lock fence / supervising parent stops PostgreSQL before expiry
    renew_by_cas: bool = True       # the lock is renewed only while it names the renewer
    sync_promise: bool = True       # synchronous mode: the race reads the leader's promise (`sync` key)
    recheck_after_acquire: bool = True  # a promotion re-reads the positions once it holds the lock
    failsafe_promise: bool = True   # failsafe: a member that vouched for a leader does not race it
    failsafe_list: bool = True      # failsafe: members off the list, or just started, do not race
    standby_setting: bool = True    # standby cluster: decide() is shown the standby_cluster setting
    standby_wait_decision: bool = True  # demote-cluster --wait also waits for a standby_* decision
    promote_rereads: bool = True    # a promotion without a fresh lock re-reads the setting first


@dataclass
class Timing:
    ttl: float = 10.0
    loop_wait: float = 1.0
    retry_timeout: float = 3.0
    max_lag: int = 5                # maximum_lag_on_failover, in writes


class Violation(AssertionError):
    pass


# ------------------------------------------------------------------------------------------ etcd

@dataclass
class Key:
    value: str
    expires: Optional[float]        # None: persistent
    revision: int


class SimEtcd:
    def __init__(self) -> None:
        self.keys: Dict[str, Key] = {}
        self.revision = 0

    def _live(self, now: float) -> Dict[str, Key]:
        for name in [k for k, v in self.keys.items() if v.expires is not None and v.expires <= now]:
            del self.keys[name]
        return self.keys

    def put(self, now: float, key: str, value: str, ttl: Optional[float] = None) -> None:
        self._live(now)
        self.revision += 1
        self.keys[key] = Key(value, now + ttl if ttl else None, self.revision)

    def get(self, now: float, key: str) -> Optional[str]:
        entry = self._live(now).get(key)
        return entry.value if entry else None

    def create(self, now: float, key: str, value: str, ttl: float) -> bool:
        if key in self._live(now):
            return False
        self.put(now, key, value, ttl)
        return True

    def refresh_if(self, now: float, key: str, value: str, ttl: float, check: bool = True) -> bool:
        entry = self._live(now).get(key)
        if entry is None or (check and entry.value != value):
            return False
        self.put(now, key, value, ttl)
        return True

    def delete_if(self, now: float, key: str, value: str) -> bool:
        entry = self._live(now).get(key)
        if entry is None or entry.value != value:
            return False
        del self.keys[key]
        return True


# ------------------------------------------------------------------------------------ PostgreSQL

@dataclass
class Postgres:
    running: bool = True
    primary: bool = False
    timeline: int = 1
    wal: Tuple[int, ...] = ()      # ids of the writes in this server's WAL, in order
    upstream: Optional[str] = None  # member it streams from (replica)
    stalled_until: float = 0.0     # replication stall fault

    @property
    def lsn(self) -> int:
        return len(self.wal)


@dataclass
class MemberState:
    name: str
    pg: Postgres
    next_pass: float = 0.0
    holds_lock: bool = False
    deadline: Optional[float] = None     # monotonic expiry of the lock as this member knows it
    fence_armed: bool = False            # the lock fence watches `deadline` (it may outlive holds_lock)
    dcs_failed: bool = False
    rewind_pending: bool = False
    starting_since: Optional[float] = None
    crashed_until: float = 0.0           # governor and PostgreSQL down
    frozen_until: float = 0.0            # HA loop (and its fence thread) frozen; PostgreSQL runs
    cut_until: float = 0.0               # no etcd
    stopped: bool = False                # clean stop by the operator
    slow_until: float = 0.0              # its actions happen seconds after the read they were decided on
    pending: Optional[Tuple[float, ha.Decision, Optional[Cluster]]] = None
    failures: int = 0
    # failsafe (every other group of six seeds)
    started: float = 0.0                 # when this governor process started
    last_leader: Optional[str] = None
    fs_list: Optional[Tuple[str, ...]] = None   # leader: the members on the failsafe list it wrote
    fs_since: Optional[float] = None     # leader: kept primary by its members' promises since
    fs_vouched: Optional[float] = None   # leader: when its last round every member vouched in was sent
    promise: Optional[Tuple[str, float]] = None  # (leader vouched for, until)
    not_streaming_since: Optional[float] = None  # a replica whose upstream does not feed it
    last_case: str = ""                  # the last decision it carried out (its /status)

    def alive(self, now: float) -> bool:
        return now >= self.crashed_until and not self.stopped


# ------------------------------------------------------------------------------------------ world

class World:
    def __init__(self, seed: int, rules: Rules = Rules(), timing: Optional[Timing] = None,
                 members: Optional[int] = None,
                 duration: float = 45.0, faults: Optional[List[Tuple[float, str, str, float]]] = None,
                 synchronous: Optional[bool] = None, failsafe_mode: Optional[bool] = None, standby: bool = False):
        # Failsafe mode in every other group of six seeds (it needs retry_timeout 4 at ttl 10).
        self.failsafe_mode = (seed // 6) % 2 == 1 if failsafe_mode is None and not standby else bool(failsafe_mode)
        self.demote_flavour = standby and seed % 2 == 1     # starts primary, gets demote-cluster
        self.standby = standby and not self.demote_flavour  # the standby_cluster setting is there
        self.remote_live = self.standby     # the remote primary cluster accepts writes
        self.remote_wal: Tuple[int, ...] = ()
        self.remote_timeline = 1
        self.last_primary_wal: Tuple[int, ...] = ()
        timing = timing or (Timing(retry_timeout=4.0) if self.failsafe_mode else Timing())
        # Two streams: the fault schedule, and the choices made while it runs, so that a schedule
        # run without some of its faults (shrinking) still makes the same choices.
        self.plan_rng = random.Random(seed)
        self.rng = random.Random(seed * 7919 + 1)
        self.seed = seed
        self.rules = rules
        self.timing = timing
        self.duration = duration
        self.now = 0.0
        self.etcd = SimEtcd()
        self.write_id = 0
        self.acked: Dict[int, Tuple[str, float]] = {}     # write id -> (member, time)
        self.log: List[str] = []
        self.members: Dict[str, MemberState] = {}
        self.faults: List[Tuple[float, str, str, float]] = []   # (time, kind, member, duration)
        self.last_fault_end = 0.0
        # 3, 4 or 5 members, each count with and without synchronous mode (seed % 2).
        members = 3 + (seed // 2) % 3 if members is None else members
        names = [f"m{i}" for i in range(members)]
        for i, name in enumerate(names):
            first = REMOTE if self.standby else None
            self.members[name] = MemberState(name, Postgres(primary=(i == 0 and not self.standby),
                                                            upstream=first if i == 0 else names[0]),
                                             next_pass=self.rng.uniform(0, timing.loop_wait))
        leader = self.members[names[0]]
        self.etcd.put(0, "initialize", SYSID)
        self.etcd.put(0, "leader", leader.name, timing.ttl)
        self.etcd.put(0, "optime/leader", "0")
        self.published_wal: Tuple[int, ...] = ()
        self.history: Tuple[dict, ...] = ()     # the `history` key: one record per promotion
        # Synchronous mode (every other seed unless told): a write is acknowledged only once
        # `quorum` of the promise's members have it; the promise names every other member.
        self.synchronous = seed % 2 == 0 and not standby if synchronous is None else synchronous
        self.sync: Optional[SyncState] = SyncState(names[0], tuple(names[1:]), 1, 1) if self.synchronous else None
        self.acked_upto: Dict[str, int] = {}
        self.max_timeline = 1
        leader.holds_lock, leader.deadline, leader.fence_armed = True, timing.ttl, not self.standby
        for m in self.members.values():
            self._publish(m)
        if faults is None:
            self._plan_faults()
        else:
            self.faults = sorted(faults)
            self.last_fault_end = max((f[0] + f[3] for f in faults), default=0.0)
        self.schedule = list(self.faults)

    # -------------------------------------------------------------------------------- schedule

    def _plan_faults(self) -> None:
        t = 3.0
        names = list(self.members)
        while t < self.duration - 20:
            t += self.plan_rng.uniform(0.5, 8.0)
            kind = self.plan_rng.choice(["crash", "freeze", "cut", "stall", "stop", "switchover", "cut_all", "slow",
                                         "pause"])
            who = self.plan_rng.choice(names)
            if self.plan_rng.random() < 0.5:      # the leader is the interesting target: resolved when it happens
                who = LEADER
            length = self.plan_rng.choice([0.5, 2.0, 5.0, 9.0, 12.0, 20.0]) * self.plan_rng.uniform(0.8, 1.2)
            self.faults.append((round(t, 1), kind, who, round(length, 1)))
            self.last_fault_end = max(self.last_fault_end, t + length)
        if self.demote_flavour:
            self.faults.append((round(self.plan_rng.uniform(3.0, self.duration - 20), 1), "demote_cluster", "-", 0.0))
        elif self.standby and self.plan_rng.random() < 0.5:
            self.faults.append((round(self.plan_rng.uniform(3.0, self.duration - 20), 1), "promote_cluster", "-", 0.0))
        self.faults.sort()

    def _apply_faults(self) -> None:
        while self.faults and self.faults[0][0] <= self.now + 1e-9:
            _t, kind, who, length = self.faults.pop(0)
            if who == LEADER:
                who = self.etcd.get(self.now, "leader") or sorted(self.members)[0]
                who = who if who in self.members else sorted(self.members)[0]
            if kind == "switchover":
                leader = self.etcd.get(self.now, "leader")
                others = [n for n in self.members if n != leader]
                if leader:
                    self.etcd.put(self.now, "failover", f"{leader}>{self.rng.choice(others)}", 60)
                self.note(f"switchover requested from {leader}")
                continue
            if kind == "demote_cluster":
                self.standby, self.remote_live = True, False    # governorctl demote-cluster
                self.note("demote-cluster")
                continue
            if kind == "promote_cluster":
                self.standby = False       # governorctl promote-cluster: the remote site was demoted
                self.note("promote-cluster")
                continue
            if kind == "pause":
                self.etcd.put(self.now, "pause", "true", length)    # governorctl pause, resumed after `length`
                self.note(f"maintenance mode for {length}s")
                continue
            if kind == "cut_all":
                for m in self.members.values():
                    m.cut_until = max(m.cut_until, self.now + length)
                self.note(f"etcd unreachable for everyone for {length}s")
                continue
            m = self.members[who]
            if kind == "crash":
                self._crash(m, self.now + length)
            elif kind == "freeze":
                m.frozen_until = max(m.frozen_until, self.now + length)
            elif kind == "cut":
                m.cut_until = max(m.cut_until, self.now + length)
            elif kind == "slow":
                m.slow_until = max(m.slow_until, self.now + length)
            elif kind == "stall":
                m.pg.stalled_until = max(m.pg.stalled_until, self.now + length)
            elif kind == "stop":
                self._clean_stop(m)
                m.crashed_until = m.started = self.now + length   # started again after `length`
                m.stopped = False
            self.note(f"{kind} {who} for {length}s")

    def note(self, text: str) -> None:
        self.log.append(f"{self.now:6.1f} {text}")

    # -------------------------------------------------------------------------------- faults

    def _crash(self, m: MemberState, until: float) -> None:
        m.crashed_until = until
        m.started = until
        m.pg.running = False
        self._forget(m)

    def _forget(self, m: MemberState) -> None:
        """A new governor process: its memory is gone, what is on disk stays."""
        m.holds_lock, m.deadline, m.dcs_failed, m.starting_since, m.failures = False, None, False, None, 0
        m.fence_armed = False
        m.pending = None
        m.rewind_pending = m.rewind_pending or m.pg.primary
        m.last_leader, m.fs_list, m.fs_since, m.promise = None, None, None, None
        m.last_case, m.not_streaming_since = "", None

    def _clean_stop(self, m: MemberState) -> None:
        """SIGTERM: PostgreSQL stopped first (a fast shutdown sends the standbys everything), then
        the lock released."""
        if m.pg.running and m.pg.primary:
            for other in self.members.values():
                if other.pg.running and other.pg.upstream == m.name and self._can_stream(other, m):
                    other.pg.wal = m.pg.wal
        m.pg.running = False
        if m.holds_lock and self.now >= m.cut_until:
            self.etcd.delete_if(self.now, "leader", m.name)
        self._forget(m)

    # -------------------------------------------------------------------------------- clients

    def _writes(self) -> None:
        if self.standby and not self.remote_live and self._demoted():
            # nothing here is writable any more: the operator promotes the other site, which
            # streamed this cluster's WAL (perhaps not its last writes) and starts a new timeline
            tail = self.rng.choice([0, 0, 1, 2])
            self.remote_wal = self.last_primary_wal[:max(0, len(self.last_primary_wal) - tail)]
            self.remote_live, self.remote_timeline = True, self.max_timeline + 1
            self.note(f"the other site promoted with {len(self.remote_wal)} of {len(self.last_primary_wal)} writes")
        if self.standby and self.remote_live:
            self.write_id += 1
            self.remote_wal = self.remote_wal + (self.write_id,)
        for m in self.members.values():
            if self._accepts_writes(m):
                self.write_id += 1
                m.pg.wal = self.last_primary_wal = m.pg.wal + (self.write_id,)
                if not self.synchronous:
                    self.acked[self.write_id] = (m.name, self.now)

    def _demoted(self) -> bool:
        """What demote-cluster --wait waits for: the lock holder's member key says it runs as a
        replica, and its /status that it decided so under the standby setting (its loop runs one
        decision at a time: none from before is still to come); and (what the operator sees
        before promote-cluster) nothing here accepts writes."""
        holder = self.etcd.get(self.now, "leader")
        key = self.etcd.get(self.now, f"members/{holder}") if holder else None
        member = self.members.get(holder or "")
        decided = member is not None and member.last_case.startswith("standby_") and member.pending is None
        return key is not None and key.startswith("replica,running,") and member is not None \
            and (decided or not self.rules.standby_wait_decision) \
            and not any(self._accepts_writes(m) for m in self.members.values())

    def _sync_acks(self) -> None:
        """Synchronous mode: a primary's commits are acknowledged once `quorum` of the promise's
        members hold them (a primary outside its own promise acknowledges nothing)."""
        promise = self.sync
        if promise is None:
            return
        for m in self.members.values():
            if not self._accepts_writes(m) or promise.leader != m.name:
                continue
            have = sorted((len(o.pg.wal) if m.pg.wal[:len(o.pg.wal)] == o.pg.wal else 0
                           for name, o in self.members.items() if name in promise.members), reverse=True)
            upto = have[promise.quorum - 1] if len(have) >= promise.quorum else 0
            for wid in m.pg.wal[self.acked_upto.get(m.name, 0):upto]:
                self.acked[wid] = (m.name, self.now)
            self.acked_upto[m.name] = max(self.acked_upto.get(m.name, 0), upto)

    def _accepts_writes(self, m: MemberState) -> bool:
        return m.pg.running and m.pg.primary and self.now >= m.crashed_until

    def _replicate(self) -> None:
        for m in self.members.values():
            if m.pg.upstream == REMOTE:
                if self.remote_live and m.pg.running and not m.pg.primary and self.now >= m.pg.stalled_until \
                        and self.remote_wal[:len(m.pg.wal)] == m.pg.wal:
                    m.pg.wal = self.remote_wal
                    m.pg.timeline = max(m.pg.timeline, self.remote_timeline)
                continue
            up = self.members.get(m.pg.upstream) if m.pg.upstream else None
            if not m.pg.running or m.pg.primary or up is None or not up.pg.running or self.now < m.pg.stalled_until:
                continue
            if self._can_stream(m, up):
                m.pg.wal = up.pg.wal
                m.pg.timeline = max(m.pg.timeline, up.pg.timeline)

    @staticmethod
    def _can_stream(m: MemberState, up: MemberState) -> bool:
        """A replica follows its upstream only if its WAL is a prefix of the upstream's."""
        return up.pg.wal[:len(m.pg.wal)] == m.pg.wal

    # -------------------------------------------------------------------------------- governor

    def _snapshot(self) -> Cluster:
        e = self.etcd
        live = e._live(self.now)
        members = []
        for name, key in live.items():
            if name.startswith("members/"):
                role, state, tl, lsn = key.value.split(",")
                members.append(Member(name=name[8:], role=role, state=state, conn_url=f"postgres://{name[8:]}:5432/",
                                      api_url=f"http://{name[8:]}:8008", timeline=int(tl), lsn=int(lsn)))
        leader = live.get("leader")
        switchover = None
        if "failover" in live:
            old, new = live["failover"].value.split(">")
            switchover = Switchover(leader=old, candidate=new, requested_at=0.0)
        optime = live.get("optime/leader")
        sync = self.sync if self.rules.sync_promise else None
        return Cluster(initialize=SYSID, leader=Leader(leader.value, leader.revision) if leader else None, sync=sync,
                       members=tuple(sorted(members, key=lambda x: x.name)),
                       leader_lsn=int(optime.value) if optime else None, index=e.revision, switchover=switchover,
                       history=self.history, paused="pause" in live,
                       config=STANDBY_SETTING if self.standby and self.rules.standby_setting else {},
                       failsafe=self._failsafe_key(live) if self.rules.failsafe_list else None)

    @staticmethod
    def _failsafe_key(live: Dict[str, Key]) -> Optional[FailsafeList]:
        if "failsafe" not in live:
            return None
        leader, _, names = live["failsafe"].value.partition(":")
        return FailsafeList(leader, {n: f"http://{n}:8008" for n in names.split(",") if n})

    def _publish(self, m: MemberState) -> None:
        pg = m.pg
        role = ("primary" if pg.primary else "replica") if pg.running else "stopped"
        self.etcd.put(self.now, f"members/{m.name}", f"{role},{'running' if pg.running else 'stopped'},"
                      f"{pg.timeline},{pg.lsn}", self.timing.ttl)
        if m.holds_lock and pg.running and pg.primary:
            self._publish_position(m)

    def _publish_position(self, m: MemberState) -> None:
        self.etcd.put(self.now, "optime/leader", str(m.pg.lsn))
        self.published_wal = m.pg.wal

    def _local(self, m: MemberState, cluster: Optional[Cluster]) -> LocalState:
        pg = m.pg
        lock_left = m.deadline - self.now if m.holds_lock and m.deadline is not None else None
        holder = cluster is not None and cluster.leader is not None and cluster.leader.name == m.name
        if holder and not pg.running:
            m.starting_since = m.starting_since if m.starting_since is not None else self.now
        else:
            m.starting_since = None
        max_lag = self.timing.max_lag if self.rules.lag_check else 10**9
        # What the other members answer over their API this pass (None: crashed or frozen).
        peers = {}
        if self.synchronous:
            for name, o in self.members.items():
                if name == m.name:
                    continue
                answering = o.alive(self.now) and self.now >= o.frozen_until
                peers[name] = Member(name=name, role=("primary" if o.pg.primary else "replica"),
                                     state="running" if o.pg.running else "stopped", timeline=o.pg.timeline,
                                     lsn=o.pg.lsn) if answering else None
        vouched = None
        if self.failsafe_mode and cluster is None and m.holds_lock and pg.running and pg.primary:
            vouched = m.fs_vouched = self._round(m)
        promise = m.promise[0] if m.promise and m.promise[1] > self.now and self.rules.failsafe_promise else None
        not_streaming_for, remote_timeline = self._not_streaming(m, cluster), None
        if self.standby and self.remote_live and holder and not_streaming_for is not None:
            remote_timeline = self.remote_timeline      # IDENTIFY_SYSTEM answered
        return LocalState(name=m.name, data=ha.POSTGRES, sysid=SYSID, running=pg.running,
                          failsafe_mode=self.failsafe_mode, failsafe_vouched=vouched, failsafe_promise=promise,
                          failsafe_fresh=self.now - m.started < self.timing.ttl and self.rules.failsafe_list,
                          role=("primary" if pg.primary else "replica") if pg.running else None,
                          timeline=pg.timeline, lsn=pg.lsn, maximum_lag_on_failover=max_lag,
                          rewind_pending=m.rewind_pending, now=self.now, loop_wait=self.timing.loop_wait,
                          retry_timeout=self.timing.retry_timeout, lock_left=lock_left,
                          starting_for=(self.now - m.starting_since) if m.starting_since is not None else None,
                          peers=peers, not_streaming_for=not_streaming_for, remote_timeline=remote_timeline)

    def _streaming(self, m: MemberState) -> bool:
        pg = m.pg
        if not pg.running or pg.primary or self.now < pg.stalled_until or pg.upstream is None:
            return False
        if pg.upstream == REMOTE:
            return self.remote_live and self.remote_wal[:len(pg.wal)] == pg.wal
        up = self.members.get(pg.upstream)
        return up is not None and up.pg.running and up.alive(self.now) and self._can_stream(m, up)

    def _not_streaming(self, m: MemberState, cluster: Optional[Cluster]) -> Optional[float]:
        """Seconds a running replica has gone without streaming while another leads, or while it
        leads a standby cluster (observe._not_streaming_for)."""
        leader = cluster.leader.name if cluster is not None and cluster.leader else None
        waiting = m.pg.running and not m.pg.primary and not self._streaming(m) and leader is not None \
            and (leader != m.name or self.standby)
        if not waiting:
            m.not_streaming_since = None
            return None
        m.not_streaming_since = m.not_streaming_since if m.not_streaming_since is not None else self.now
        return self.now - m.not_streaming_since

    def _round(self, m: MemberState) -> Optional[float]:
        """The leader's POST /failsafe to every member on its list, answered at once (a crashed or
        frozen member does not answer; the others vouch only for the leader they know, as replicas)."""
        if m.fs_list is None:
            return None
        ok = True
        for name in m.fs_list:
            o = self.members.get(name)
            if o is None or not o.alive(self.now) or self.now < o.frozen_until or not o.pg.running \
                    or o.pg.primary or o.last_leader != m.name:
                ok = False
                continue
            until = self.now + self.timing.ttl
            o.promise = (m.name, max(until, o.promise[1]) if o.promise and o.promise[0] == m.name else until)
        return self.now if ok else None

    def _pass(self, m: MemberState) -> None:
        t = self.timing
        reachable = self.now >= m.cut_until
        cost = 0.0
        lock_left = m.deadline - self.now if m.holds_lock and m.deadline is not None else None
        if m.dcs_failed and lock_left is not None and lock_left <= t.retry_timeout + 1:
            cluster = None                      # no new etcd call that could outlast the lock
        elif reachable:
            cluster = self._snapshot()
        else:
            times = failsafe.timing(t.ttl, t.loop_wait, t.retry_timeout)
            cluster, cost = None, times[1] if m.fs_since is not None and times else t.retry_timeout
        m.dcs_failed = cluster is None
        if cluster is not None:
            m.last_leader = cluster.leader.name if cluster.leader else (
                cluster.failsafe.leader if cluster.failsafe else m.last_leader)
            listed = cluster.failsafe
            m.fs_list = tuple(listed.members) if listed is not None and listed.leader == m.name else None
        if cluster is not None and cluster.leader and cluster.leader.name != m.name:
            m.holds_lock = False
            m.fence_armed = m.fence_armed and m.pg.running and m.pg.primary
        local = self._local(m, cluster)
        decision = ha.decide(cluster, local)
        if decision.case != "failsafe_keep_primary":
            m.fs_since = None
        if not self.rules.expiry_demotion and decision.case in ("dcs_unreachable_demote", "lock_expiring_demote"):
            decision = replace(decision, actions=())
        if self.now < m.slow_until and decision.actions:
            # A slow host: the actions run a while after the snapshot they were decided on.
            m.pending = (self.now + self.rng.choice([0.5, 1.5, 3.0, 6.0]), decision, cluster)
            m.next_pass = m.pending[0]
            return
        self._act(m, decision, cluster, cost)

    def _act(self, m: MemberState, decision: ha.Decision, cluster: Optional[Cluster], cost: float = 0.0) -> None:
        t = self.timing
        reachable = self.now >= m.cut_until
        ok = True
        m.last_case = decision.case
        for action in decision.actions:
            if not self._execute(m, action, decision, reachable, cluster):
                ok = False
                break
        if reachable and cluster is not None:
            self._publish(m)
        m.failures = 0 if ok else m.failures + 1
        delay = t.loop_wait if ok else min(0.1 * 2 ** (m.failures - 1), t.loop_wait)
        m.next_pass = self.now + cost + max(delay, TICK)

    def _execute(self, m: MemberState, action: Action, decision: ha.Decision, reachable: bool,
                 snapshot: Optional[Cluster] = None) -> bool:
        t, pg = self.timing, m.pg
        if action in (Action.ACQUIRE_LOCK, Action.RENEW_LOCK):
            if not reachable:
                return False
            if action == Action.ACQUIRE_LOCK:
                done = self.etcd.create(self.now, "leader", m.name, t.ttl)
                if done and Action.PROMOTE in decision.actions and self.rules.recheck_after_acquire \
                        and snapshot is not None:
                    now = self._snapshot()
                    if (now.leader_lsn, now.history, now.sync, now.config) != (
                            snapshot.leader_lsn, snapshot.history, snapshot.sync, snapshot.config):
                        self.etcd.delete_if(self.now, "leader", m.name)
                        return False
            else:
                done = self.etcd.refresh_if(self.now, "leader", m.name, t.ttl, check=self.rules.renew_by_cas)
            if not done:
                m.holds_lock = False
                m.fence_armed = m.fence_armed and pg.running and pg.primary
                return False
            # a standby cluster's lock arms no fence (there is nothing writable to stop)
            m.holds_lock, m.deadline, m.fence_armed = True, self.now + t.ttl, decision.remote is None
            return True
        if action == Action.PROMOTE:
            if self.standby and self.rules.promote_rereads and Action.ACQUIRE_LOCK not in decision.actions:
                return False    # roles.promote: standby_cluster was set since the decision
            pg.primary, pg.upstream, pg.timeline = True, None, max(pg.timeline, self.max_timeline) + 1
            if self.synchronous:
                self.sync = SyncState(m.name, tuple(n for n in self.members if n != m.name), 1,
                                      (self.sync.index if self.sync else 0) + 1)
            self.max_timeline = pg.timeline
            self.history = self.history + ({"timeline": pg.timeline, "lsn": pg.lsn},)
            self._check_promotion(m)
            if reachable:
                self._publish_position(m)
                if (self.etcd.get(self.now, "failover") or "").endswith(f">{m.name}"):
                    self.etcd.delete_if(self.now, "failover", self.etcd.get(self.now, "failover"))
            self.note(f"{m.name} promoted ({decision.case}) on timeline {pg.timeline} at {pg.lsn}")
            return True
        if action == Action.DEMOTE:
            pg.running, pg.primary = False, False
            m.holds_lock, m.rewind_pending, m.fence_armed = False, True, False
            self.note(f"{m.name} demoted ({decision.case})")
            return True
        if action in (Action.REWIND,):
            if decision.remote is not None:
                if not self.remote_live:
                    # the other site is still this cluster's standby, on the same timeline:
                    # pg_rewind finds nothing to do
                    pg.running, pg.primary, m.rewind_pending = False, False, False
                    return True
                source, timeline = self.remote_wal, self.remote_timeline
            else:
                leader = self.members.get(decision.leader or "")
                if leader is None or not leader.pg.running or not leader.alive(self.now):
                    return False
                source, timeline = leader.pg.wal, leader.pg.timeline
            common = 0
            while common < min(len(pg.wal), len(source)) and pg.wal[common] == source[common]:
                common += 1
            pg.running, pg.primary, pg.wal, pg.timeline = False, False, pg.wal[:common], timeline
            m.rewind_pending = False
            return True
        if action in (Action.START_AS_REPLICA, Action.FOLLOW):
            self._start_replica(m, REMOTE if decision.remote is not None else decision.leader)
            return True
        if action == Action.START_AS_LEADER:
            pg.running = True
            return True
        if action == Action.STEP_DOWN:
            self._clean_stop(m)
            m.rewind_pending = True
            return True
        if action == Action.FAILSAFE_HOLD:
            if m.fs_vouched is None:
                return False
            m.deadline = m.fs_vouched + t.ttl      # from when the round was sent, however late this runs
            m.fence_armed = True
            m.fs_since = m.fs_since if m.fs_since is not None else self.now
            return True
        if action == Action.FAILSAFE_LIST:
            if not reachable or snapshot is None or self.etcd.get(self.now, "leader") != m.name:
                return False
            wanted = failsafe.wanted(snapshot, m.name, self.failsafe_mode)
            if wanted is None:
                self.etcd.keys.pop("failsafe", None)
            else:
                self.etcd.put(self.now, "failsafe", f"{m.name}:{','.join(sorted(wanted.members))}")
            m.fs_list = tuple(wanted.members) if wanted else None
            return True
        if action == Action.RELEASE_LOCK:
            pg.running = False
            self.etcd.delete_if(self.now, "leader", m.name)
            m.holds_lock = m.fence_armed = False
            return True
        return True   # ENSURE_SLOTS, MANAGE_SYNC, CLONE, ... : nothing decide() reasons about here

    def _start_replica(self, m: MemberState, leader: Optional[str]) -> None:
        m.pg.running, m.pg.primary, m.pg.upstream = True, False, leader

    def _fences(self) -> None:
        thread_margin = max(1.5, min(0.2 * self.timing.ttl, 5.0))
        for m in self.members.values():
            if not m.fence_armed or m.deadline is None or not self._accepts_writes(m):
                continue
            # A frozen loop freezes its fence thread too; the supervising parent acts a little later.
            margin = thread_margin * (0.75 if self.now < m.frozen_until else 1.0)
            if self.now >= m.deadline - margin:
                if self.rules.fence:
                    m.pg.running = False
                    m.holds_lock = m.fence_armed = False
                    self.note(f"{m.name} fenced {m.deadline - self.now:.1f}s before its lock expires")

    # -------------------------------------------------------------------------------- invariants

    def _check_promotion(self, m: MemberState) -> None:
        """bounded_loss: the promoted member holds every write acknowledged at or before the last
        published leader position minus maximum_lag_on_failover."""
        if self.synchronous:
            have = set(m.pg.wal)
            lost = [w for w in self.acked if w not in have]
            if lost:
                raise Violation(f"sync_loss: {m.name} promoted without {len(lost)} acknowledged write(s), "
                                f"e.g. {lost[:3]}")
            return
        published = len(self.published_wal)
        must_have = self.published_wal[:max(0, published - self.timing.max_lag)]
        have = set(m.pg.wal)
        missing = [w for w in must_have if w not in have]
        if missing:
            raise Violation(f"bounded_loss: {m.name} promoted without {len(missing)} write(s) acknowledged before "
                            f"the published position {published} - max lag {self.timing.max_lag}")

    def _check_one_writer(self) -> None:
        writers = [m.name for m in self.members.values() if self._accepts_writes(m)]
        if writers and self.standby and self.remote_live:
            raise Violation(f"standby_writer: {', '.join(writers)} accept writes in a standby cluster at "
                            f"{self.now:.1f}s")
        if len(writers) > 1:
            raise Violation(f"one_writer: {', '.join(writers)} accept writes at {self.now:.1f}s")

    # -------------------------------------------------------------------------------- run

    def run(self) -> None:
        steps = int(self.duration / TICK)
        leader_seen_after_faults = False
        try:
            for step in range(steps):
                self.now = round(step * TICK, 1)
                self._apply_faults()
                self._fences()
                self._replicate()
                self._sync_acks()
                self._writes()
                self._check_one_writer()
                for m in sorted(self.members.values(), key=lambda x: x.next_pass):
                    if m.alive(self.now) and self.now >= m.frozen_until and self.now >= m.next_pass:
                        if m.pending is not None:
                            _at, decision, cluster = m.pending
                            m.pending = None
                            self._act(m, decision, cluster)
                        else:
                            self._pass(m)
                        self._check_one_writer()
                if self.now > self.last_fault_end + 3 * self.timing.ttl + 5:
                    if any(m.holds_lock and (m.pg.running and m.pg.upstream == REMOTE if self.standby
                                             else self._accepts_writes(m)) for m in self.members.values()):
                        leader_seen_after_faults = True
            if self.duration > self.last_fault_end + 3 * self.timing.ttl + 6 and not leader_seen_after_faults:
                raise Violation("standby_progress: no standby leader streaming from the remote within 3 ttl + 5 s "
                                "after the last fault" if self.standby else
                                "progress: no leader accepting writes within 3 ttl + 5 s after the last fault")
        except Violation as exc:
            raise Violation(f"seed {self.seed}: {exc}\n  faults: {self.describe_faults()}\n  "
                            + "\n  ".join(self.log[-25:])) from None

    def describe_faults(self) -> str:
        return "; ".join(line for line in self.log if any(k in line for k in (
            "crash", "freeze", "cut", "stall", "stop", "switchover", "unreachable", "slow", "maintenance"))) or "none"


def fails(seed: int, rules: Rules, faults: List[Tuple[float, str, str, float]], standby: bool = False
          ) -> Optional[str]:
    try:
        World(seed, rules, faults=faults, standby=standby).run()
    except Violation as exc:
        return str(exc).splitlines()[0]
    return None


def shrink(seed: int, rules: Rules, standby: bool = False) -> List[Tuple[float, str, str, float]]:
    """The failing seed's fault schedule with every fault removed that is not needed for a
    violation (the random choices inside the run still come from the seed)."""
    faults = World(seed, rules, standby=standby).schedule
    changed = True
    while changed:
        changed = False
        for i in range(len(faults)):
            fewer = faults[:i] + faults[i + 1:]
            if fails(seed, rules, fewer, standby):
                faults, changed = fewer, True
                break
    return faults


@dataclass
class Found:
    seed: Optional[int]          # the first seed that broke an invariant (None: none did)
    schedules: int               # how many schedules ran
    message: str = ""
    shrunk: List[Tuple[float, str, str, float]] = field(default_factory=list)


def search(seeds: range, rules: Rules = Rules(), standby: bool = False) -> Found:
    """Run each seed until one breaks an invariant; shrink its schedule."""
    for count, seed in enumerate(seeds, 1):
        try:
            World(seed, rules, standby=standby).run()
        except Violation as exc:
            return Found(seed, count, str(exc), shrink(seed, rules, standby))
    return Found(None, len(seeds))
