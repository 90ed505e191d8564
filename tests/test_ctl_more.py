"""governorctl dsn and the versions in list, against a real member."""
from __future__ import annotations

import psycopg2
import pytest

from governor import __version__
from tests import harness

pytestmark = pytest.mark.integration


def test_dsn_connects_to_the_leader_and_list_shows_versions(make_cluster):
    cluster = make_cluster("dsn")
    node = cluster.add("node1")
    cluster.wait_for_primary(60)
    done = harness.governorctl(node, "dsn")
    assert done.returncode == 0, done.stderr
    dsn = done.stdout.strip()
    assert dsn == f"host=127.0.0.1 port={node.port} dbname=postgres user=postgres" and "password" not in dsn
    conn = psycopg2.connect(dsn, password=harness.SUPERUSER_PASSWORD)
    with conn, conn.cursor() as cur:
        cur.execute("SELECT pg_is_in_recovery()")
        assert cur.fetchone()[0] is False
    conn.close()
    assert harness.governorctl(node, "dsn", "node1", "--dbname", "my db").stdout.strip().endswith(
        "dbname='my db' user=postgres")
    missing = harness.governorctl(node, "dsn", "nosuch")
    assert missing.returncode == 1 and "nosuch is not a member" in missing.stderr
    harness.wait_until(lambda: f"{__version__} / PG 15." in harness.governorctl(node, "list").stdout, 20,
                       "list to show the member's governor and PostgreSQL versions")


def test_pause_and_resume_wait_until_every_member_reports_them(make_cluster):
    cluster = make_cluster("pausewait")
    leader = cluster.add("node1")
    cluster.wait_for_primary(60)
    cluster.add("node2")
    cluster.wait_for_streaming(["node2"], 60)
    done = harness.governorctl(leader, "pause", "--wait")
    assert done.returncode == 0 and "every member reports it" in done.stdout, done.stdout + done.stderr
    assert all(n.api("/status")[1]["paused"] is True for n in cluster.nodes.values())
    done = harness.governorctl(leader, "resume", "--wait", "20")
    assert done.returncode == 0 and "every member reports it" in done.stdout, done.stdout + done.stderr
    assert all(n.api("/status")[1]["paused"] is False for n in cluster.nodes.values())
    cluster.nodes["node2"].kill()           # a member that cannot answer: the wait says who
    done = harness.governorctl(leader, "pause", "--wait", "3")
    assert done.returncode == 1 and "not reported within 3s by: node2" in done.stderr, done.stderr
