"""The sd_notify protocol, journald log format and classic daemon mode, with real processes.

The test plays systemd's part: it binds the datagram socket NOTIFY_SOCKET names and reads what
governor sends, while governor runs a real PostgreSQL against a real etcd.
"""
from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from typing import List, Tuple

import pytest

from tests import harness
from tests.harness import wait_until

pytestmark = pytest.mark.integration


class FakeSystemd(threading.Thread):
    def __init__(self, path: str):
        super().__init__(daemon=True)
        self.path = path
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(path)
        os.chmod(path, 0o666)
        self.sock.settimeout(0.2)
        self.messages: List[Tuple[float, str]] = []
        self.halt = threading.Event()

    def run(self) -> None:
        while not self.halt.is_set():
            try:
                data = self.sock.recv(4096)
            except socket.timeout:
                continue
            self.messages.append((time.monotonic(), data.decode()))

    def lines(self, since: float = 0.0) -> List[str]:
        return [line for t, m in list(self.messages) if t >= since for line in m.split("\n")]

    def pings(self, since: float, until: float = float("inf")) -> int:
        return sum(1 for t, m in list(self.messages) if since <= t <= until and "WATCHDOG=1" in m.split("\n"))

    def stop(self) -> None:
        self.halt.set()
        self.join(2)
        self.sock.close()


def test_notify_protocol_ready_status_watchdog_reload_stopping(make_cluster):
    cluster = make_cluster("notify")
    node = cluster.add("solo", start=False)
    systemd = FakeSystemd(os.path.join(node.dir, "notify.sock"))
    systemd.start()
    try:
        node.start(env={"NOTIFY_SOCKET": systemd.path, "WATCHDOG_USEC": "8000000"})
        wait_until(lambda: "READY=1" in systemd.lines(), 60, "READY=1")
        # READY comes once the API listens and a loop completed.
        assert node.api("/liveness")[0] == 200
        wait_until(lambda: any(line.startswith("STATUS=primary, leader of") for line in systemd.lines()), 20,
                   "a STATUS line for the primary")
        ready_index = systemd.lines().index("READY=1")
        assert "READY=1" not in systemd.lines()[:ready_index]
        assert "NOTIFY_SOCKET" not in _environ(node.postmaster_pid()), "postgres must not inherit the socket"

        # Watchdog pings come from the feeder thread while the loop is alive; none while the process is frozen.
        t0 = time.monotonic()
        time.sleep(3)
        assert systemd.pings(t0) >= 2
        node.signal(signal.SIGSTOP)
        frozen = time.monotonic()
        time.sleep(3)
        assert systemd.pings(frozen + 0.2, time.monotonic()) == 0
        node.signal(signal.SIGCONT)
        resumed = time.monotonic()
        wait_until(lambda: systemd.pings(resumed) >= 1, 10, "pings to resume")

        # SIGHUP with a valid change: RELOADING (with MONOTONIC_USEC), then READY; PostgreSQL reloaded.
        node.config["postgresql"]["parameters"]["work_mem"] = "7MB"
        node.write_config()
        hup = time.monotonic()
        node.signal(signal.SIGHUP)
        wait_until(lambda: "READY=1" in systemd.lines(hup), 10, "READY after reload")
        lines = systemd.lines(hup)
        assert lines.index("RELOADING=1") < lines.index("READY=1")
        assert any(line.startswith("MONOTONIC_USEC=") for line in lines)
        wait_until(lambda: node.sql("SHOW work_mem") == [("7MB",)], 10, "the new work_mem")
        assert "reload: configuration reloaded (changed: postgresql.parameters)" in node.log_text()

        # SIGHUP with a broken file: rejected with file and key named, the old configuration stays.
        with open(node.config_path, "a") as fh:
            fh.write("loop_wiat: 3\n")
        hup = time.monotonic()
        node.signal(signal.SIGHUP)
        wait_until(lambda: "READY=1" in systemd.lines(hup), 10, "READY after a rejected reload")
        log = node.log_text()
        assert "the new configuration is rejected" in log and f"{node.config_path}: loop_wiat: unknown" in log
        assert node.proc.poll() is None and node.sql("SHOW work_mem") == [("7MB",)]

        stop = time.monotonic()
        assert node.stop() == 0
        assert "STOPPING=1" in systemd.lines(stop)
    finally:
        systemd.stop()


def test_the_watchdog_timeout_follows_ttl(make_cluster):
    """Under the unit's WatchdogSec=25 a member with ttl 10 would be killed for a hang only after its
    lock expired: governor lowers systemd's timeout to ttl - the lock fence's margin - 1 s for the
    fence at start, and follows every change of ttl (edit-config), never above the unit's own."""
    cluster = make_cluster("wdttl")
    node = cluster.add("solo", start=False)
    systemd = FakeSystemd(os.path.join(node.dir, "notify.sock"))
    systemd.start()
    try:
        node.start(env={"NOTIFY_SOCKET": systemd.path, "WATCHDOG_USEC": "25000000"})
        wait_until(lambda: "WATCHDOG_USEC=7000000" in systemd.lines(), 30, "the timeout for ttl 10")
        config = f"/service/{cluster.scope}/config"
        for ttl, expected in ((30, "WATCHDOG_USEC=24000000"), (60, "WATCHDOG_USEC=25000000"),
                              (12, "WATCHDOG_USEC=8600000")):
            changed = time.monotonic()
            cluster.etcd.put(config, json.dumps({"ttl": ttl}))
            wait_until(lambda expected=expected, changed=changed: expected in systemd.lines(changed), 30,
                       f"the timeout for ttl {ttl}")
        assert "watchdog: systemd's timeout set to 8.6s for the leader lock's ttl 12" in node.log_text()
    finally:
        node.stop()
        systemd.stop()


def _environ(pid: int) -> str:
    with open(f"/proc/{pid}/environ", "rb") as fh:
        return fh.read().decode(errors="replace")


def test_journald_lines_carry_the_priority_and_no_timestamp(tmp_path):
    out = tmp_path / "stderr"
    code = ("import logging, os, sys\n"
            "st = os.fstat(2)\n"
            "os.environ['JOURNAL_STREAM'] = f'{st.st_dev}:{st.st_ino}'\n"
            "from governor import log\n"
            "log.setup('INFO')\n"
            "logging.getLogger('governor').info('promoting: lock acquired')\n"
            "logging.getLogger('governor').warning('etcd unreachable')\n"
            "logging.getLogger('governor').error('pg_rewind failed')\n")
    with open(out, "w") as fh:
        subprocess.run([sys.executable, "-c", code], stderr=fh, check=True, cwd=harness.REPO,
                       env={**os.environ, "PYTHONPATH": harness.REPO})
    assert out.read_text().splitlines() == ["<6>promoting: lock acquired", "<4>etcd unreachable",
                                            "<3>pg_rewind failed"]
    # Elsewhere (stderr not the journal): timestamped lines.
    result = subprocess.run([sys.executable, "-c", code.replace("os.environ['JOURNAL_STREAM']", "_x")],
                            capture_output=True, text=True, cwd=harness.REPO, env={**os.environ,
                                                                                  "PYTHONPATH": harness.REPO})
    first = result.stderr.splitlines()[0]
    assert first.endswith("INFO: promoting: lock acquired") and first[:4].isdigit()


def test_daemon_mode_writes_and_removes_its_pidfile(make_cluster):
    cluster = make_cluster("daemon")
    node = cluster.add("bg", start=False)
    pidfile = os.path.join(node.dir, "governor.pid")
    logfile = os.path.join(node.dir, "daemon.log")
    node.start(args=("--daemonize", "--pidfile", pidfile, "--log-file", logfile))
    assert node.proc.wait(20) == 0, "the launching process exits once the daemon is detached"
    wait_until(lambda: os.path.exists(pidfile), 10, "the pidfile")
    with open(pidfile) as fh:
        pid = int(fh.read().strip())
    assert pid != node.proc.pid
    cluster.wait_for_primary(60)
    wait_until(lambda: "holding the lock as primary" in open(logfile).read(), 10, "the daemon's log")
    os.kill(pid, signal.SIGTERM)
    wait_until(lambda: harness.process_gone(pid), 60, "the daemon to stop")
    assert not os.path.exists(pidfile)
    assert node.postmaster_pid() is None


def test_daemon_mode_refuses_a_pidfile_or_log_file_it_cannot_write_before_detaching(make_cluster):
    """The README's example names /run/postgresql (there on Debian and RHEL, postgres's own); a
    directory that is not there, or not writable, is an error on the terminal, not in a detached
    process's traceback."""
    cluster = make_cluster("daemondir")
    node = cluster.add("bg", start=False)
    for option, path in (("--pidfile", "/run/no-such-governor-dir/governor.pid"),
                         ("--log-file", "/run/no-such-governor-dir/governor.log")):
        args = ["--daemonize", "--pidfile", os.path.join(node.dir, "governor.pid"), option, path]
        if option == "--pidfile":
            args = ["--daemonize", option, path]
        node.start(args=tuple(args))
        assert node.proc.wait(20) == 2, option
        said = open(node.log_path).read() if os.path.exists(node.log_path) else ""
        assert f"{option} {path}: the directory /run/no-such-governor-dir does not exist" in said, said
    assert node.postmaster_pid() is None


def test_json_log_format(tmp_path):
    code = ("import logging\nfrom governor import log\nlog.setup('INFO', fmt='json')\n"
            "logging.getLogger('governor').warning('demoting: %s holds the lock', 'node2')\n")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=harness.REPO,
                            env={**os.environ, "PYTHONPATH": harness.REPO})
    entry = json.loads(result.stderr.strip())
    assert entry["level"] == "warning" and entry["message"] == "demoting: node2 holds the lock"
    assert entry["logger"] == "governor" and entry["time"].endswith("Z")
