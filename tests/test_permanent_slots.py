"""Permanent slots survive a failover: the leader creates `postgresql.permanent_slots`, every
replica keeps a copy moved forward to the start of the leader's segment, so the promoted replica has the
slot and still holds the WAL its consumer needs. The consumer is a real pg_receivewal that stops
before the failover, while the cluster writes on and the replicas recycle their WAL, and resumes
on the new leader from where it stopped."""
from __future__ import annotations

import os
import signal
import subprocess
import time
from typing import Optional

import pytest

from tests import harness
from tests.harness import wait_until

pytestmark = pytest.mark.integration
SMALL_WAL = {"postgresql": {"permanent_slots": ["archiver"],
                            "parameters": {"max_wal_size": "64MB", "min_wal_size": "32MB", "wal_keep_size": 0}}}


def restart_lsn(node: harness.Node, slot: str) -> Optional[int]:
    rows = node.sql("SELECT (restart_lsn - '0/0'::pg_lsn)::bigint FROM pg_replication_slots WHERE slot_name = %s",
                    (slot,))
    return int(rows[0][0]) if rows and rows[0][0] is not None else None


def slot_active(node: harness.Node, slot: str) -> bool:
    return bool(node.sql("SELECT active FROM pg_replication_slots WHERE slot_name = %s", (slot,))[0][0])


def receivewal(node: harness.Node, directory: str, log: str) -> subprocess.Popen:
    proc = subprocess.Popen(
        [os.path.join(harness.PG_BIN, "pg_receivewal"), "-h", node.pg_host, "-p", str(node.port), "-U",
         "replicator", "-S", "archiver", "-D", directory, "--no-loop", "-w"],
        env={"PGPASSWORD": harness.REPLICATION_PASSWORD, "PATH": "/usr/bin:/bin"},
        stdout=open(log, "ab"), stderr=subprocess.STDOUT, start_new_session=True)
    harness._processes.append(proc)
    return proc


def stop(consumer: subprocess.Popen) -> None:
    """Stop pg_receivewal as an operator would (SIGINT): it finishes the file it is writing. SIGTERM
    can kill it while it zero-fills a new .partial segment, which it then refuses to resume from
    ("has 9789440 bytes, should be 0 or 16777216")."""
    consumer.send_signal(signal.SIGINT)


def test_a_permanent_slot_and_the_wal_it_holds_survive_a_failover(make_cluster, base_dir):
    cluster = make_cluster("permslot")
    for name in ("node1", "node2", "node3"):
        cluster.add(name, extra=SMALL_WAL)
    leader = cluster.wait_for_primary(60)
    replicas = [n for n in cluster.nodes.values() if n is not leader]
    cluster.wait_for_streaming([n.name for n in replicas], 90)
    wait_until(lambda: restart_lsn(leader, "archiver") is not None, 20, "the leader to create the permanent slot")
    wait_until(lambda: all(restart_lsn(r, "archiver") is not None for r in replicas), 20, "the replicas' copies")

    archive = os.path.join(base_dir, "archive")
    os.makedirs(archive)
    log = os.path.join(base_dir, "pg_receivewal.log")
    consumer = receivewal(leader, archive, log)
    leader.sql("CREATE TABLE filler (x text)")
    for _ in range(3):
        leader.sql("INSERT INTO filler SELECT repeat('x', 1000) FROM generate_series(1, 2000)")
        leader.sql("SELECT pg_switch_wal()")
    wait_until(lambda: (restart_lsn(leader, "archiver") or 0) > 3 * 16 * 2**20, 20, "the consumer to move the slot on")
    stop(consumer)
    consumer.wait(10)
    # Its last feedback is applied by the server's walsender, which may still be reading it when
    # pg_receivewal has exited: the slot's position is final once the walsender let go of it.
    wait_until(lambda: not slot_active(leader, "archiver"), 10, "the leader's walsender to release the slot")
    held = restart_lsn(leader, "archiver")
    # pg_receivewal confirmed mid-segment positions while it streamed and, as it stopped, only the
    # end of its last complete segment: the leader's slot may have moved back within the segment.
    # The copies go to the start of the leader's segment. A copy is created where its replica's last
    # restartpoint began (PostgreSQL reserves WAL from there), which may already be inside that
    # segment: what counts is the segment, as PostgreSQL keeps and removes WAL by whole segments.
    segment = int(leader.sql("SELECT setting FROM pg_settings WHERE name = 'wal_segment_size'")[0][0])
    target = held - held % segment
    copies: dict = {}

    def copies_at_held() -> bool:
        copies.update({r.name: restart_lsn(r, "archiver") for r in replicas})
        return all(lsn is not None and lsn - lsn % segment == target for lsn in copies.values())
    try:
        wait_until(copies_at_held, 20, "the replicas' copies to reach the start of the leader's segment")
    except AssertionError as exc:
        raise AssertionError(f"{exc}: the leader's slot at {held}, now {restart_lsn(leader, 'archiver')}; "
                             f"the copies at {copies}") from None

    # The cluster writes on without the consumer; the replicas recycle every segment they may.
    for _ in range(8):
        leader.sql("INSERT INTO filler SELECT repeat('x', 1000) FROM generate_series(1, 2000)")
        leader.sql("SELECT pg_switch_wal()")
    leader.sql("CHECKPOINT")
    time.sleep(1)
    for r in replicas:
        r.sql("CHECKPOINT")
    oldest = {r.name: r.sql("SELECT min(name) FROM pg_ls_waldir() WHERE name ~ '^[0-9A-F]{24}$'")[0][0]
              for r in replicas}

    leader.crash()
    new = cluster.wait_for_primary(40)
    assert restart_lsn(new, "archiver") is not None, "the promoted replica has no copy of the permanent slot"
    kept_from = restart_lsn(new, "archiver")
    assert kept_from - kept_from % segment <= held, "the copy moved past the segment the consumer confirmed"
    began = time.monotonic()
    consumer = receivewal(new, archive, log)
    wait_until(lambda: any(name.startswith("00000002") for name in os.listdir(archive)), 60,
               "pg_receivewal to resume on the new leader and reach its timeline")
    stop(consumer)
    consumer.wait(10)

    # and through a switchover to the third member
    third = next(n for n in cluster.nodes.values() if n is not leader and n is not new)
    wait_until(lambda: not slot_active(new, "archiver"), 10, "the new leader's walsender to release the slot")
    now_held = restart_lsn(new, "archiver")
    wait_until(lambda: (lambda lsn: lsn is not None and lsn - lsn % segment == now_held - now_held % segment)(
        restart_lsn(third, "archiver")), 20, "the third's copy in the new leader's segment")
    done = harness.governorctl(new, "switchover", "--leader", new.name, "--candidate", third.name, "--force")
    assert done.returncode == 0, done.stdout + done.stderr
    consumer = receivewal(third, archive, log)
    wait_until(lambda: any(name.startswith("00000003") for name in os.listdir(archive)), 60,
               "pg_receivewal to resume on the switchover's new leader")
    stop(consumer)
    consumer.wait(10)
    with open(log) as fh:
        said = fh.read()
    assert "has already been removed" not in said, said[-2000:]
    print(f"permanent slot across a failover: {new.name} kept it at {held} (consumer's position); pg_receivewal "
          f"resumed there in {time.monotonic() - began:.1f}s; oldest WAL kept on the replicas: {oldest}")
