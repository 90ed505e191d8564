"""Real etcd + three (then four) real governor/PostgreSQL 15 nodes on loopback."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import time

import pytest

from tests.harness import PG_BIN, REPLICATION_PASSWORD, RUN_AS, SUPERUSER_PASSWORD, process_gone, wait_until

pytestmark = pytest.mark.integration


@pytest.fixture
def three_nodes(make_cluster):
    cluster = make_cluster("boot")
    for name in ("node1", "node2", "node3"):
        cluster.add(name)
    primary = cluster.wait_for_primary(90)
    replicas = [n for n in cluster.nodes if n != primary.name]
    cluster.wait_for_streaming(replicas, 90)
    return cluster


def test_bootstrap_gives_one_primary_and_two_streaming_replicas(three_nodes):
    cluster = three_nodes
    primary = cluster.nodes[cluster.leader_name()]
    assert [n.name for n in cluster.primaries()] == [primary.name]
    replicas = [n for n in cluster.nodes.values() if n is not primary]
    assert all(n.role() == "replica" for n in replicas)
    # The leader holds a physical slot per replica, each in use.
    slots = dict(primary.sql("SELECT slot_name, active FROM pg_replication_slots"))
    assert slots == {n.name: True for n in replicas}
    # All members share one system identifier, recorded in `initialize`.
    sysid = cluster.etcd.get(f"/service/{cluster.scope}/initialize")["value"]
    for node in cluster.nodes.values():
        assert node.sql("SELECT system_identifier::text FROM pg_control_system()")[0][0] == sysid
    # Data checksums are on by default (pg_rewind needs them or wal_log_hints).
    assert primary.sql("SHOW data_checksums")[0][0] == "on"

    primary.sql("CREATE TABLE t (id int PRIMARY KEY, v text)")
    primary.sql("INSERT INTO t VALUES (1, 'written on the primary')")
    for replica in replicas:
        wait_until(lambda r=replica: r.sql("SELECT v FROM t WHERE id = 1") == [("written on the primary",)],
                   15, f"the row on {replica.name}")
    with pytest.raises(Exception, match="read-only"):
        replicas[0].sql("INSERT INTO t VALUES (2, 'x')")

    # Members are published with role, state and addresses, never with a password.
    for node in cluster.nodes.values():
        expected_role = "primary" if node is primary else "replica"
        wait_until(lambda n=node, r=expected_role: n.member()["role"] == r, 5, f"{node.name}'s member key")
        member = node.member()
        assert member["state"] == "running"
        assert member["conn_url"] == f"postgres://127.0.0.1:{node.port}/postgres"
        assert member["api_url"] == f"http://127.0.0.1:{node.api_port}"
    dump = cluster.etcd.dump()
    for secret in (SUPERUSER_PASSWORD, REPLICATION_PASSWORD):
        assert secret not in dump
        ps = subprocess.run(["ps", "-eo", "args"], capture_output=True, text=True).stdout
        assert secret not in ps
        for node in cluster.nodes.values():
            assert secret not in node.log_text()
            with open(node.pg_log, errors="replace") as fh:
                assert secret not in fh.read()
    # The passfile used for replication is private to the postgres user.
    pgpass = os.path.join(os.path.dirname(replicas[0].data_dir), ".pgpass_" + replicas[0].name)
    assert os.stat(pgpass).st_mode & 0o777 == 0o600


def test_fourth_node_added_later_clones_and_streams(three_nodes):
    cluster = three_nodes
    primary = cluster.nodes[cluster.leader_name()]
    primary.sql("CREATE TABLE late (id int)")
    primary.sql("INSERT INTO late SELECT generate_series(1, 1000)")
    node4 = cluster.add("node4")
    cluster.wait_for_streaming(["node4"], 90)
    primary.sql("INSERT INTO late VALUES (1001)")
    wait_until(lambda: node4.sql("SELECT count(*) FROM late")[0][0] == 1001, 15, "node4 to have all rows")
    assert "node4" in dict(primary.sql("SELECT slot_name, active FROM pg_replication_slots"))
    assert cluster.leader_name() == primary.name


def test_replica_restarted_with_its_data_rejoins(three_nodes):
    cluster = three_nodes
    primary = cluster.nodes[cluster.leader_name()]
    replica = next(n for n in cluster.nodes.values() if n is not primary)
    sysid_before = replica.sql("SELECT system_identifier::text FROM pg_control_system()")[0][0]
    assert replica.stop() == 0
    assert replica.postmaster_pid() is None, "governor stops its PostgreSQL on a clean stop"
    wait_until(lambda: replica.member() is None, 5, "the member key to be removed")
    primary.sql("CREATE TABLE while_down (id int)")
    primary.sql("INSERT INTO while_down VALUES (42)")
    replica.start()
    cluster.wait_for_streaming([replica.name], 60)
    wait_until(lambda: replica.sql("SELECT id FROM while_down") == [(42,)], 15, "rows written while down")
    assert replica.sql("SELECT system_identifier::text FROM pg_control_system()")[0][0] == sysid_before
    assert "clone_from_leader" not in replica.log_text().split("starting: member")[-1]
    assert cluster.leader_name() == primary.name


def test_sigterm_of_leader_hands_the_lock_over_at_once(three_nodes):
    cluster = three_nodes
    old = cluster.nodes[cluster.leader_name()]
    old.sql("CREATE TABLE handover (id int)")
    old.sql("INSERT INTO handover VALUES (1)")
    ttl = old.config["etcd"]["ttl"]
    started = time.monotonic()
    old.signal(signal.SIGTERM)

    def new_leader():
        name = cluster.leader_name()
        return name if name and name != old.name else None

    new_name = wait_until(new_leader, ttl, "another member to take the lock", interval=0.05)
    handover = time.monotonic() - started
    assert old.proc.wait(30) == 0
    assert old.postmaster_pid() is None
    # The lock was deleted, not left to expire: the new leader took it well before the TTL.
    assert handover < ttl / 2, f"lock handed over after {handover:.1f}s (ttl {ttl}s)"
    new = cluster.nodes[new_name]
    wait_until(lambda: new.role() == "primary", 15, f"{new_name} to be promoted")
    new.sql("INSERT INTO handover VALUES (2)")
    assert [n.name for n in cluster.primaries()] == [new_name]
    # The third member follows the new leader.
    third = next(n for n in cluster.nodes.values() if n.name not in (old.name, new_name))
    wait_until(lambda: third.sql("SELECT count(*) FROM handover")[0][0] == 2, 30, "the third member to follow")
    # The old leader comes back with its data as a replica of the new one.
    old.start()
    cluster.wait_for_streaming([old.name], 60)
    wait_until(lambda: old.sql("SELECT count(*) FROM handover")[0][0] == 2, 15, "the old leader to catch up")
    assert cluster.leader_name() == new_name


def test_data_directory_of_another_cluster_is_refused_and_left_intact(three_nodes):
    cluster = three_nodes
    stranger = cluster.add("stranger", start=False)
    subprocess.run(["runuser", "-u", RUN_AS, "--", os.path.join(PG_BIN, "initdb"), "-D", stranger.data_dir,
                    "-U", "postgres"], check=True, capture_output=True)
    marker = os.path.join(stranger.data_dir, "keep-me")
    with open(marker, "w") as fh:
        fh.write("operator data")
    before = _snapshot(stranger.data_dir)
    stranger.start()
    wait_until(lambda: "belongs to another cluster" in stranger.log_text(), 20, "the refusal in the log")
    time.sleep(3)  # several more loops: still nothing may happen
    assert stranger.proc.poll() is None, "governor keeps running and waits for the operator"
    assert stranger.postmaster_pid() is None
    assert _snapshot(stranger.data_dir) == before
    assert stranger.log_text().count("belongs to another cluster") == 1, "logged once, not every loop"
    assert stranger.member()["role"] == "stopped"


def test_clean_stop_leaves_no_process_and_no_keys(make_cluster):
    cluster = make_cluster("solo")
    node = cluster.add("solo1")
    cluster.wait_for_primary(60)
    postmaster = node.postmaster_pid()
    assert node.stop() == 0
    assert node.postmaster_pid() is None
    wait_until(lambda: process_gone(postmaster), 5, "the postmaster to exit")
    assert cluster.leader_name() is None
    assert cluster.etcd.get(f"/service/{cluster.scope}/members/solo1") is None
    # `initialize` stays: the cluster exists, and its data directory may come back.
    assert json.loads(json.dumps(cluster.etcd.get(f"/service/{cluster.scope}/initialize")["value"])).isdigit()


def _snapshot(path: str) -> dict:
    result = {}
    for root, _dirs, files in os.walk(path):
        for name in files:
            full = os.path.join(root, name)
            st = os.stat(full)
            result[os.path.relpath(full, path)] = (st.st_size, st.st_mtime_ns)
    return result


def test_existing_data_directory_initializes_an_empty_scope(make_cluster):
    """A member whose data directory survives while etcd lost the cluster's keys offers its own
    system identifier, becomes leader with its data intact, and is not re-initialized."""
    cluster = make_cluster("reuse")
    node = cluster.add("keeper")
    cluster.wait_for_primary(60)
    node.sql("CREATE TABLE kept (v text)")
    node.sql("INSERT INTO kept VALUES ('survives')")
    sysid = node.sql("SELECT system_identifier::text FROM pg_control_system()")[0][0]
    assert node.stop() == 0
    cluster.etcd.delete_tree(f"/service/{cluster.scope}")
    node.start()
    primary = cluster.wait_for_primary(60)
    assert primary is node
    assert cluster.etcd.get(f"/service/{cluster.scope}/initialize")["value"] == sysid
    assert node.sql("SELECT v FROM kept") == [("survives",)]
    assert "initialize_from_existing" in node.log_text()


def test_a_scheduled_restart_read_from_etcd_is_a_plausible_unix_time_or_unknown():
    from governor.cluster import Member
    for hostile in ('"03:00"', "NaN", "1e999", "-5", "true", "[1]", "{}", "null", "1e300"):
        assert Member.from_json("m", f'{{"scheduled_restart": {hostile}}}').scheduled_restart is None, hostile
    assert Member.from_json("m", '{"scheduled_restart": 1795000000}').scheduled_restart == 1795000000.0
