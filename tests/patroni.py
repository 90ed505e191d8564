"""A real Patroni cluster for the takeover test (issue 37): Patroni from PyPI in a virtual
environment of its own (a test-only tool, never a runtime dependency of governor), its members
as the postgres user on loopback ports, its keys in the test's etcd (v3)."""
from __future__ import annotations

import json
import os
import pwd
import subprocess
import urllib.request
from typing import Dict, List, Optional

import yaml

from tests.harness import (
    PG_BIN,
    REPLICATION_PASSWORD,
    REPO,
    RUN_AS,
    SUPERUSER_PASSWORD,
    _processes,
    chown_to_runner,
    free_port,
)

PATRONI_VERSION = "4.1.5"
VENV = os.path.join(REPO, "build", f"patroni-{PATRONI_VERSION}")
API_USER, API_PASSWORD = "patroni", "test-patroni-api-Secret-5"


def install() -> str:
    """The virtual environment with Patroni (built once: `pip install patroni[etcd3]`), with the
    system's packages (psycopg2, python-etcd) as governor's tests have them."""
    patroni = os.path.join(VENV, "bin", "patroni")
    if not os.path.exists(patroni):
        subprocess.run(["/usr/bin/python3", "-m", "venv", "--system-site-packages", VENV], check=True)
        subprocess.run([os.path.join(VENV, "bin", "pip"), "install", "-q", f"patroni[etcd3]=={PATRONI_VERSION}"],
                       check=True, timeout=600)
        os.chmod(VENV, 0o755)
    return patroni


class PatroniMember:
    def __init__(self, base: str, scope: str, name: str, etcd_port: int, synchronous: bool = False):
        self.name, self.scope = name, scope
        self.port, self.api_port = free_port(), free_port()
        self.dir = os.path.join(base, name)
        os.makedirs(self.dir, exist_ok=True)
        chown_to_runner(self.dir)
        self.data_dir = os.path.join(self.dir, "data")
        self.config_path = os.path.join(self.dir, "patroni.yml")
        self.log_path = os.path.join(self.dir, "patroni.log")
        self.proc: Optional[subprocess.Popen] = None
        self.config = {
            "scope": scope, "name": name,
            "restapi": {"listen": f"127.0.0.1:{self.api_port}", "connect_address": f"127.0.0.1:{self.api_port}",
                        "authentication": {"username": API_USER, "password": API_PASSWORD}},
            "etcd3": {"hosts": [f"127.0.0.1:{etcd_port}"]},
            "bootstrap": {
                "dcs": {"ttl": 20, "loop_wait": 2, "retry_timeout": 5, "maximum_lag_on_failover": 1048576,
                        "synchronous_mode": synchronous,
                        "postgresql": {"use_pg_rewind": True, "use_slots": True,
                                       "parameters": {"wal_log_hints": "on", "max_wal_senders": 10}}},
                "initdb": [{"encoding": "UTF8"}, "data-checksums"],
            },
            "postgresql": {
                "listen": f"127.0.0.1:{self.port}", "connect_address": f"127.0.0.1:{self.port}",
                "data_dir": self.data_dir, "bin_dir": PG_BIN, "pgpass": os.path.join(self.dir, "pgpass"),
                "authentication": {"superuser": {"username": "postgres", "password": SUPERUSER_PASSWORD},
                                   "replication": {"username": "replicator", "password": REPLICATION_PASSWORD}},
                "parameters": {"unix_socket_directories": self.dir, "shared_buffers": "16MB",
                               "max_connections": 30},
                "pg_hba": ["local all all trust", "host all all 127.0.0.1/32 scram-sha-256",
                           "host replication replicator 127.0.0.1/32 scram-sha-256"],
            },
        }
        with open(self.config_path, "w") as fh:
            yaml.safe_dump(self.config, fh)
        os.chmod(self.config_path, 0o600)
        chown_to_runner(self.config_path)

    def start(self) -> PatroniMember:
        pw = pwd.getpwnam(RUN_AS)
        log = open(self.log_path, "ab")
        self.proc = subprocess.Popen([install(), self.config_path], stdout=log, stderr=subprocess.STDOUT,
                                     env={"PATH": "/usr/bin:/bin", "HOME": self.dir, "LANG": "C.UTF-8"},
                                     cwd=self.dir, user=pw.pw_uid, group=pw.pw_gid, extra_groups=[],
                                     start_new_session=True)
        _processes.append(self.proc)
        return self

    def stop(self, timeout: float = 60) -> int:
        """Patroni's own clean stop (SIGTERM, as `systemctl stop patroni` sends)."""
        assert self.proc is not None
        self.proc.terminate()
        return self.proc.wait(timeout)

    def ctl(self, *args: str, check: bool = True) -> subprocess.CompletedProcess:
        done = subprocess.run([os.path.join(VENV, "bin", "patronictl"), "-c", self.config_path, *args],
                              capture_output=True, text=True, timeout=120, env={"PATH": "/usr/bin:/bin",
                                                                                  "HOME": self.dir})
        if check and done.returncode != 0:
            raise AssertionError(f"patronictl {' '.join(args)}: {done.stdout}{done.stderr}")
        return done

    def status(self) -> Optional[dict]:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{self.api_port}/patroni", timeout=2) as resp:
                return json.load(resp)
        except (OSError, ValueError):
            return None

    def log_text(self) -> str:
        try:
            with open(self.log_path, errors="replace") as fh:
                return fh.read()
        except OSError:
            return ""


def cluster(base: str, scope: str, etcd_port: int, names: List[str]) -> Dict[str, PatroniMember]:
    members = {name: PatroniMember(base, scope, name, etcd_port) for name in names}
    return members
