"""The loop: observe -> decide -> act -> publish, and what the executors share (ports.ActionHost).

Observing is observe.py, the decision ha.py, the executors actions/, publishing publish.py."""
from __future__ import annotations

import logging
import signal
import threading
from dataclasses import replace
from typing import Callable, Optional, TypeVar

import psycopg2

from governor import __version__, clock, failsafe, publish, reconfigure, shutdown, sleeping, uniquename, vouch
from governor.actions import EXECUTORS, ActionFailed
from governor.api import ApiServer
from governor.backoff import Backoff
from governor.callbacks import Runner, seen_as, transition
from governor.cluster import Cluster, parse_conn_url
from governor.config import Config
from governor.controls import Controls
from governor.dcs import DCS, DCSError, from_config, short_error
from governor.fence import LeaderMarker, runtime_directory
from governor.ha import Action, Decision, LocalState, decide
from governor.leaderlock import LeaderLock
from governor.lockfence import LockFence
from governor.memory import NodeMemory, timer
from governor.metrics import Metrics
from governor.observe import observe_dcs, observe_local, race_facts, remember_leader
from governor.peers import Peers
from governor.postgres import bootstrap
from governor.postgres.catalogue import catalogue
from governor.postgres.controller import ControllerError, ProcessController
from governor.postgres.controllers import make_controller
from governor.postgres.disk import DataDirectory
from governor.postgres.server import Server, ServerState
from governor.shutdown import RESTART_MARKER, consume_restart_marker  # noqa: F401 - RESTART_MARKER for tests
from governor.status import Archiver, NodeStatus, StatusBoard
from governor.supervisor import under_systemd
from governor.syncrep import SyncManager
from governor.systemd import Notifier
from governor.wakeups import OnChange, OperatorRequest
from governor.watchdog import Watchdog
from governor.watchdogfeed import WatchdogFeeder, pass_limit

log = logging.getLogger("governor")


T = TypeVar("T")
STEADY_ACTIONS = {Action.RENEW_LOCK, Action.ENSURE_SLOTS, Action.MANAGE_SYNC, Action.FOLLOW,
                  Action.REPLICA_SLOTS}


class Governor:
    def __init__(self, config: Config, dcs: Optional[DCS] = None,
                 controller: Optional[ProcessController] = None,
                 report: Optional[Callable[[Optional[float]], None]] = None,
                 server: Optional[Server] = None, disk: Optional[DataDirectory] = None,
                 peers: Optional[Peers] = None):
        self.file_config = config      # what the files say; self.config adds the dynamic settings
        self.config = config
        self.dynamic_index = -1       # the `config` key index last applied
        self.pg = config.postgresql
        self.name = self.pg.name
        self.dcs = dcs or from_config(config)
        # Outside systemd the kernel stops a postmaster governor started when governor dies.
        self.controller = controller or make_controller(self.pg, bind=not under_systemd())
        self.server = server or Server(self.pg)
        self.disk = disk or DataDirectory(lambda: self.pg)     # the data directory and the tools that change it
        self.peers = peers or Peers()                  # the other members' APIs and servers
        self.stopping = threading.Event()
        self.wake = threading.Event()
        self.watching: Optional[DCS] = None      # the adapter whose watch wakes self.wake
        self.once = OnChange()
        self.cluster: Optional[Cluster] = None
        self.mem = NodeMemory()
        self.notify = Notifier()
        self.backoff = Backoff()
        self.reload_requested = threading.Event()
        self.server_state: Optional[ServerState] = None
        self._request: Optional[OperatorRequest] = None
        self._request_lock = threading.Lock()
        self.syncrep = SyncManager(self)
        self.replicas: tuple = ()
        self.archiver: Optional[Archiver] = None     # pg_stat_archiver as the last pass read it
        self.pg_version: Optional[int] = None
        self.board = StatusBoard(NodeStatus(name=self.name, scope=config.etcd.scope))
        self.api: Optional[ApiServer] = None
        self.controls: Optional[Controls] = None
        self.metrics: Optional[Metrics] = Metrics(config, self.board.get) if config.metrics.enabled else None
        if self.metrics:
            self.dcs.observer = self.metrics.observe_dcs
        # `report` tells the supervising parent (supervisor.py) the lock deadline, when there is one.
        self.supervisor: Optional[int] = getattr(report, "parent", None)
        if report is None and under_systemd() and runtime_directory():
            report = LeaderMarker(runtime_directory(), self.pg.data_dir)   # for the ExecStopPost fence
        self.fence = LockFence(self.pg.data_dir, config.etcd.ttl, on_fire=self._fenced, report=report)
        self.watchdog = Watchdog(config.watchdog.mode, config.watchdog.device)
        self.lock = LeaderLock(self)     # our hold on the leader lock; the fence and watchdog follow it
        self.feeder = WatchdogFeeder(self.notify.watchdog, self.notify.watchdog_seconds, lambda: self.fence.deadline)
        self.callbacks = Runner(self.name, lambda: self.config.etcd.scope, lambda: self.pg.data_dir,
                                failed=self._callback_failed, address=lambda: (self.pg.connect_host, self.pg.port))

    def _callback_failed(self, kind: str) -> None:
        if self.metrics:
            self.metrics.callback_failures.labels(kind).inc()

    def _fenced(self, left: float) -> None:
        """The lock fence stopped PostgreSQL (its own thread): count it, wake the loop to act; the
        lock no longer holds systemd's watchdog pings back."""
        if self.metrics:
            self.metrics.lock_fence.inc()
        self.feeder.poke()
        self.wake.set()

    def data_replaced(self) -> None:
        """A new data directory (clone, bootstrap, reinitialize) or one rewound onto the leader's
        timeline: what was remembered about the old one no longer holds."""
        self.mem.rewind_pending = self.mem.rewind_failed = False
        self.mem.streamed_tli = None
        self.mem.not_streaming_since = None

    # ------------------------------------------------------------------ act

    def leader_address(self, leader: Optional[str]) -> Optional[tuple]:
        if not leader or self.cluster is None:
            return None
        member = self.cluster.member(leader)
        if member is None or not member.conn_url:
            return None
        return parse_conn_url(member.conn_url)

    def upstream(self, decision: Decision) -> Optional[tuple]:
        """Where the decision has this member stream from: the primary cluster for a standby leader
        (decision.remote), else the member it names."""
        return decision.remote if decision.remote is not None else self.leader_address(decision.leader)

    def execute(self, decision: Decision, local: LocalState) -> bool:
        """Run the decision's actions in order; False when one failed and the rest were skipped."""
        for action in decision.actions:
            try:
                EXECUTORS[action](self, decision, local)
            except ActionFailed as exc:
                self.mem.last_error = f"{action.value} not done: {exc}"
                self.once("action", self.mem.last_error, logging.WARNING)
                return False
            except (ControllerError, bootstrap.BootstrapError, DCSError, psycopg2.Error, OSError) as exc:
                self.mem.last_error = f"{action.value} failed: {str(exc).strip()}"
                self.once("action", self.mem.last_error, logging.ERROR)
                if isinstance(exc, DCSError):
                    self.mem.dcs_failed = True
                return False
            finally:
                self.mem.activity = None
        self.once("action", None)
        return True

    def write_conf(self, standby_of: Optional[tuple]) -> bool:
        """postgresql.conf for a primary (None), a standby of (host, port) or of nobody (()); a standby's passfile."""
        self.mem.conf_target = standby_of
        if standby_of:
            self.disk.write_pgpass()
        return self.disk.write_conf(standby_of, self.syncrep.names, self.slot_sync_database(), self.mem.standby_slots)

    def slot_sync_database(self) -> Optional[str]:
        """With logical_slots on a server that can keep them across failover (PostgreSQL 17:
        sync_replication_slots), the database its standbys' slot sync worker connects to."""
        if not self.pg.logical_slots or "sync_replication_slots" not in (catalogue(self.pg.bin_dir) or {}):
            return None
        return self.pg.logical_slots[0][1]

    def prepare_files(self, standby_of: Optional[tuple]) -> None:
        """The files PostgreSQL reads at start, for a primary (None) or a standby."""
        self.disk.write_pgpass()
        self.disk.write_pg_hba()
        self.write_conf(standby_of=standby_of)
        self.disk.set_standby_signal(standby_of is not None)

    def start_postgres(self, standby_of: Optional[tuple]) -> None:
        """Write the configuration for the given role and start; standby_of=None means primary."""
        self.prepare_files(standby_of)
        self.mem.settle(clock.monotonic())
        self.controller.start(self.pg.start_timeout, wait=standby_of is None)

    def submit_request(self, kind: str, timeout: float) -> tuple:
        """API thread: hand a restart/reinitialize to the loop and wait for its outcome."""
        with self._request_lock:
            if self._request is not None:
                return 409, {"error": f"a {self._request.kind} is already in progress"}
            request = self._request = OperatorRequest(kind)
        self.wake.set()
        if not request.done.wait(timeout):
            return 202, {"message": f"{kind} is still in progress; see governor's log"}
        return request.result

    def answer_request(self, request: OperatorRequest, decision: Decision, ok: bool) -> None:
        """Loop: report what became of an operator's request, then forget it."""
        with self._request_lock:
            self._request = None
        if decision.serves != request.kind:
            request.finish(412, {"error": f"{request.kind} not possible now: {decision.summary}"})
        elif not ok:
            request.finish(500, {"error": self.mem.last_error or f"{request.kind} failed"})
        elif request.kind == "restart":
            request.finish(200, {"message": "PostgreSQL restarted"})
        else:
            request.finish(202, {"message": f"data directory removed; cloning {decision.leader}"})

    def announce(self, local: LocalState, decision: Decision, state: Optional[ServerState]) -> None:
        """PostgreSQL changed role in the middle of a pass (`state`: what it answers now, None when
        stopped): the API (haproxy's checks) and the exporter answer from it now, not when the
        rest of the pass is done."""
        self.server_state = state
        publish.publish_status(self, local, decision)

    # ------------------------------------------------------------------ loop

    def _starting_for(self, local: LocalState) -> Optional[float]:
        """Holding the lock: since when PostgreSQL has not been up (memory for decide())."""
        holder = self.cluster is not None and self.cluster.leader is not None and self.cluster.leader.name == self.name
        down = holder and not (local.running and local.role)
        self.mem.leader_start_since, seconds = timer(self.mem.leader_start_since, down, clock.monotonic())
        return seconds

    def run_once(self) -> bool:
        """One pass; returns False when an action failed and the loop should run again at once."""
        # Cleared here, before etcd is read, not when the pass sleeps: a change reported while the
        # pass runs (the lock it took, an operator's request) is news to it and runs the next.
        self.wake.clear()
        if self.lock.too_close_to_expiry():
            self.once("dcs", "etcd did not answer and the leader lock expires in less than retry_timeout: "
                             "not waiting for etcd again", logging.WARNING)
            self.cluster = None
        else:
            self.cluster = reconfigure.seed_standby(self, self._read_etcd())
        self.mem.dcs_failed = self.cluster is None
        if self.cluster is not None:
            reconfigure.apply_dynamic(self, self.cluster)
            vouch.remember(self, self.cluster)
            remember_leader(self, self.cluster)
        request = self._request
        local = observe_local(self)
        self.mem.pg_seen = self.mem.pg_seen or seen_as(local)    # the first pass: how governor found it
        self.mem.racing = False
        self.mem.sysid = local.sysid or self.mem.sysid
        local = replace(local, now=clock.wall(), request=request.kind if request else None,
                        lock_left=self.lock.left(), starting_for=self._starting_for(local),
                        failsafe_mode=self.config.failsafe_mode, failsafe_promise=vouch.promised_to(self),
                        failsafe_fresh=vouch.fresh(self),
                        pre_promote_vetoed=self.mem.pre_promote_refused(),
                        clone_failed_from=self.mem.clone_failed_from,
                        upgrade_link_failed=self.mem.upgrade_link_failed, **self._restart_schedule())
        if self.cluster is None and self.config.failsafe_mode and self.mem.holds_lock and local.running \
                and local.role == "primary":
            local = replace(local, failsafe_vouched=vouch.ask_members(self))
        if self.cluster is not None and self.cluster.initialized and self.cluster.leader is None \
                and local.running and local.role == "replica":
            local = replace(local, **race_facts(self, self.cluster, local.sysid))
        decision = decide(self.cluster, local)
        if self.mem.failsafe_since is not None and not decision.holds_on_promises:
            log.warning("failsafe: ended after %.0fs (%s)", clock.monotonic() - self.mem.failsafe_since, decision.case)
            self.mem.failsafe_since = None
        self.once("decision", decision.summary)
        log.debug("decision %s", decision.summary)
        if self.cluster is not None and self.cluster.leader and self.cluster.leader.name != self.name:
            self.lock.lost(keep_fence=local.role == "primary")     # demoted in this pass; fenced meanwhile
        if self.cluster is not None and set(decision.actions) - STEADY_ACTIONS:
            # Before a long action: the leader creates our replication slot only for a member it
            # sees in etcd, and a member key may have expired while this process was stopped.
            publish.publish(self, local)
        ok = self.execute(decision, local)
        try:
            if decision.actions:
                local = observe_local(self)
            self._role_callbacks(local)
            if self.cluster is not None and not self.mem.dcs_failed:
                publish.publish(self, local)
            publish.publish_status(self, local, decision)
        finally:
            # Answered once /status shows the outcome (a restarted postmaster's start time): an
            # operator who asks right after the answer must not see the server from before.
            if request is not None:
                self.answer_request(request, decision, ok)
        return ok

    def _restart_schedule(self) -> dict:
        when = self.mem.scheduled_restart
        return {"scheduled_restart": when[0] if when else None, "scheduled_pending_only": bool(when and when[1]),
                "pending_restart": bool(self.server_state and self.server_state.pending_restart)}

    def _role_callbacks(self, local: LocalState) -> None:
        """on_start / on_stop / on_role_change for what changed since the last pass."""
        seen = seen_as(local)
        event = transition(self.mem.pg_seen, seen, self.mem.pg_last_role)
        self.mem.pg_seen = seen or self.mem.pg_seen
        self.mem.pg_last_role = seen if seen in ("primary", "replica") else self.mem.pg_last_role
        if event is not None:
            self.callbacks.fire(self.config.callbacks, *event)

    def _read_etcd(self) -> Optional[Cluster]:
        """The pass's snapshot. When etcd failed last time and failsafe may keep this primary, the
        read may only take what leaves the members' round its time before the lock fence fires
        (and, once on promises, what failsafe.timing gives it); with less left it is skipped."""
        times = failsafe.timing(self.config.etcd.ttl, self.config.loop_wait, self.config.retry_timeout)
        left = self.lock.left()
        if not (self.config.failsafe_mode and self.mem.dcs_failed) or times is None or left is None:
            return observe_dcs(self)
        budget = min(self.config.retry_timeout if self.mem.failsafe_since is None else times[1],
                     left - self.fence.margin - times[0] - 0.5)
        if budget < 0.2:
            self.once("dcs", "etcd failed, and the failsafe round needs the time left: not asking etcd this pass",
                      logging.WARNING)
            return None
        self.dcs.pass_deadline = clock.monotonic() + budget
        try:
            return observe_dcs(self)
        finally:
            self.dcs.pass_deadline = None

    def vouch_for(self, body: dict) -> tuple:
        """API thread: POST /failsafe (vouch.py)."""
        return vouch.answer(self, body)

    def sleep(self, seconds: float) -> None:
        sleeping.sleep(self, seconds)

    def request_stop(self, signum: int = signal.SIGTERM, frame: object = None) -> None:
        self.stopping.set()
        self.wake.set()

    def request_reload(self, signum: int = signal.SIGHUP, frame: object = None) -> None:
        self.reload_requested.set()
        self.wake.set()

    def run(self) -> int:
        signal.signal(signal.SIGTERM, self.request_stop)
        signal.signal(signal.SIGINT, self.request_stop)
        signal.signal(signal.SIGHUP, self.request_reload)
        self.notify.fit_watchdog(self.config.etcd.ttl)
        consume_restart_marker(max_age=0)   # a marker left from before this start means nothing now
        log.info("governor %s starting: member %s, %s, data directory %s", __version__, self.name,
                 self.dcs.describe(), self.pg.data_dir)
        for warning in self.config.warnings:
            log.warning("%s", warning)
        self.fence.start()
        if self.notify.watchdog_usec:
            self.feeder.start()
        self.controls = Controls(self)
        self.api = ApiServer(self.config, self.board.get, self.controls.endpoints(), self.controls.remember,
                             self.metrics.exposition if self.metrics else None)
        try:
            self.api.start()
        except OSError as exc:
            log.error("cannot serve the REST API on %s:%s: %s", self.config.restapi.listen_host,
                      self.config.restapi.port, exc.strerror or exc)
            return 1
        if self.metrics:
            try:
                self.metrics.start()
            except OSError as exc:
                log.error("cannot serve metrics on %s:%s: %s", self.config.metrics.listen_host,
                          self.config.metrics.port, exc.strerror or exc)
                self.api.stop()
                return 1
        self.guarded("member name check", uniquename.wait_for_unique_name, self)
        self.loop()
        self.guarded("shutdown", shutdown.shutdown, self)
        return 0

    def loop(self) -> None:
        """Pass, sleep, pass... until a stop is asked (the fleet benchmark runs this loop for
        members whose PostgreSQL is the simulator's model, tests/sim/live.py)."""
        while not self.stopping.is_set():
            started = clock.monotonic()
            self.feeder.expect_within(pass_limit(self.config.retry_timeout))
            ok = self.guarded("HA loop", self.run_once) is True
            if self.metrics:
                self.metrics.loop_duration.observe(clock.monotonic() - started)
            self.guarded("status notification", self.notify_status)
            if self.stopping.is_set():
                break
            if self.reload_requested.is_set():
                self.reload_requested.clear()
                self.guarded("reload", reconfigure.reload, self)
                continue
            delay = self.backoff.next_delay(ok, self.config.loop_wait, started)
            self.feeder.expect_within(max(delay, 0.0) + pass_limit(self.config.retry_timeout))
            self.guarded("sleep", self.sleep, delay)

    def notify_status(self) -> None:
        if not self.notify.ready_sent:
            self.notify.ready(publish.status_line(self))
        else:
            self.notify.status(publish.status_line(self))

    def guarded(self, what: str, func: Callable[..., T], *args: object) -> Optional[T]:
        """Run one step of the loop; an exception is logged (once per distinct message, with the
        traceback at debug level), counted, and the step counts as failed: nothing that a file, a
        request or a value in etcd can cause may end the loop and leave PostgreSQL unguarded."""
        try:
            return func(*args)
        except Exception as exc:  # noqa: BLE001 - the loop is total
            text = f"unexpected error in {what}: {type(exc).__name__}: {short_error(exc)}"
            self.once(f"unexpected:{what}", text, logging.ERROR)
            log.debug("%s", text, exc_info=True)
            if self.metrics:
                self.metrics.unexpected_errors.labels(what).inc()
            return None

