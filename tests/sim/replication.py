"""The PostgreSQL side of the simulated world (a mixin of World): who streams from whom, who takes
writes and which of them are acknowledged, stops, promotions and pg_rewind as the models of
sim/postgres.py ask the world for them, and the other site."""
from __future__ import annotations

import argparse
import contextlib
import io
from typing import TYPE_CHECKING, Callable, Optional

from governor import ctl_standby
from governor.cluster import Member
from governor.postgres.bootstrap import BootstrapError
from tests.sim.node import PREFIX
from tests.sim.postgres import Pg

if TYPE_CHECKING:
    from tests.sim.node import Node
    from tests.sim.world import World


class Replication:

    def split(self: World, a: str, b: str) -> bool:
        """Whether hosts a and b cannot reach each other (their APIs, their PostgreSQL) now."""
        return self.splits.get(frozenset((a, b)), 0.0) > self.now

    def accepts_writes(self: World, pg: Pg) -> bool:
        node = self.nodes.get(pg.name)
        return pg.writable() and (node is None or self.now >= node.crashed_until)

    def _governorctl(self: World, command: Callable, **args: object) -> None:
        """A governorctl command, run by its own code against etcd (no --wait: the world waits)."""
        namespace = argparse.Namespace(force=True, wait=0, primary_slot_name=None, restore_command=None, **args)
        with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
            command(namespace, self.ctl, self.ctl.get_cluster())

    def streams(self: World, pg: Pg) -> bool:
        up = self.pgs.get(pg.upstream or "")
        return pg.running and pg.in_recovery and up is not None and up.running and self.now >= pg.stalled_until \
            and self.accepts_or_serves(up) and not self.split(pg.name, up.name) \
            and up.wal[:len(pg.wal)] == pg.wal

    def accepts_or_serves(self: World, pg: Pg) -> bool:
        node = self.nodes.get(pg.name)
        return node is None or self.now >= node.crashed_until

    def stop_postgres(self: World, name: str, mode: str) -> None:
        pg = self.pgs[name]
        if not pg.running:
            return
        if mode == "fast" and not pg.in_recovery:
            # a fast shutdown waits until every connected standby received all WAL
            for other in self.pgs.values():
                if other.upstream == name and self.streams(other):
                    other.wal = pg.wal
                    other.timeline = max(other.timeline, pg.timeline)
        pg.running = False
        pg.stamp += 1

    def became_writable(self: World, name: str) -> None:
        self.acked_upto.pop(name, None)
        self._check_one_writer()

    def promoted(self: World, name: str) -> None:
        pg = self.pgs[name]
        self.acked_upto.pop(name, None)
        self.max_timeline += 1
        pg.in_recovery, pg.standby_signal, pg.last_primary, pg.timeline = False, False, True, self.max_timeline
        pg.restart_tli = pg.timeline             # the end-of-recovery checkpoint
        pg.stamp += 1
        self.note(f"{name} promoted on timeline {pg.timeline} at {pg.lsn}")
        self._check_promotion(pg)
        self._check_one_writer()

    def _source(self: World, name: str, host: str, tool: str) -> Pg:
        source = self.pgs.get(host)
        if source is None or not source.running or not self.accepts_or_serves(source) \
                or self.split(name, host):
            raise BootstrapError(f"{tool}: could not connect to server on {host}")
        return source

    def rewind(self: World, name: str, host: str) -> str:
        source = self._source(name, host, "pg_rewind")
        pg = self.pgs[name]
        common = 0
        while common < min(len(pg.wal), len(source.wal)) and pg.wal[common] == source.wal[common]:
            common += 1
        if common < len(pg.wal) and self.rng.random() < self.rewind_failure:
            # what pg_rewind needs of this server's own WAL is gone (recycled): it fails, the
            # source reachable and willing
            raise BootstrapError("pg_rewind: fatal: could not find previous WAL record")
        pg.wal, pg.timeline, pg.last_primary = pg.wal[:common], source.timeline, False
        pg.restart_tli = source.timeline         # pg_rewind writes the source's checkpoint into pg_control
        pg.stamp += 1
        return "pg_rewind: Done!"

    def clone(self: World, name: str, host: str) -> None:
        """pg_basebackup from host's server into an empty data directory."""
        source = self._source(name, host, "pg_basebackup")
        pg = self.pgs[name]
        pg.wal, pg.timeline, pg.empty, pg.last_primary, pg.slots = source.wal, source.timeline, False, False, {}
        pg.restart_tli = source.timeline
        pg.stamp += 1
        self.note(f"{name} cloned from {host}")

    def _fence_stop(self: World, node: Node) -> Optional[int]:
        if not node.pg.running:
            return None
        self.stop_postgres(node.name, "immediate")
        self.note(f"{node.name} fenced")
        return 4242


    def _writes(self: World) -> None:
        if self.demote_flavour and not self.remote_live:
            if self.is_standby and self._demoted():
                # demote-cluster --wait returned and nothing here takes writes: the operator promotes
                # the other site, which streamed this cluster's WAL (perhaps not its last writes)
                tail = self.rng.choice([0, 0, 1, 2])
                self.remote.wal = self.last_primary_wal[:max(0, len(self.last_primary_wal) - tail)]
                self.max_timeline += 1
                self.remote.in_recovery, self.remote.timeline, self.remote_live = False, self.max_timeline, True
                self.note(f"the other site promoted with {len(self.remote.wal)} of {len(self.last_primary_wal)} "
                          "writes")
            else:
                self.remote.wal, self.remote.timeline = self.last_primary_wal, self.last_primary_timeline
        for pg in self.pgs.values():
            if self.accepts_writes(pg):
                self.write_id += 1
                pg.wal = pg.wal + (self.write_id,)
                if pg is not self.remote:
                    self.last_primary_wal, self.last_primary_timeline = pg.wal, pg.timeline
        self._acks()

    def _demoted(self: World) -> bool:
        """What demote-cluster --wait waits for (ctl_standby): the lock holder's member key says it runs
        as a replica, and its /status that it decided so under standby_cluster; and what the operator
        sees before promoting the other site: nothing here takes writes."""
        holder = self.etcd.get(PREFIX + "leader")
        node = self.nodes.get(holder or "")
        key = self.etcd.get(f"{PREFIX}members/{holder}") if holder else None
        member = Member.from_json(holder or "", key or "")
        if node is None or node.g is None or member.role != "replica" or member.state != "running":
            return False
        decided = ctl_standby.decided_standby(node.g.board.get().as_dict())
        return (decided or not self.wait_decision) and not any(
            self.accepts_writes(pg) for pg in self.pgs.values() if pg is not self.remote)

    def _acks(self: World) -> None:
        """A commit is acknowledged once what synchronous_standby_names asks for holds it."""
        for pg in self.pgs.values():
            if not self.accepts_writes(pg):
                continue
            need, names, anyof = pg.required()
            if need == 0:
                upto = pg.lsn
            else:
                holders = [self.pgs[n] for n in names if n in self.pgs and self.streams(self.pgs[n])
                           and self.pgs[n].upstream == pg.name]
                chosen = holders if anyof else holders[:need]
                have = sorted((o.lsn for o in chosen), reverse=True)
                upto = have[need - 1] if len(have) >= need else 0
            done = self.acked_upto.get(pg.name, 0)
            if pg is self.remote:
                continue
            for wid in pg.wal[done:upto]:
                self.acked.setdefault(wid, need > 0)
            self.acked_upto[pg.name] = max(done, upto)

    def _replicate(self: World) -> None:
        for pg in self.pgs.values():
            if self.streams(pg):
                up = self.pgs[pg.upstream]
                pg.wal, pg.timeline = up.wal, max(pg.timeline, up.timeline)
