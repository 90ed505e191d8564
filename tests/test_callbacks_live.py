"""Callbacks on a real cluster (real etcd and PostgreSQL), observed by their side effects: each
appends "TIME MEMBER ACTION ROLE SCOPE" to one file. Their order through a failover, a restart
and a rejoin; a hanging callback delays nothing past its timeout; a pre_promote that refuses
hands the promotion to another member; before_stop runs before a switchover's stop."""
from __future__ import annotations

import os
import time
from typing import List, Tuple

import pytest

from tests import harness
from tests.harness import wait_until

pytestmark = pytest.mark.integration
AUTH = {"restapi": {"username": "admin", "password": "api-Secret-9"}}
TTL = 10


def hook(base_dir: str, name: str, body: str) -> str:
    """An executable the postgres user runs that first appends its call to `events`."""
    path = os.path.join(base_dir, name)
    events = os.path.join(base_dir, "events")
    with open(path, "w") as fh:
        fh.write(f'#!/bin/sh\necho "$(date +%s.%N) $GOVERNOR_MEMBER $1 $2 $3" >> {events}\n{body}\n')
    os.chmod(path, 0o755)
    if not os.path.exists(events):
        open(events, "w").close()
        os.chmod(events, 0o666)
    return path


def events(base_dir: str) -> List[Tuple[float, str, str, str]]:
    """(time, member, action, role), in the order they were written."""
    out = []
    with open(os.path.join(base_dir, "events")) as fh:
        for line in fh:
            when, member, action, role, _scope = line.split()
            out.append((float(when), member, action, role))
    return out


def of(base_dir: str, member: str) -> List[str]:
    return [f"{action} {role}" for _t, m, action, role in events(base_dir) if m == member]


def test_callbacks_follow_a_failover_in_order_and_a_hanging_one_delays_nothing(make_cluster, base_dir):
    note = hook(base_dir, "note", "exit 0")
    hang = hook(base_dir, "hang", "sleep 20")      # on_role_change never finishes by itself
    cbs = {"callbacks": {"on_start": note, "on_stop": note, "on_restart": note, "on_reload": note,
                         "on_role_change": hang, "pre_promote": note, "timeout": 3}}
    cluster = make_cluster("cb")
    for name in ("node1", "node2", "node3"):
        cluster.add(name, extra=dict(AUTH, **cbs))
    leader = cluster.wait_for_primary(90)
    replicas = [n for n in cluster.nodes.values() if n is not leader]
    cluster.wait_for_streaming([n.name for n in replicas], 90)
    wait_until(lambda: all(of(base_dir, n.name) for n in cluster.nodes.values()), 10, "every member's on_start")
    assert of(base_dir, leader.name) == ["on_start primary"]
    assert all(of(base_dir, n.name) == ["on_start replica"] for n in replicas)

    watch = harness.PrimaryWatch(cluster)
    watch.start()
    crashed = time.monotonic()
    crashed_wall = time.time()
    leader.crash()
    new = cluster.wait_for_primary(3 * TTL)
    promoted_after = time.monotonic() - crashed
    wait_until(lambda: "on_role_change primary" in of(base_dir, new.name), 5, "on_role_change on the new leader")
    assert of(base_dir, new.name) == ["on_start replica", "pre_promote primary", "on_role_change primary"]
    called = {action: when for when, m, action, _r in events(base_dir) if m == new.name and when > crashed_wall}
    assert called["pre_promote"] <= called["on_role_change"]
    # the hanging on_role_change is killed at its timeout; the loop went on meanwhile
    wait_until(lambda: "callback on_role_change (primary) killed after 3s" in new.log_text(), 10, "the kill")
    other = next(n for n in replicas if n is not new)
    wait_until(other.is_streaming, 30, "the other replica to follow the new leader")
    assert promoted_after < TTL + 5, f"promoted {promoted_after:.1f}s after the crash"

    leader.start()                          # the old leader rejoins as a replica
    wait_until(leader.is_streaming, 90, "the old leader to stream")
    wait_until(lambda: of(base_dir, leader.name)[-1:] == ["on_start replica"], 10, "its on_start")

    done = harness.governorctl(new, "restart", other.name, "--force")
    assert done.returncode == 0, done.stdout + done.stderr
    wait_until(lambda: of(base_dir, other.name)[-1:] == ["on_restart replica"], 20, "on_restart")
    watch.stop()
    assert watch.two_primaries() == []
    print(f"callbacks through a failover: promoted {promoted_after:.1f}s after the crash with on_role_change "
          f"hanging until killed at 3 s; calls on the new leader: {of(base_dir, new.name)}")


def test_a_pre_promote_that_refuses_hands_the_promotion_to_another_member(make_cluster, base_dir):
    note = hook(base_dir, "note", "exit 0")
    # It takes a second to refuse, holding the lock meanwhile: governorctl must not call that done.
    refuse = hook(base_dir, "refuse", "sleep 1; echo 'pgbouncer is not ready'; exit 1")
    cluster = make_cluster("cbveto")
    for name in ("node1", "node2", "node3"):
        hooks = {"before_stop": note, "on_role_change": note, "pre_promote": refuse if name == "node2" else note}
        cluster.add(name, extra=dict(AUTH, callbacks=hooks))
    leader = cluster.wait_for_primary(90)
    cluster.wait_for_streaming([n for n in cluster.nodes if n != leader.name], 90)
    if leader.name == "node2":              # the refusing member must be a replica for this test
        done = harness.governorctl(leader, "switchover", "--leader", "node2", "--candidate", "node1")
        assert done.returncode == 0, done.stdout + done.stderr
        leader = cluster.nodes["node1"]
    refusing = cluster.nodes["node2"]
    cluster.wait_for_streaming([n for n in cluster.nodes if n != leader.name], 90)
    watch = harness.PrimaryWatch(cluster)
    watch.start()
    asked = time.time()
    done = harness.governorctl(leader, "switchover", "--leader", leader.name, "--candidate", refusing.name)
    new = wait_until(lambda: next((n for n in cluster.primaries() if n is not refusing), None), 6 * TTL,
                     "another member to lead")
    watch.stop()
    assert "the pre_promote callback exited 1: not promoting" in refusing.log_text()
    assert "pgbouncer is not ready" in refusing.log_text()
    assert done.returncode != 0 and "pre_promote callback refused the promotion" in done.stderr, done.stderr
    assert refusing.role() == "replica" and cluster.leader_name() == new.name
    assert cluster.etcd.get(f"/service/{cluster.scope}/failover") is None, "the refused switchover is cleared"
    stops = [when for when, m, action, _r in events(base_dir) if m == leader.name and action == "before_stop"]
    assert stops and stops[0] >= asked, "before_stop ran on the stepping-down leader"
    wait_until(refusing.is_streaming, 60, "the refusing member to follow the new leader")
    assert watch.two_primaries() == []
    if new is not leader:       # the old primary stopped and came back as a replica: its role changed
        wait_until(lambda: "on_role_change replica" in of(base_dir, leader.name), 30,
                   "on_role_change replica on the old primary")
    print(f"pre_promote refused on {refusing.name}: {new.name} leads; governorctl said: "
          f"{(done.stdout + done.stderr).strip().splitlines()[-1:]}")
