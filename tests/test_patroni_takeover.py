"""Taking over a running Patroni cluster (README, "Coming from Patroni"): Patroni 4.1.5 from PyPI
(a test-only tool) runs three members on real etcd and PostgreSQL with a writer on the primary;
the README's steps hand it to governor: no failed or lost write, no PostgreSQL restarted
(postmasters unchanged), never two writable servers, never a moment without a leader key; then a
switchover and a crash failover under governor. And the way back before the keys are rewritten."""
from __future__ import annotations

import itertools
import json
import os
import subprocess
import sys
import threading
import time
from typing import Dict, List

import psycopg2
import pytest
import yaml

from governor import dynamic
from governor.sync import SyncState
from tests import harness, patroni
from tests.harness import REPO, SUPERUSER_PASSWORD, WriteClient, governorctl, wait_until

pytestmark = [pytest.mark.integration, pytest.mark.patroni, pytest.mark.timeout(600)]
NAMES = ["p1", "p2", "p3"]
SCOPES = itertools.count(1)


def translate(member: patroni.PatroniMember) -> subprocess.CompletedProcess:
    """README: on each host, governor's files from Patroni's."""
    out = os.path.join(member.dir, "translated.yml")
    return subprocess.run([sys.executable, "-m", "governor.ctl", "migrate", "--from-patroni", member.config_path,
                           "--output", out], capture_output=True, text=True, cwd=REPO, timeout=60,
                          env={**os.environ, "PYTHONPATH": REPO})


def adopt(cluster: harness.TestCluster, member: patroni.PatroniMember) -> harness.Node:
    """A harness node that runs governor with the translated file (the metrics port moved: three
    members share this host, which Patroni's hosts do not)."""
    node = cluster.add(member.name, start=False)
    with open(os.path.join(member.dir, "translated.yml")) as fh:
        config = yaml.safe_load(fh)
    config["metrics"] = {"listen": f"127.0.0.1:{harness.free_port()}"}
    node.config, node.port, node.api_port, node.data_dir = config, member.port, member.api_port, member.data_dir
    node.write_config()
    return node


def postmaster(member: patroni.PatroniMember) -> int:
    with open(os.path.join(member.data_dir, "postmaster.pid")) as fh:
        return int(fh.readline())


def sql(member: patroni.PatroniMember, query: str) -> list:
    conn = psycopg2.connect(host="127.0.0.1", port=member.port, user="postgres", dbname="postgres",
                            password=SUPERUSER_PASSWORD, connect_timeout=2)
    try:
        conn.autocommit = True
        with conn.cursor() as cur:
            cur.execute(query)
            return cur.fetchall() if cur.description else []
    finally:
        conn.close()


class Watch(threading.Thread):
    """Every 0.1 s: how many servers take writes, and whether etcd holds a leader key."""

    def __init__(self, etcd: harness.Etcd, scope: str, members: List[patroni.PatroniMember]):
        super().__init__(daemon=True)
        self.etcd, self.scope, self.members = etcd, scope, members
        self.most_writable, self.leaderless, self.stopped = 0, 0, threading.Event()

    def run(self) -> None:
        while not self.stopped.is_set():
            writable = 0
            for m in self.members:
                try:
                    writable += sql(m, "SELECT pg_is_in_recovery()")[0][0] is False
                except psycopg2.Error:
                    pass
            self.most_writable = max(self.most_writable, writable)
            try:
                if self.etcd.get(f"/service/{self.scope}/leader") is None:
                    self.leaderless += 1
            except OSError:
                pass        # etcd busy: not known, not counted
            self.stopped.wait(0.1)


@pytest.fixture(params=[False, True], ids=["async", "synchronous_mode"])
def patroni_cluster(etcd, base_dir, request):
    scope = f"pt{os.getpid()}x{next(SCOPES)}"      # one scope per test: never another's keys
    cluster = harness.TestCluster(etcd, base_dir, REPO, scope)
    members = {n: patroni.PatroniMember(cluster.base_dir, scope, n, etcd.port, synchronous=request.param)
               for n in NAMES}
    try:
        members["p1"].start()
        wait_until(lambda: (members["p1"].status() or {}).get("role") == "primary", 120, "Patroni's p1 to lead")
        for n in NAMES[1:]:
            members[n].start()
        wait_until(lambda: all((members[n].status() or {}).get("replication_state") == "streaming"
                               for n in NAMES[1:]), 120, "Patroni's replicas to stream")
        yield cluster, members
    finally:
        for m in members.values():
            if m.proc and m.proc.poll() is None:
                m.proc.kill()
        cluster.teardown()
        for m in members.values():
            harness.stop_postmaster(m.data_dir)


def test_governor_takes_over_a_running_patroni_cluster_without_restarting_postgresql(patroni_cluster, etcd):
    cluster, members = patroni_cluster
    p1 = members["p1"]
    sql(p1, "CREATE TABLE takeover (id int PRIMARY KEY)")
    for m in members.values():
        done = translate(m)
        assert done.returncode == 0, done.stderr
        harness.chown_to_runner(os.path.join(m.dir, "translated.yml"))
    nodes: Dict[str, harness.Node] = {n: adopt(cluster, members[n]) for n in NAMES}
    started = {n: postmaster(m) for n, m in members.items()}
    writer = WriteClient(f"host=127.0.0.1 port={p1.port} user=postgres dbname=postgres "
                         f"password={SUPERUSER_PASSWORD} connect_timeout=1", "takeover", interval=0.05)
    watch = Watch(etcd, cluster.scope, list(members.values()))
    writer.start()
    watch.start()

    refused = governorctl(nodes["p1"], "migrate", "--takeover", "check")
    assert refused.returncode == 1 and "Patroni is not paused: patronictl pause --wait" in refused.stdout, refused
    p1.ctl("pause", "--wait")
    prepared = governorctl(nodes["p1"], "migrate", "--takeover", "prepare")
    assert prepared.returncode == 0, prepared.stdout + prepared.stderr
    for m in members.values():     # README: systemctl stop patroni on every host
        assert m.stop() == 0
        assert "Postgresql is not stopped due paused state" in m.log_text()
    began = time.monotonic()
    for n in NAMES:                # README: the leader's host first
        nodes[n].start()
    shown = []

    def everywhere() -> bool:
        shown[:] = [governorctl(nodes["p1"], "migrate", "--takeover", "check")]
        return shown[0].stdout.count("running, governor)") == 3
    try:
        wait_until(everywhere, 60, "governor running on every member")
    except AssertionError:
        print(shown[0].stdout, shown[0].stderr, "\n".join(nodes[n].log_text()[-3000:] for n in NAMES))
        raise
    finished = governorctl(nodes["p1"], "migrate", "--takeover", "finish")
    assert finished.returncode == 0, finished.stdout + finished.stderr
    took = time.monotonic() - began
    time.sleep(2)
    writer.stop()
    watch.stopped.set()
    watch.join(10)

    assert {n: postmaster(m) for n, m in members.items()} == started, "a PostgreSQL restarted"
    assert watch.most_writable == 1, "two servers took writes at once"
    assert watch.leaderless == 0, "a moment without a leader key"
    acked = writer.acked_ids()
    assert set(range(1, writer.seq)) <= set(acked), f"writes failed: {sorted(set(range(1, writer.seq)) - set(acked))}"
    have = {row[0] for row in sql(p1, "SELECT id FROM takeover")}
    assert set(acked) <= have
    times = sorted(at for _id, _start, at in writer.acked)
    gap = max(b - a for a, b in zip(times, times[1:]))
    assert gap <= 1.0, f"the writes paused {gap:.2f} s"
    said = nodes["p1"].log_text()
    assert "paused_leader" in said or "paused_primary_reacquire" in said, said[-3000:]
    assert "config rewritten in governor's format" in finished.stdout
    assert "Patroni's status key removed" in finished.stdout
    assert etcd.get(f"/service/{cluster.scope}/pause") is None, "maintenance mode ended"
    config = json.loads(etcd.get(f"/service/{cluster.scope}/config")["value"])
    assert dynamic.validate(config) == [] and config["ttl"] == 20 and "pause" not in config, config
    assert "taking it over" in said, "the leader's governor took over Patroni's member key at once"
    if config.get("synchronous_mode"):     # governor's own promise now, and PostgreSQL waits for it
        wait_until(lambda: SyncState.from_json((etcd.get(f"/service/{cluster.scope}/sync") or {}).get("value"))
                   is not None, 30, "governor's sync key")
        assert sql(p1, "SHOW synchronous_standby_names")[0][0] not in ("", None)
    print(f"takeover: {took:.1f} s from Patroni's stop to finish; longest write gap {gap:.2f} s; "
          f"{len(acked)} writes, none failed or lost\n{finished.stdout}")

    # governor runs the cluster now: a switchover, then a crash of the new leader
    switched = governorctl(nodes["p1"], "switchover", "--leader", "p1", "--candidate", "p2", "--force")
    assert switched.returncode == 0, switched.stdout + switched.stderr
    wait_until(lambda: nodes["p2"].role() == "primary" and nodes["p1"].role() == "replica", 60, "p2 to lead")
    # both replicas stream from the new leader: p3, never restarted, with what governor wrote for it
    wait_until(lambda: sorted(r[0] for r in sql(members["p2"], "SELECT application_name FROM pg_stat_replication "
                                                               "WHERE state = 'streaming'")) == ["p1", "p3"],
               30, "p1 and p3 to stream from p2")
    sql(members["p2"], "INSERT INTO takeover VALUES (1000001)")
    if config.get("synchronous_mode"):     # just after a promotion the promise names the new leader too:
        # a crash then rightly waits for it (it alone may hold acknowledged commits) until it narrows
        wait_until(lambda: "p2" not in SyncState.from_json(etcd.get(f"/service/{cluster.scope}/sync")["value"])
                   .members, 30, "the synchronous promise to narrow to the standbys")
    nodes["p2"].crash()
    wait_until(lambda: any(nodes[n].role() == "primary" for n in ("p1", "p3")), 60, "a failover")
    survivor = next(members[n] for n in ("p1", "p3") if nodes[n].role() == "primary")
    assert sql(survivor, "SELECT count(*) FROM takeover WHERE id = 1000001") == [(1,)]


@pytest.mark.parametrize("patroni_cluster", [False], indirect=True, ids=["async"])
def test_the_way_back_before_the_keys_are_rewritten_is_patroni_again(patroni_cluster, etcd):
    """Prepared and governor started, not finished: stop governor, start Patroni, resume."""
    cluster, members = patroni_cluster
    for m in members.values():
        assert translate(m).returncode == 0
        harness.chown_to_runner(os.path.join(m.dir, "translated.yml"))
    nodes = {n: adopt(cluster, members[n]) for n in NAMES}
    sql(members["p1"], "CREATE TABLE before_back AS SELECT g AS id FROM generate_series(1, 1000) AS g")
    members["p1"].ctl("pause", "--wait")
    assert governorctl(nodes["p1"], "migrate", "--takeover", "prepare").returncode == 0
    for m in members.values():
        m.stop()
    for n in NAMES:
        nodes[n].start()
    wait_until(lambda: governorctl(nodes["p1"], "migrate", "--takeover", "check").stdout.count("governor)") == 3,
               60, "governor on every member")
    # the way back (README): governor stopped everywhere, its maintenance mode off, Patroni started
    for n in reversed(NAMES):
        assert nodes[n].stop() == 0
    assert governorctl(nodes["p1"], "resume").returncode == 0
    for m in members.values():
        m.start()
    # patronictl resume asks a member's API: once every Patroni answers and has published itself
    wait_until(lambda: all(m.status() is not None for m in members.values()) and
               all("/patroni" in (etcd.get(f"/service/{cluster.scope}/members/{n}") or {}).get("value", "")
                   for n in NAMES), 60, "Patroni's members to answer")
    members["p1"].ctl("resume", "--wait")

    def patroni_runs_it() -> bool:
        states = {n: members[n].status() or {} for n in NAMES}
        leaders = [n for n, st in states.items() if st.get("role") == "primary"]
        return len(leaders) == 1 and all(st.get("replication_state") == "streaming" and
                                         st.get("timeline") == states[leaders[0]].get("timeline")
                                         for n, st in states.items() if n != leaders[0])
    wait_until(patroni_runs_it, 120, "Patroni to run the cluster again, every replica streaming")
    leader = next(m for m in members.values() if (m.status() or {}).get("role") == "primary")
    assert sql(leader, "SELECT count(*) FROM before_back") == [(1000,)], "nothing lost on the way back"
    print(members["p1"].ctl("list").stdout)
