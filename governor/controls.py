"""The HTTP API's control endpoints: what an operator (or governorctl) asks a member to do.

Each handler runs in the API thread, validates the JSON body against the loop's last view of
the cluster, and either writes a request to etcd (switchover, failover, dynamic configuration)
for the HA loop of the right member to carry out, or hands the loop a local request (restart,
reinitialize, reload). A bad body gets 400 and changes nothing.
"""
from __future__ import annotations

import logging
import math
import threading
import time
from dataclasses import replace
from typing import Callable, Dict, Optional, Protocol, Tuple

from governor import audit, bindir, clock, dynamic, upgrade, upgrade_cleanup, upgrade_probe
from governor.cluster import BEFORE_START, Cluster, UpgradeRecord, failover_priority
from governor.config import Config, PostgresConfig
from governor.dcs import DCS, DCSError, from_config
from governor.dcs.keys import valid_member_name
from governor.memory import NodeMemory
from governor.postgres.catalogue import catalogue
from governor.status import StatusBoard

log = logging.getLogger("governor")
MAX_SCHEDULE = 30 * 86400
Answer = Tuple[int, dict]


class ControlHost(Protocol):
    """What the HTTP API's control endpoints (controls.py) use."""
    board: StatusBoard
    config: Config
    file_config: Config
    pg: PostgresConfig
    mem: NodeMemory
    wake: threading.Event

    def submit_request(self, kind: str, timeout: float) -> tuple: ...

    def request_reload(self) -> None: ...

    def vouch_for(self, body: dict) -> tuple: ...


class Controls:
    def __init__(self, governor: ControlHost):
        self.gov = governor
        self._dcs: Optional[DCS] = None   # the API thread's own etcd client
        self._checking = threading.Lock()  # one upgrade check at a time

    def endpoints(self) -> Dict[str, Callable[[dict], Answer]]:
        return {
            "POST /switchover": self.switchover,
            "DELETE /switchover": self.cancel_switchover,
            "POST /failover": self.failover,
            "POST /restart": self.restart,
            "DELETE /restart": self.cancel_restart,
            "POST /reinitialize": self.reinitialize,
            "POST /reload": self.reload,
            "PATCH /config": self.patch_config,
            "POST /failsafe": self.gov.vouch_for,
            "POST /upgrade/check": self.upgrade_check,
            "POST /upgrade": self.upgrade_start,
            "DELETE /upgrade": self.upgrade_abort,
            "POST /upgrade/cleanup": self.upgrade_cleanup,
        }

    def reset(self) -> None:
        """The daemon moved to another store: connect anew on the next request."""
        self._dcs = None

    @property
    def dcs(self) -> DCS:
        if self._dcs is None:
            self._dcs = from_config(self.gov.config)
        return self._dcs

    def remember(self, entry: dict) -> None:
        """An audit record into etcd's `audit` key (the newest audit.KEEP); etcd not answering costs
        only the record (the journal has the line)."""
        try:
            self.dcs.append_history(entry, key="audit", keep=audit.KEEP)
        except DCSError as exc:
            log.warning("audit: could not keep the record in etcd: %s", exc)

    def _cluster(self) -> Optional[Cluster]:
        return self.gov.board.get().cluster

    def switchover(self, body: dict) -> Answer:
        candidate, leader, scheduled = body.get("candidate"), body.get("leader"), body.get("scheduled_at")
        if not isinstance(candidate, str) or (leader is not None and not isinstance(leader, str)):
            return 400, {"error": "expected a JSON object with 'candidate' (and optionally 'leader' and "
                                  "'scheduled_at') "}
        problem = _schedule_problem(scheduled)
        if problem:
            return 400, {"error": problem}
        if not valid_member_name(candidate):
            return 400, {"error": "candidate: expected a member name"}
        cluster = self._cluster()
        if cluster is None or cluster.leader is None:
            return 503, {"error": "no leader: a switchover needs one (use failover)"}
        if leader and leader != cluster.leader.name:
            return 412, {"error": f"{leader} is not the leader; {cluster.leader.name} is"}
        member = cluster.member(candidate)
        if member is None or candidate == cluster.leader.name:
            return 412, {"error": f"{candidate} is not a replica of this cluster"}
        if member.tags.get("nofailover") or failover_priority(member.tags) == 0:
            return 412, {"error": f"{candidate} is tagged nofailover (or failover_priority 0): it never leads"}
        if scheduled is None and (member.role != "replica" or member.state != "running"):
            return 412, {"error": f"{candidate} is not a running replica ({member.role}, {member.state})"}
        request = {"leader": cluster.leader.name, "candidate": candidate, "requested_at": clock.wall()}
        if scheduled is not None:
            request["scheduled_at"] = float(scheduled)
        try:
            if not self.dcs.request_switchover(request):
                return 409, {"error": "another switchover is pending"}
        except DCSError as exc:
            return 503, {"error": str(exc)}
        when = f" at {_local_time(scheduled)}" if scheduled else ""
        log.info("switchover from %s to %s requested through the API%s", cluster.leader.name, candidate, when)
        self.gov.wake.set()
        return 202, {"message": f"switchover from {cluster.leader.name} to {candidate} requested{when}"}

    def cancel_switchover(self, body: dict) -> Answer:
        cluster = self._cluster()
        if cluster is None or cluster.switchover is None:
            return 404, {"error": "no switchover or failover is pending"}
        try:
            self.dcs.clear_switchover()
        except DCSError as exc:
            return 503, {"error": str(exc)}
        log.info("pending switchover to %s cancelled through the API", cluster.switchover.candidate)
        return 200, {"message": f"switchover to {cluster.switchover.candidate} cancelled"}

    def failover(self, body: dict) -> Answer:
        candidate = body.get("candidate")
        if not isinstance(candidate, str):
            return 400, {"error": "expected a JSON object with 'candidate'"}
        cluster = self._cluster()
        if cluster is None:
            return 503, {"error": "etcd is not reachable from this member"}
        if cluster.leader is not None:
            return 412, {"error": f"{cluster.leader.name} holds the leader lock; use switchover"}
        member = cluster.member(candidate)
        if member is None or member.role != "replica" or member.state != "running":
            return 412, {"error": f"{candidate} is not a running replica of this cluster"}
        try:
            if not self.dcs.request_switchover({"leader": None, "candidate": candidate, "requested_at": clock.wall()}):
                return 409, {"error": "another switchover or failover is pending"}
        except DCSError as exc:
            return 503, {"error": str(exc)}
        log.info("manual failover to %s requested through the API", candidate)
        return 202, {"message": f"failover to {candidate} requested"}

    def restart(self, body: dict) -> Answer:
        st = self.gov.board.get()
        scheduled, pending = body.get("scheduled_at"), body.get("pending", False)
        problem = _schedule_problem(scheduled) or ("" if isinstance(pending, bool)
                                                   else "pending: expected true or false")
        if problem:
            return 400, {"error": problem}
        if scheduled is not None:
            already = self.gov.mem.scheduled_restart
            if already is not None:
                return 409, {"error": f"a restart is already scheduled here at {_local_time(already[0])}; "
                                      "cancel it first (DELETE /restart)"}
            self.gov.mem.scheduled_restart = (float(scheduled), pending)
            log.info("restart scheduled through the API at %s%s", _local_time(scheduled),
                     " (only if a changed setting waits for it)" if pending else "")
            self.gov.wake.set()
            return 202, {"message": f"restart scheduled at {_local_time(scheduled)}"
                                    + (" (only if a changed setting waits for it)" if pending else "")}
        if pending and not st.pending_restart:
            return 200, {"message": "no restart pending; PostgreSQL left running"}
        if not st.running:
            return 412, {"error": "PostgreSQL is not running here"}
        return self.gov.submit_request("restart", timeout=2 * max(30.0, self.gov.pg.start_timeout) + 10)

    def cancel_restart(self, body: dict) -> Answer:
        when = self.gov.mem.scheduled_restart
        if when is None:
            return 404, {"error": "no restart is scheduled here"}
        self.gov.mem.scheduled_restart = None
        log.info("scheduled restart at %s cancelled through the API", _local_time(when[0]))
        self.gov.wake.set()
        return 200, {"message": f"scheduled restart at {_local_time(when[0])} cancelled"}

    def reinitialize(self, body: dict) -> Answer:
        st = self.gov.board.get()
        if st.holds_lock or st.leader in (None, st.name):
            return 412, {"error": "only a replica of a running leader can be re-initialized"}
        return self.gov.submit_request("reinitialize", timeout=60)

    def reload(self, body: dict) -> Answer:
        self.gov.request_reload()
        return 202, {"message": "reload requested"}

    def patch_config(self, body: dict) -> Answer:
        """Merge `body` into the dynamic configuration (null removes a key), compare-and-swap."""
        try:
            cluster = self.dcs.get_cluster()
        except DCSError as exc:
            return 503, {"error": str(exc)}
        new = dynamic.patch(cluster.config, body)
        problems = dynamic.validate(new, dynamic.timing(self.gov.file_config),
                                    catalogue(self.gov.file_config.postgresql.bin_dir))
        if problems:
            return 400, {"error": "; ".join(problems)}
        try:
            if not self.dcs.set_config(new, cluster.config_index):
                return 409, {"error": "the dynamic configuration changed meanwhile; nothing written, try again"}
        except DCSError as exc:
            return 503, {"error": str(exc)}
        log.info("dynamic configuration changed through the API: %s",
                 ", ".join(f"{k}={b!r}" for k, _a, b in dynamic.diff(cluster.config, new)) or "no change")
        self.gov.wake.set()
        return 200, new

    def upgrade_start(self, body: dict) -> Answer:
        """The checks, then (none failing) the upgrade record at its first step: the leader's loop
        carries it out (upgrade_plan.py)."""
        code, answer = self.upgrade_check(body)
        if code != 200 or answer["problems"]:
            return (412, {"error": "the checks refuse the upgrade", **answer}) if code == 200 else (code, answer)
        try:
            cluster = self.dcs.get_cluster()
            old = cluster.upgrade
            if cluster.upgrade_unreadable or old is not None and old.active or not cluster.initialize:
                return 409, {"error": "an upgrade is under way already"}
            record = UpgradeRecord(to=body["to"], source=bindir.data_major(self.gov.pg.data_dir) or 0,
                                   leader=self.gov.pg.name, sysid=cluster.initialize, step="requested",
                                   started_at=clock.wall())
            if not self.dcs.set_upgrade(record.as_dict(), old.index if old else 0):
                return 409, {"error": "the upgrade key changed meanwhile; nothing written"}
        except DCSError as exc:
            return 503, {"error": str(exc)}
        log.warning("upgrade to PostgreSQL %s requested through the API: failover is held until it is done", body["to"])
        self.gov.wake.set()
        return 202, {"message": f"upgrade to PostgreSQL {body['to']} started by {self.gov.pg.name}"}

    def upgrade_abort(self, body: dict) -> Answer:
        """Roll an upgrade back, only before the new version starts (its point of no return)."""
        try:
            record = self.dcs.get_cluster().upgrade
            if record is None or not record.active:
                return 404, {"error": "no upgrade is under way"}
            if record.step not in BEFORE_START:
                return 409, {"error": f"the upgrade is past its point of no return ({record.step}): it only goes "
                                      "forward"}
            if not self.dcs.set_upgrade(replace(record, step="rollback", message="aborted by the operator").as_dict(),
                                        record.index):
                return 409, {"error": "the upgrade moved on meanwhile; try again"}
        except DCSError as exc:
            return 503, {"error": str(exc)}
        self.gov.wake.set()
        return 202, {"message": f"rolling the upgrade to PostgreSQL {record.to} back"}

    def upgrade_cleanup(self, body: dict) -> Answer:
        """Remove this member's old clusters a finished major upgrade set aside (upgrade_cleanup.py)."""
        cluster = self._cluster()
        if cluster is None or cluster.upgrade_unreadable or cluster.upgrade is not None and cluster.upgrade.active:
            return 409, {"error": "an upgrade is under way (or etcd is not reachable): nothing removed"}
        try:
            removed = upgrade_cleanup.remove(self.gov.pg.data_dir, self.gov.pg)
        except OSError as exc:
            return 500, {"error": f"could not remove an old data directory: {exc}"}
        if removed:
            log.warning("upgrade cleanup: removed %s", ", ".join(removed))
        return 200, {"removed": removed}

    def upgrade_check(self, body: dict) -> Answer:
        """The checks before a major-version upgrade to body['to'], run by the leader (upgrade.py);
        nothing changes."""
        target = body.get("to")
        problem = upgrade.target_problem(target)
        if problem:
            return 400, {"error": problem}
        st = self.gov.board.get()
        if not st.holds_lock or st.role != "primary":
            leader = f"; {st.leader} is" if st.leader else ""
            return 412, {"error": f"{st.name} is not the leader running as primary{leader}"}
        if not self._checking.acquire(blocking=False):
            return 409, {"error": "an upgrade check is running already"}
        try:
            facts = upgrade_probe.probe(self.gov.pg, target)
            problems = upgrade.cluster_problems(st.cluster, target, st.name, facts.database_bytes,
                                                dict(facts.replay_behind))
            problems += upgrade.leader_problems(facts, target, st.name)
        finally:
            self._checking.release()
        log.info("upgrade check to PostgreSQL %s: %s", target, "; ".join(problems) or "passed")
        return 200, {"to": target, "leader": st.name, "problems": problems}


def _schedule_problem(scheduled: object) -> str:
    """What is wrong with a request's scheduled_at ("" when absent or fine)."""
    if scheduled is None:
        return ""
    if isinstance(scheduled, bool) or not isinstance(scheduled, (int, float)) or not math.isfinite(scheduled) \
            or scheduled > clock.wall() + MAX_SCHEDULE:
        return "scheduled_at: expected a Unix time in seconds, at most 30 days ahead"
    if scheduled < clock.wall() - 5:
        return "scheduled_at: that time has passed"
    return ""


def _local_time(moment: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S%z", time.localtime(moment))
