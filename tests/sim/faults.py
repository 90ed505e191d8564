"""The fault schedule of a simulated run: planned from the seed, applied at its times (a mixin of
World: it reaches the hosts, etcd and governorctl's client through the world)."""
from __future__ import annotations

from typing import TYPE_CHECKING, Tuple

from governor import ctl_config, ctl_standby
from governor.shutdown import shutdown
from governor.wakeups import OperatorRequest
from tests.sim.node import PREFIX
from tests.sim.postgres import REMOTE

if TYPE_CHECKING:
    from tests.sim.world import World

LEADER = "<leader>"      # a fault's target: whoever holds the lock when it happens
KINDS = ["crash", "freeze", "cut", "stall", "stop", "switchover", "cut_all", "pause", "clock", "split", "slow",
         "restart", "reinit", "edit"]
Fault = Tuple[float, str, str, float]    # (time, kind, target, length)


class Faults:

    def _plan_faults(self: World) -> None:
        t = 3.0
        names = list(self.nodes)
        while t < self.duration - 20:
            t += self.plan_rng.uniform(0.5, 8.0)
            kind = self.plan_rng.choice(KINDS)
            who = self.plan_rng.choice(names)
            if self.plan_rng.random() < 0.5:
                who = LEADER
            length = self.plan_rng.choice([0.5, 2.0, 5.0, 9.0, 12.0, 20.0]) * self.plan_rng.uniform(0.8, 1.2)
            self.faults.append((round(t, 1), kind, who, round(length, 1)))
            self.last_fault_end = max(self.last_fault_end, t + length)
        if self.demote_flavour:
            self.faults.append((round(self.plan_rng.uniform(3.0, self.duration - 20), 1), "demote_cluster", "-", 0.0))
        elif self.standby_start and self.plan_rng.random() < 0.5:
            self.faults.append((round(self.plan_rng.uniform(3.0, self.duration - 20), 1), "promote_cluster", "-", 0.0))
        self.faults.sort()

    def _apply_faults(self: World) -> None:
        while self.faults and self.faults[0][0] <= self.now + 1e-9:
            _t, kind, who, length = self.faults.pop(0)
            holder = self.etcd.get(PREFIX + "leader")
            if who == LEADER:
                who = holder if holder in self.nodes else sorted(self.nodes)[0]
            node = self.nodes.get(who)
            if kind == "demote_cluster":
                self._governorctl(ctl_standby.demote_cluster, host=REMOTE, port=5432)
                self.is_standby = True
                self.note("demote-cluster")
                continue
            if kind == "promote_cluster":
                # the other site was demoted first (it stops taking writes), then promote-cluster here
                self.remote_live, self.remote.in_recovery = False, True
                self._governorctl(ctl_standby.promote_cluster)
                self.is_standby = False
                self.note("promote-cluster")
                continue
            if kind in ("restart", "reinit"):
                # governorctl restart / reinit: the API hands the request to the loop
                if node is not None and node.g is not None and node.alive(self.now):
                    node.g._request = OperatorRequest("restart" if kind == "restart" else "reinitialize")
                    node.g.wake.set()
                self.note(f"{kind} {who} requested")
                continue
            if kind == "edit":
                if not self.is_standby:
                    self.sync_on = not self.sync_on
                    self._governorctl(ctl_config.edit_config, set=[f"synchronous_mode={str(self.sync_on).lower()}"],
                                      file=None, dcs_url="sim", config=None)
                    self.note(f"edit-config synchronous_mode={self.sync_on}")
                continue
            if kind == "switchover":
                others = [n for n in self.nodes if n != holder]
                candidate = who if who in others else self.rng.choice(others)
                if holder:
                    self.ctl.request_switchover({"leader": holder, "candidate": candidate})
                self.note(f"switchover requested from {holder} to {candidate}")
                continue
            if kind == "pause":
                self.ctl.set_paused(True)
                self.faults.append((round(self.now + length, 1), "resume", "-", 0.0))
                self.faults.sort()
                self.note(f"maintenance mode for {length}s")
                continue
            if kind == "resume":
                self.ctl.set_paused(False)
                continue
            if kind == "cut_all":
                for n in self.nodes.values():
                    n.cut_until = max(n.cut_until, self.now + length)
                self.note(f"etcd unreachable for everyone for {length}s")
                continue
            if kind in ("crash", "stop"):
                self._abandon(node)
            if kind == "crash":
                node.crashed_until = self.now + length
                self.stop_postgres(who, "immediate")
                node.g = None
            elif kind == "freeze":
                node.frozen_until = max(node.frozen_until, self.now + length)
            elif kind == "promote_fails":      # only in hand-written scenarios
                node.pg.promote_fails_until = max(node.pg.promote_fails_until, self.now + length)
            elif kind == "slow":
                node.slow_until = max(node.slow_until, self.now + length)
            elif kind == "slow_read":         # only in hand-written scenarios
                node.slow_read_until = max(node.slow_read_until, self.now + length)
            elif kind == "cut":
                node.cut_until = max(node.cut_until, self.now + length)
            elif kind == "split":
                # the target loses the network to every other member (etcd still reaches both)
                for other in self.nodes:
                    if other != who:
                        pair = frozenset((who, other))
                        self.splits[pair] = max(self.splits.get(pair, 0.0), self.now + length)
            elif kind == "stall":
                node.pg.stalled_until = max(node.pg.stalled_until, self.now + length)
            elif kind == "clock":
                node.wall_offset += self.rng.choice([-1, 1]) * length     # a jump of the wall clock
            elif kind == "stop":
                if node.g is not None and self.now >= node.frozen_until:
                    node.elapsed = 0.0
                    with self.running(node):
                        shutdown(node.g)
                    node.g = None
                    node.crashed_until = self.now + length
            self.note(f"{kind} {who} for {length}s")

    def note(self: World, text: str) -> None:
        self.log.append(f"{self.now:6.1f} {text}")
