"""System test: governor as a systemd service in a booted Debian 12 (systemd-nspawn).

Run alone with `make test-system`. Needs root, debootstrap, systemd-nspawn and Debian's archive.
"""
from __future__ import annotations

import os
import shutil
import time

import pytest
import yaml

from tests import harness, system
from tests.harness import wait_until

pytestmark = [pytest.mark.integration, pytest.mark.system]


@pytest.fixture(scope="module")
def machine(base_dir, src_dir, etcd):
    if not (shutil.which("debootstrap") and shutil.which("systemd-nspawn")):
        pytest.fail("debootstrap and systemd-nspawn are required (make deps installs them)")
    root = system.rootfs()
    uid, gid = system.container_uid(root, "postgres")
    work = os.path.join(base_dir, "system")
    etc = os.path.join(work, "etc-governor")
    dropin = os.path.join(work, "governor.service.d")
    os.makedirs(etc)
    os.makedirs(dropin)
    cfg, ports = system.node_config(etcd.endpoint, "system", "sys1", "/var/lib/postgresql/governor",
                                    loop_wait=1, retry_timeout=2)
    with open(os.path.join(etc, "governor.yml"), "w") as fh:
        yaml.safe_dump(cfg, fh)
    os.chown(etc, 0, gid)
    os.chmod(etc, 0o750)
    os.chown(os.path.join(etc, "governor.yml"), 0, gid)
    os.chmod(os.path.join(etc, "governor.yml"), 0o640)
    # Faster watchdog for the test's timings: 7 + 2 < ttl 10, and 7 > 2 * retry_timeout + 2.
    with open(os.path.join(dropin, "test.conf"), "w") as fh:
        fh.write("[Service]\nWatchdogSec=7s\nRestartSec=2s\n")
    launcher = system.governor_launcher(os.path.join(work, "governor-bin"))
    # Not a watchdog: a file where the device would be, writable by postgres as the README's udev
    # rule makes the real one. governor can open it (and then finds it takes no timeout) only if
    # the unit lets the service see it.
    fake_watchdog = os.path.join(work, "watchdog")
    open(fake_watchdog, "w").close()
    os.chown(fake_watchdog, uid, gid)
    m = system.Machine(
        root,
        binds=[(etc, "/etc/governor"), (fake_watchdog, "/dev/watchdog")],
        ro_binds=[(os.path.join(src_dir, "governor"), "/usr/lib/python3/dist-packages/governor"),
                  (launcher, "/usr/bin/governor"),
                  (system.unit_path("governor.service"), "/etc/systemd/system/governor.service"),
                  (system.unit_path("50-governor-postgresql.rules"),
                   "/etc/polkit-1/rules.d/50-governor-postgresql.rules"),
                  (dropin, "/etc/systemd/system/governor.service.d")],
        log_path=os.path.join(work, "nspawn.log"))
    m.ports = ports
    m.etc = etc
    m.dropin = dropin
    m.cfg = cfg
    m.run("systemctl", "daemon-reload")
    yield m
    m.poweroff()


def postmaster_running(m) -> bool:
    return m.run("pgrep", "-u", "postgres", "-x", "postgres", check=False).returncode == 0


def leading(m) -> bool:
    """governor leads and its PostgreSQL runs as the primary (a governor that has just started may
    run it as a standby first, under no lock: the fence then leaves it running, as it should)."""
    return postmaster_running(m) and 'Status: "primary, leader of' in m.run("systemctl", "status", "governor",
                                                                            check=False).stdout


def test_governor_runs_as_a_systemd_service(machine):
    m = machine
    m.run("systemctl", "start", "governor")     # Type=notify: returns once READY=1 arrived
    assert m.run("systemctl", "is-active", "governor").stdout.strip() == "active"
    wait_until(lambda: 'Status: "primary, leader of system' in m.run("systemctl", "status", "governor",
                                                                      check=False).stdout, 20, "the status line")
    # The status line is sent when the bootstrap publishes; the next pass logs its decision a
    # moment later, and journald stores it after that.
    wait_until(lambda: "holding the lock as primary" in m.journal("governor", "info"), 20, "the leader's decision")
    info = m.journal("governor", "info")
    assert "bootstrap_race" in info and "holding the lock as primary" in info
    warnings = m.journal("governor", "warning")
    assert "holding the lock as primary" not in warnings, "journal priorities come from governor's levels"
    assert harness.SUPERUSER_PASSWORD not in info and harness.REPLICATION_PASSWORD not in info

    # systemctl reload: SIGHUP, RELOADING=1 then READY=1; the service stays active.
    m.run("systemctl", "reload", "governor")
    wait_until(lambda: "reload: configuration reloaded" in m.journal("governor"), 10, "the reload")
    assert m.run("systemctl", "is-active", "governor").stdout.strip() == "active"

    # A file that does not validate: `systemctl reload` fails and says why; nothing changes.
    path = os.path.join(m.etc, "governor.yml")
    good = open(path).read()
    with open(path, "a") as fh:
        fh.write("loop_wiat: 3\n")
    try:
        refused = m.run("systemctl", "reload", "governor", check=False)
        assert refused.returncode != 0, refused.stdout + refused.stderr
        assert "loop_wiat: unknown setting" in m.journal("governor")
        assert m.run("systemctl", "is-active", "governor").stdout.strip() == "active"
    finally:
        with open(path, "w") as fh:
            fh.write(good)


def test_the_watchdog_device_is_reachable_from_the_unit(machine):
    """watchdog.mode: automatic (the default) under the shipped unit: governor, as postgres, gets
    to open /dev/watchdog (a PrivateDevices=yes unit hides it: "does not exist")."""
    m = machine
    m.run("systemctl", "start", "governor")
    said = wait_until(lambda: [ln for ln in m.journal("governor").splitlines() if "watchdog: /dev/watchdog" in ln],
                      60, "governor to try the watchdog device as leader")
    wait_until(lambda: "Inappropriate ioctl" in m.journal("governor"), 20, "governor to find it takes no timeout")
    said = [ln for ln in m.journal("governor").splitlines() if "watchdog: /dev/watchdog" in ln]
    assert not any("does not exist" in ln for ln in said), said
    assert not any("armed" in ln for ln in said), f"a device that takes no timeout was called armed: {said}"


def test_watchdog_kills_a_hung_governor_and_the_fence_stops_postgres(machine):
    m = machine
    if m.run("systemctl", "is-active", "governor", check=False).stdout.strip() != "active":
        m.run("systemctl", "start", "governor")
    wait_until(lambda: leading(m), 30, "governor to lead")
    pid = m.run("systemctl", "show", "-p", "MainPID", "--value", "governor").stdout.strip()
    frozen = time.monotonic()
    m.run("kill", "-STOP", pid)
    wait_until(lambda: "Watchdog timeout" in m.journal("governor"), 20, "systemd's watchdog to fire")
    wait_until(lambda: not postmaster_running(m), 15, "the fence to stop PostgreSQL")
    fenced_after = time.monotonic() - frozen
    # The lock was renewed at most a loop before the freeze: PostgreSQL is gone before it expires.
    assert fenced_after < 10, f"PostgreSQL outlived the frozen governor by {fenced_after:.1f}s (ttl 10s)"
    print(f"\nsystemd: PostgreSQL stopped {fenced_after:.1f}s after governor froze (WatchdogSec 7, ttl 10)")
    assert "fence: governor ended with watchdog" in m.journal("governor")
    # Restart=on-failure brings governor back, and with it PostgreSQL.
    wait_until(lambda: m.run("systemctl", "is-active", "governor", check=False).stdout.strip() == "active"
               and postmaster_running(m), 60, "governor to be restarted")
    m.run("systemctl", "stop", "governor")
    assert not postmaster_running(m), "a clean stop stops PostgreSQL"
    assert "nothing to do" in m.journal("governor"), "the fence leaves a clean stop alone"


def test_a_killed_governor_is_fenced_by_systemd_at_once(machine):
    """SIGKILL of the leading governor's main PID under systemd (there governor is one process, and systemd
    keeps it and the postmaster apart): the ExecStopPost fence stops PostgreSQL at once, and
    Restart=on-failure brings both back."""
    m = machine
    if m.run("systemctl", "is-active", "governor", check=False).stdout.strip() != "active":
        m.run("systemctl", "start", "governor")
    wait_until(lambda: leading(m), 30, "governor to lead")
    pid = m.run("systemctl", "show", "-p", "MainPID", "--value", "governor").stdout.strip()
    killed = time.monotonic()
    m.run("kill", "-KILL", pid)
    wait_until(lambda: not postmaster_running(m), 10, "the fence to stop PostgreSQL", interval=0.1)
    fenced_after = time.monotonic() - killed
    assert fenced_after < 5, f"PostgreSQL outlived the killed governor by {fenced_after:.1f}s"
    print(f"\nsystemd: PostgreSQL stopped {fenced_after:.1f}s after governor was killed")
    assert "fence: governor ended with signal" in m.journal("governor")
    wait_until(lambda: m.run("systemctl", "is-active", "governor", check=False).stdout.strip() == "active"
               and postmaster_running(m), 60, "governor to be restarted")


def test_passwords_come_from_systemd_credentials_with_none_in_the_yaml(machine):
    """LoadCredential= in a drop-in, the YAML without a single password: governor (and its
    ExecStartPre validation) reads them from $CREDENTIALS_DIRECTORY, and the superuser logs in
    over the network with the credential's password."""
    m = machine
    m.run("systemctl", "stop", "governor")
    secrets = os.path.join(m.etc, "secrets")
    os.makedirs(secrets, mode=0o700, exist_ok=True)
    for name, value in (("replication", harness.REPLICATION_PASSWORD), ("superuser", harness.SUPERUSER_PASSWORD)):
        with open(os.path.join(secrets, name), "w") as fh:
            fh.write(value + "\n")
        os.chmod(os.path.join(secrets, name), 0o600)
    cfg = yaml.safe_load(yaml.safe_dump(m.cfg))
    del cfg["postgresql"]["replication"]["password"], cfg["postgresql"]["superuser"]["password"]
    creds = os.path.join(m.dropin, "credentials.conf")
    with open(creds, "w") as fh:
        fh.write("[Service]\nLoadCredential=postgresql.replication.password:/etc/governor/secrets/replication\n"
                 "LoadCredential=postgresql.superuser.password:/etc/governor/secrets/superuser\n")
    with open(os.path.join(m.etc, "governor.yml"), "w") as fh:
        yaml.safe_dump(cfg, fh)
    try:
        m.run("systemctl", "daemon-reload")
        m.run("systemctl", "start", "governor")
        wait_until(lambda: 'Status: "primary, leader of system' in m.run("systemctl", "status", "governor",
                                                                          check=False).stdout, 60, "the primary")
        assert "password" not in open(os.path.join(m.etc, "governor.yml")).read()
        login = m.run("env", f"PGPASSWORD={harness.SUPERUSER_PASSWORD}", "psql", "-h", "127.0.0.1", "-p",
                      str(m.ports["pg"]), "-U", "postgres", "-Atc", "SELECT 1")
        assert login.stdout.strip() == "1"
        assert harness.SUPERUSER_PASSWORD not in m.journal("governor")
    finally:
        m.run("systemctl", "stop", "governor")
        os.unlink(creds)
        with open(os.path.join(m.etc, "governor.yml"), "w") as fh:
            yaml.safe_dump(m.cfg, fh)
        m.run("systemctl", "daemon-reload")


def test_postgresql_as_the_distributions_systemd_unit(machine):
    """postgresql.systemd_unit: governor adopts Debian's cluster 15/main and runs it as
    postgresql@15-main through systemctl (allowed by the shipped polkit rule)."""
    m = machine
    m.run("systemctl", "stop", "governor")
    cfg = dict(m.cfg)
    cfg["etcd"] = {**cfg["etcd"], "scope": "system-unit"}
    cfg["postgresql"] = {**cfg["postgresql"], "name": "deb1", "systemd_unit": "postgresql@15-main",
                         "config_dir": "/etc/postgresql/15/main", "data_dir": "/var/lib/postgresql/15/main"}
    with open(os.path.join(m.etc, "governor.yml"), "w") as fh:
        yaml.safe_dump(cfg, fh)
    m.run("systemctl", "start", "governor")
    wait_until(lambda: 'Status: "primary, leader of system-unit' in m.run("systemctl", "status", "governor",
                                                                           check=False).stdout, 60, "the primary")
    wait_until(lambda: m.run("systemctl", "is-active", "postgresql@15-main", check=False).stdout.strip()
               == "active", 30, "postgresql@15-main to be active")
    assert "initialize_from_existing" in m.journal("governor")
    conf = m.run("cat", "/etc/postgresql/15/main/conf.d/governor.conf").stdout
    assert f"port = '{m.ports['pg']}'" in conf
    # The adopted cluster's superuser got its password: a remote-style login works.
    node_sql = m.run("env", f"PGPASSWORD={harness.SUPERUSER_PASSWORD}", "psql", "-h", "127.0.0.1", "-p",
                     str(m.ports["pg"]), "-U", "postgres", "-Atc", "SELECT pg_is_in_recovery()")
    assert node_sql.stdout.strip() == "f"

    # Watchdog + fence through systemctl: the unit's postmaster is stopped at once.
    pid = m.run("systemctl", "show", "-p", "MainPID", "--value", "governor").stdout.strip()
    m.run("kill", "-STOP", pid)
    wait_until(lambda: m.run("systemctl", "is-active", "postgresql@15-main", check=False).stdout.strip()
                       != "active", 25, "the fence to stop postgresql@15-main")
    wait_until(lambda: m.run("systemctl", "is-active", "postgresql@15-main", check=False).stdout.strip()
                       == "active", 60, "governor's restart to start it again")
    m.run("systemctl", "stop", "governor")
    assert m.run("systemctl", "is-active", "postgresql@15-main", check=False).stdout.strip() != "active"
