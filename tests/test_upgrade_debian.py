"""A Debian 12 host upgraded to Debian 13 the way apt does it (postgresql-15 kept, postgresql-17
installed), running a PostgreSQL 15 cluster under governor from the .deb: `governorctl upgrade
--to 17 --check` passes on the real path (pg_upgrade --check from 15 to 17 against the live
leader), and refuses an extension PostgreSQL 17 no longer has, naming it. Nothing changes."""
from __future__ import annotations

import json
import os
from typing import Dict

import pytest

from tests import debs, system
from tests.harness import wait_until
from tests.test_logical_failover import role, sql

pytestmark = [pytest.mark.integration, pytest.mark.system, pytest.mark.timeout(900)]
NAMES = ("a", "b")


@pytest.fixture(scope="module")
def upgraded(base_dir):
    deb = debs.build()
    root = system.upgraded_rootfs()
    work = os.path.join(base_dir, "upgraded-host")
    os.makedirs(work, exist_ok=True)
    m = system.Machine(root, binds=[], ro_binds=[(os.path.dirname(deb), "/mnt/debs")],
                       log_path=os.path.join(work, "nspawn.log"))
    m.run("env", "DEBIAN_FRONTEND=noninteractive", "apt-get", "install", "-y", "-q",
          f"/mnt/debs/{os.path.basename(deb)}", timeout=300)
    yield m
    m.poweroff()


def ctl(m: system.Machine, *args: str):
    return m.run("governorctl", "-c", "/etc/governor/a.d", *args, check=False, timeout=400)


def test_the_check_passes_on_a_host_upgraded_to_debian_13_and_names_an_extension_17_lacks(upgraded, etcd):
    m = upgraded
    assert m.run("test", "-x", "/usr/lib/postgresql/15/bin/pg_ctl", check=False).returncode == 0
    assert m.run("test", "-x", "/usr/lib/postgresql/17/bin/pg_upgrade", check=False).returncode == 0
    ports: Dict[str, dict] = {}
    scope = f"upgrade{os.getpid()}"
    for name in NAMES:
        # The data directory says 15 once it exists; before that, the operator names the
        # binaries, or governor would bootstrap with the newest installed (17).
        cfg, ports[name] = system.node_config(etcd.endpoint, scope, name, f"/var/lib/postgresql/gov-{name}",
                                              loop_wait=1)
        cfg["postgresql"]["bin_dir"] = "/usr/lib/postgresql/15/bin"
        m.install_config(f"/etc/governor/{name}.d/local.yml", cfg)
    try:
        m.run("systemctl", "start", "governor@a")
        wait_until(lambda: role(m, ports["a"]["pg"]) == "primary", 90, "a to bootstrap")
        m.run("systemctl", "start", "governor@b")
        wait_until(lambda: role(m, ports["b"]["pg"]) == "replica", 120, "b to stream")
        assert sql(m, ports["a"]["pg"], "SHOW server_version_num")[0].startswith("15")
        members = json.loads(ctl(m, "list", "--format", "json").stdout)["members"]
        assert [member["pg_majors"] for member in members] == [[15, 17], [15, 17]], members

        passed = ctl(m, "upgrade", "--to", "17", "--check")
        assert passed.returncode == 0, (passed.stdout, passed.stderr)
        assert "upgrade to PostgreSQL 17: every check passed (checked by a)" in passed.stdout

        sql(m, ports["a"]["pg"], "CREATE EXTENSION adminpack")     # removed in PostgreSQL 17
        refused = ctl(m, "upgrade", "--to", "17", "--check")
        assert refused.returncode == 1, (refused.stdout, refused.stderr)
        assert "a (leader): extension adminpack (database postgres) is not installed for PostgreSQL 17" \
            in refused.stdout
        assert "a (leader): pg_upgrade --check: Checking for presence of required libraries" in refused.stdout
        assert role(m, ports["a"]["pg"]) == "primary" and role(m, ports["b"]["pg"]) == "replica"
        assert sql(m, ports["a"]["pg"], "SHOW server_version_num")[0].startswith("15"), "nothing changed"
        left = m.run("sh", "-c", "ls -a /var/lib/postgresql | grep -c governor-upgrade-check || true").stdout
        assert left.strip() == "0", "the scratch cluster is removed"
    except AssertionError:
        for name in NAMES:
            said = [line for line in m.journal(f"governor@{name}").splitlines() if not line.startswith("\t")]
            print(f"--- governor@{name}:\n" + "\n".join(said[-40:]))
        raise
    finally:
        m.run("systemctl", "stop", "governor@a", "governor@b", check=False)
