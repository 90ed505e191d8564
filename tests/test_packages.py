"""The Debian package, installed with apt into a booted Debian 12 (systemd-nspawn).

Run alone with `make test-packages`; it builds the .deb with `make deb` first.
"""
from __future__ import annotations

import glob
import json
import os
import re
import subprocess
import urllib.request

import pytest

from tests import debs, harness, system
from tests.harness import REPO, wait_until

pytestmark = [pytest.mark.integration, pytest.mark.system, pytest.mark.packages]


@pytest.fixture(scope="module")
def deb(base_dir) -> str:
    return debs.build()


@pytest.fixture(scope="module")
def next_deb(deb) -> str:
    """The same package under a newer version, to test an upgrade."""
    return debs.build_next()


@pytest.fixture(scope="module")
def machine(base_dir, deb, next_deb):
    root = system.rootfs()
    work = os.path.join(base_dir, "packages")
    os.makedirs(work)
    m = system.Machine(root, binds=[], ro_binds=[(os.path.dirname(deb), "/mnt/debs"),
                                                 (os.path.dirname(next_deb), "/mnt/debs-next")],
                       log_path=os.path.join(work, "nspawn.log"))
    yield m
    m.poweroff()


def test_apt_install_configure_enable_upgrade_and_purge(machine, deb, next_deb, etcd):
    m = machine
    m.run("apt-get", "update", "-q", timeout=300)
    installed = m.run("env", "DEBIAN_FRONTEND=noninteractive", "apt-get", "install", "-y", "-q",
                      f"/mnt/debs/{os.path.basename(deb)}", timeout=300)
    assert "governor" in installed.stdout
    # Installed, not enabled or started: the operator configures first.
    assert m.run("systemctl", "is-enabled", "governor", check=False).stdout.strip() == "disabled"
    assert m.run("systemctl", "is-active", "governor", check=False).stdout.strip() == "inactive"
    assert m.run("stat", "-c", "%a %U %G", "/etc/governor/governor.yml").stdout.split() == ["640", "root",
                                                                                              "postgres"]
    assert m.run("test", "-x", "/usr/lib/governor/governor-check", check=False).returncode == 0
    for example in ("journal-log", "pgbouncer-follow-primary"):
        assert m.run("test", "-x", f"/usr/share/governor/callbacks/{example}", check=False).returncode == 0, example
    for shipped in ("governor/prometheus/governor-alerts.yml", "governor/grafana/governor-dashboard.json",
                    "governor/runbooks/GovernorTwoPrimaries.md", "governor/runbooks/GovernorPaused.md",
                    "bash-completion/completions/governor", "bash-completion/completions/governorctl"):
        assert m.run("test", "-f", f"/usr/share/{shipped}", check=False).returncode == 0, shipped
    for page in ("/usr/share/man/man8/governor.8.gz", "/usr/share/man/man1/governorctl.1.gz",
                 "/usr/share/man/man5/governor.yml.5.gz"):
        assert m.run("test", "-f", page, check=False).returncode == 0, page
    # What the man pages and --help point to is installed: the README, how it works, the reference
    # and the example files.
    for doc in ("README.md.gz", "architecture.md.gz", "configuration.md.gz", "examples/governor.yml",
                "examples/50-governor-postgresql.rules"):
        assert m.run("test", "-f", f"/usr/share/doc/governor/{doc}", check=False).returncode == 0, doc
    assert "postgresql.replication.password_file" in m.run("zcat", "/usr/share/man/man5/governor.yml.5.gz").stdout

    # Configure one node: the shipped example plus a per-host file merged after it (name order:
    # local.yml sorts after governor.yml, so its values win).
    override, ports = system.node_config(etcd.endpoint, "packaged", "pkg1", "/var/lib/postgresql/governor")
    override["restapi"].update(username="governor", password="api-Secret-4")   # taken over by the instances
    m.install_config("/etc/governor/local.yml", override)
    m.run("systemctl", "enable", "--now", "governor")
    wait_until(lambda: 'Status: "primary, leader of packaged' in m.run("systemctl", "status", "governor",
                                                                        check=False).stdout, 60, "the primary")
    # The status line shows the primary as soon as the bootstrap pass ends; the next pass logs
    # the steady decision.
    wait_until(lambda: "holding the lock as primary" in m.journal("governor", "info"), 30, "the leader_renew log")
    with urllib.request.urlopen(f"http://127.0.0.1:{ports['metrics']}/metrics", timeout=5) as resp:
        assert 'governor_role{role="primary"} 1.0' in resp.read().decode()
    listing = json.loads(m.run("governorctl", "-c", "/etc/governor", "list", "--format", "json").stdout)
    assert listing["leader"] == "pkg1" and [r["member"] for r in listing["members"]] == ["pkg1"]

    # Two more members on this host as template instances (governor@NAME reads /etc/governor/NAME.d/),
    # configured as the README says: generate-config --instance (ports of their own, the first
    # host's passwords), plus the test's faster timing in a file of the operator's beside it. They
    # join as replicas of pkg1.
    for name in ("r1", "r2"):
        done = m.run("governorctl", "--scope", "packaged", "generate-config", "--instance", name, "--name", name,
                     "--address", "127.0.0.1", "--network", "127.0.0.1/32", "--etcd", etcd.endpoint,
                     "--passwords-from", "/etc/governor/local.yml")
        assert f"systemctl enable --now governor@{name}" in done.stdout, done.stdout
        m.install_config(f"/etc/governor/{name}.d/timing.yml", {"loop_wait": 2, "retry_timeout": 3,
                                                                 "etcd": {"ttl": 10}})
        m.run("systemctl", "enable", "--now", f"governor@{name}")
    assert m.run("stat", "-c", "%a %U %G", "/etc/governor/r1.d").stdout.split() == ["750", "root", "postgres"]

    def members():
        data = json.loads(m.run("governorctl", "-c", "/etc/governor", "list", "--format", "json").stdout)
        return {r["member"]: r["role"] for r in data["members"]}

    wait_until(lambda: members() == {"pkg1": "leader", "r1": "replica", "r2": "replica"}, 90,
               "two replicas from the template units")

    # Upgrade: governor restarts on the new code, PostgreSQL keeps running, no failover.
    postmaster = m.run("head", "-1", "/var/lib/postgresql/governor/postmaster.pid").stdout.strip()
    old_main = m.run("systemctl", "show", "-p", "MainPID", "--value", "governor").stdout.strip()
    m.run("env", "DEBIAN_FRONTEND=noninteractive", "apt-get", "install", "-y", "-q",
          f"/mnt/debs-next/{os.path.basename(next_deb)}", timeout=300)
    wait_until(lambda: m.run("systemctl", "show", "-p", "MainPID", "--value", "governor").stdout.strip()
               not in ("0", old_main), 30, "governor to be restarted by the upgrade")
    wait_until(lambda: 'Status: "primary, leader of packaged' in m.run("systemctl", "status", "governor",
                                                                        check=False).stdout, 30, "the leader")
    assert m.run("head", "-1", "/var/lib/postgresql/governor/postmaster.pid").stdout.strip() == postmaster
    assert "restarting for a package upgrade: leaving PostgreSQL running" in m.journal("governor")
    sql = m.run("env", f"PGPASSWORD={harness.SUPERUSER_PASSWORD}", "psql", "-h", "127.0.0.1", "-p",
                str(ports["pg"]), "-U", "postgres", "-Atc", "SELECT timeline_id FROM pg_control_checkpoint()")
    assert sql.stdout.strip() == "1", "no failover happened"

    # Failover: stopping the leader's governor hands the lock to a replica; the other follows it.
    m.run("systemctl", "stop", "governor")
    wait_until(lambda: (lambda r: r.get("r1") == "leader" or r.get("r2") == "leader")(members()), 30,
               "a replica to take over")
    roles = members()
    assert sorted(roles.values()) == ["leader", "replica"] and "pkg1" not in roles

    # Purge: configuration gone, data kept.
    # What generate-config wrote goes with a purge; what an operator wrote stays.
    m.run("governorctl", "generate-config", "--name", "gone", "--address", "10.9.9.9", "--etcd", "10.9.9.1:2379",
          "--output", "/etc/governor/local.yml", "--force")
    m.run("env", "DEBIAN_FRONTEND=noninteractive", "apt-get", "purge", "-y", "-q", "governor", timeout=300)
    assert m.run("test", "-e", "/etc/governor/governor.yml", check=False).returncode != 0
    assert m.run("test", "-e", "/etc/governor/local.yml", check=False).returncode != 0
    assert m.run("test", "-e", "/etc/governor/r1.d/governor.yml", check=False).returncode != 0
    assert m.run("test", "-f", "/etc/governor/r1.d/timing.yml", check=False).returncode == 0, \
        "an operator's own files stay"
    assert m.run("test", "-f", "/var/lib/postgresql/governor/PG_VERSION", check=False).returncode == 0
    assert m.run("pgrep", "-u", "postgres", "-x", "postgres", check=False).returncode != 0, \
        "removing the package stopped governor, and governor its PostgreSQL"


def test_rpm_builds_lint_clean_with_the_same_file_set():
    result = subprocess.run(["make", "-s", "rpm"], cwd=REPO, capture_output=True, text=True)
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]
    assert "0 errors, 0 warnings" in result.stdout
    rpms = glob.glob(os.path.join(REPO, "build", "rpm", "RPMS", "noarch", "governor-*.noarch.rpm"))
    assert len(rpms) == 1
    listing = subprocess.run(["rpm", "-qlvp", rpms[0]], capture_output=True, text=True, check=True).stdout
    entries = {line.split()[-1]: line.split() for line in listing.splitlines()}
    for path in ("/usr/bin/governor", "/usr/bin/governorctl", "/usr/lib/systemd/system/governor.service",
                 "/usr/lib/systemd/system/governor@.service", "/usr/share/governor/haproxy/haproxy.cfg",
                 "/usr/libexec/governor/governor-check", "/usr/share/man/man8/governor.8.gz",
                 "/usr/share/governor/callbacks/journal-log", "/usr/share/governor/callbacks/pgbouncer-follow-primary",
                 "/usr/share/governor/prometheus/governor-alerts.yml",
                 "/usr/share/governor/grafana/governor-dashboard.json",
                 "/usr/share/governor/runbooks/GovernorNoLeader.md",
                 "/usr/share/bash-completion/completions/governorctl",
                 "/usr/share/man/man5/governor.yml.5.gz",
                 "/usr/lib/python3.9/site-packages/governor/daemon.py"):
        assert path in entries, path
    # %doc's directory is rpm's %_pkgdocdir: /usr/share/doc/governor on EL 9, governor-VERSION here
    for doc in ("README.md", "configuration.md", "architecture.md"):
        assert any(re.fullmatch(rf"/usr/share/doc/governor(-[0-9.]+)?/{doc}", p) for p in entries), doc
    mode, _links, owner, group = entries["/etc/governor/governor.yml"][:4]
    assert (mode, owner, group) == ("-rw-r-----", "root", "postgres")
    configs = subprocess.run(["rpm", "-qcp", rpms[0]], capture_output=True, text=True, check=True).stdout
    assert configs.split() == ["/etc/governor/governor.yml"]
    requires = subprocess.run(["rpm", "-qpR", rpms[0]], capture_output=True, text=True, check=True).stdout
    recommends = subprocess.run(["rpm", "-qp", "--recommends", rpms[0]], capture_output=True, text=True,
                                check=True).stdout
    assert "urllib3" in requires and "psycopg2" in requires, requires
    # governorctl and the check script install on a haproxy or client host: the server, and the
    # modules only etcd's v2 API and --daemonize need, are recommended
    for optional in ("python3-etcd", "python3-daemon", "postgresql-server"):
        assert optional not in requires and optional in recommends, (optional, requires, recommends)


@pytest.fixture(scope="module")
def trixie(base_dir, deb):
    root = system.rootfs("trixie", system.TRIXIE_PACKAGES)
    work = os.path.join(base_dir, "packages-trixie")
    os.makedirs(work)
    m = system.Machine(root, binds=[], ro_binds=[(os.path.dirname(deb), "/mnt/debs")],
                       log_path=os.path.join(work, "nspawn.log"))
    yield m
    m.poweroff()


def test_the_same_deb_runs_on_debian_13(trixie, deb, etcd):
    """Debian 13: Python 3.13, PostgreSQL 17 (found by the default bin_dir), trixie's python3-etcd."""
    m = trixie
    assert m.run("cat", "/etc/debian_version").stdout.startswith("13")
    m.run("env", "DEBIAN_FRONTEND=noninteractive", "apt-get", "install", "-y", "-q",
          f"/mnt/debs/{os.path.basename(deb)}", timeout=300)
    local, ports = system.node_config(etcd.endpoint, "trixie", "t1", "/var/lib/postgresql/governor")
    m.install_config("/etc/governor/local.yml", local)
    m.run("systemctl", "enable", "--now", "governor")
    wait_until(lambda: 'Status: "primary, leader of trixie' in m.run("systemctl", "status", "governor",
                                                                      check=False).stdout, 60, "the primary")
    version = m.run("env", f"PGPASSWORD={harness.SUPERUSER_PASSWORD}", "psql", "-h", "127.0.0.1", "-p",
                    str(ports["pg"]), "-U", "postgres", "-Atc", "SHOW server_version_num").stdout.strip()
    assert version.startswith("17")
    m.run("systemctl", "stop", "governor")


def test_the_deb_recommends_the_server_and_the_optional_modules(deb):
    """A haproxy, client or Prometheus host installs governorctl and the check script with
    --no-install-recommends and gets no PostgreSQL server (whose package would create and start a
    15/main cluster there); urllib3, which the default etcd adapter imports, is declared."""
    fields = {name: subprocess.run(["dpkg-deb", "-f", deb, name], capture_output=True, text=True, check=True).stdout
              for name in ("Depends", "Recommends")}
    assert "python3-urllib3" in fields["Depends"], fields
    for optional in ("python3-etcd", "python3-daemon", "postgresql-15"):
        assert optional not in fields["Depends"] and optional in fields["Recommends"], (optional, fields)


# A haproxy, client or Prometheus host: Debian's minimal system with governor's hard dependencies
# and no PostgreSQL server (nor python3-etcd or python3-daemon).
CLIENT_PACKAGES = ["systemd", "systemd-sysv", "dbus", "libpam-systemd", "procps", "postgresql-common",
                   "python3-psycopg2", "python3-yaml", "python3-sdnotify", "python3-prometheus-client",
                   "python3-urllib3"]


def test_governorctl_and_the_check_script_install_on_a_host_without_a_server(base_dir, deb, etcd):
    """`apt install --no-install-recommends ./governor_*.deb`, as the README says for such a host:
    no PostgreSQL server comes with it (its package would create and start a cluster), and
    governorctl and governor-check work."""
    work = os.path.join(base_dir, "packages-client")
    os.makedirs(work)
    m = system.Machine(system.rootfs("bookworm", CLIENT_PACKAGES), binds=[],
                       ro_binds=[(os.path.dirname(deb), "/mnt/debs")], log_path=os.path.join(work, "nspawn.log"))
    try:
        m.run("apt-get", "update", "-q", timeout=300)
        m.run("env", "DEBIAN_FRONTEND=noninteractive", "apt-get", "install", "-y", "-q", "--no-install-recommends",
              f"/mnt/debs/{os.path.basename(deb)}", timeout=300)
        servers = m.run("sh", "-c", "dpkg-query -W -f '${Package} ${Status}\\n' 'postgresql-1*' 2>/dev/null | "
                                    "grep ' installed' || true").stdout
        assert servers.strip() == "", f"a PostgreSQL server came with governor: {servers}"
        assert m.run("test", "-e", "/etc/postgresql/15", check=False).returncode != 0
        assert m.run("governorctl", "--version").stdout.startswith("governorctl ")
        listed = m.run("governorctl", "--dcs-url", etcd.endpoint, "--scope", "nosuchcluster", "list", "--format",
                       "json", check=False)
        assert listed.returncode == 0 and json.loads(listed.stdout)["members"] == [], listed.stdout + listed.stderr
        checked = m.run("/usr/lib/governor/governor-check", "--role", "primary", "--api-port", "9", "127.0.0.1",
                        check=False)
        assert checked.returncode == 2, "no API there: the check script answers 'no answer', not a traceback"
    finally:
        m.poweroff()
