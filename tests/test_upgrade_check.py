"""`governorctl upgrade --to MAJOR --check` on a real cluster: the leader's governor checks, names
each member and reason, and changes nothing; pg_upgrade --check runs against the live cluster."""
from __future__ import annotations

import glob
import json
import os
import pwd
import subprocess
import sys

import pytest

from tests.harness import RUN_AS, governorctl

pytestmark = pytest.mark.integration
AUTH = {"restapi": {"username": "admin", "password": "api-Secret-9"}}
PROBE = """
import json, sys
from governor import config, upgrade_probe
pg = config.load(sys.argv[1]).postgresql
print(json.dumps(upgrade_probe.pg_upgrade_check(pg, int(sys.argv[2]), pg.bin_dir, upgrade_probe.querier(pg))))
"""


@pytest.fixture
def cluster(make_cluster):
    c = make_cluster("upgrade")
    for name in ("node1", "node2"):
        c.add(name, extra=AUTH)
    primary = c.wait_for_primary(90)
    c.wait_for_streaming([n for n in c.nodes if n != primary.name], 90)
    return c


def scratch_left(node) -> list:
    return glob.glob(os.path.join(os.path.dirname(node.data_dir), ".governor-upgrade-check-*"))


def test_a_target_not_installed_is_refused_naming_every_member_and_nothing_changes(cluster):
    node = next(iter(cluster.nodes.values()))
    members = lambda: json.loads(governorctl(node, "list", "--format", "json").stdout)["members"]  # noqa: E731
    leader = cluster.leader_name()
    done = governorctl(node, "upgrade", "--to", "17", "--check")
    assert done.returncode == 1, (done.stdout, done.stderr)
    assert "upgrade to PostgreSQL 17: not possible now" in done.stdout
    for name in cluster.nodes:
        assert f"{name}: PostgreSQL 17 is not installed (found 15): install the postgresql-17 package there" \
            in done.stdout
    assert f"{leader} (leader): no binaries of PostgreSQL 17 found" in done.stdout
    assert cluster.leader_name() == leader
    assert all(m["state"] == "running" for m in members())
    assert not scratch_left(cluster.nodes[leader])

    same = governorctl(node, "upgrade", "--to", "15", "--check")
    assert same.returncode == 1 and "the cluster runs PostgreSQL 15: --to must name a later major" in same.stdout
    refused = governorctl(node, "upgrade", "--to", "17")
    assert refused.returncode == 1 and "PostgreSQL 17 is not installed" in refused.stdout, "the same checks first"
    assert cluster.leader_name() == leader


def test_pg_upgrade_check_runs_against_the_live_leader_and_reports_what_it_refuses(cluster):
    """The same major as target, which pg_upgrade accepts: the check itself runs for real (a
    scratch cluster beside the data directory, the live server's catalog), and what pg_upgrade
    refuses (a reg* column in a user table) comes back in its words; the scratch is removed."""
    leader = cluster.nodes[cluster.leader_name()]
    pw = pwd.getpwnam(RUN_AS)

    def check() -> object:
        done = subprocess.run([sys.executable, "-c", PROBE, leader.config_path, "15"], capture_output=True,
                              text=True, user=pw.pw_uid, group=pw.pw_gid, extra_groups=[], timeout=300,
                              env={"PATH": "/usr/bin:/bin", "PYTHONPATH": cluster.src_dir, "HOME": leader.dir},
                              cwd=leader.dir)
        assert done.returncode == 0, done.stderr
        return json.loads(done.stdout)

    assert check() is None
    assert not scratch_left(leader)
    leader.sql("CREATE TABLE upgrade_blocker (f regproc)")
    found = check()
    assert isinstance(found, str) and found.startswith("Checking for data type usage: ") or \
        found.startswith("Checking for reg* data types in user tables: "), found
    assert "upgrade_blocker" in found, "the problem table is named (from the file pg_upgrade lists them in)"
    assert not scratch_left(leader)
