"""Real etcd, PostgreSQL and governor processes for tests, on loopback, as the postgres user.

Every process is started here and stopped by its PID at the end of the session. PostgreSQL refuses
to run as root, so governor (and the postmasters it starts) run as the unprivileged `postgres`
system user, from a copy of the package in a directory that user can read.
"""
from __future__ import annotations

import base64
import contextlib
import json
import os
import pwd
import re
import shutil
import signal
import socket
import ssl
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from typing import Callable, Dict, List, Optional, Tuple

import psycopg2
import yaml

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PYTHON = "/usr/bin/python3"   # Debian's python3 with python3-psycopg2, python3-etcd, ... from apt
PG_BIN = "/usr/lib/postgresql/15/bin"
# The etcd API the test clusters use: 3 (the recommended adapter) unless the environment says 2;
# `make test` runs the failover tests once more with 2.
ETCD_API = int(os.environ.get("GOVERNOR_TEST_ETCD_API", "3"))
HAPROXY_EXAMPLE = os.path.join(REPO, "haproxy", "haproxy.cfg")
RUN_AS = "postgres"
SUPERUSER_PASSWORD = "test-super-Secret-1"
# For members whose API listens beyond loopback: control requests need credentials.
API_CREDENTIALS = {"username": "governor", "password": "test-api-Secret-4"}
REPLICATION_PASSWORD = "test-repl-Secret-2"

_processes: List[subprocess.Popen] = []


def become_subreaper() -> None:
    """Adopt orphaned descendants and reap the PostgreSQL ones.

    A postmaster started through pg_ctl is orphaned at once; where PID 1 does not reap (as in this
    sandbox), a killed postmaster would stay a zombie and PostgreSQL, seeing its PID alive, would
    refuse to start again. The test process becomes their subreaper and reaps exited `postgres`
    processes; its own children are left to subprocess, which waits for them."""
    import ctypes
    import threading

    libc = ctypes.CDLL(None, use_errno=True)
    PR_SET_CHILD_SUBREAPER = 36
    libc.prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0)

    def reap() -> None:
        me = os.getpid()
        while True:
            time.sleep(0.1)
            own = {p.pid for p in _processes}
            for pid in child_pids(me):
                # Only orphaned PostgreSQL processes: reaping a child that subprocess.run is about
                # to wait for would hide its exit code.
                if pid not in own and process_gone(pid) and _comm(pid) == "postgres":
                    try:
                        os.waitpid(pid, os.WNOHANG)
                    except OSError:
                        pass

    threading.Thread(target=reap, name="reaper", daemon=True).start()


# Ports for test listeners come from below the kernel's ephemeral range (32768-60999 by default),
# so no outgoing connection can take one between this check and the listener's bind, and none is
# handed out twice in one run. Each run starts at an offset from its PID. `make test` runs two
# pytest processes side by side (tools/run-tests): GOVERNOR_TEST_PORTS (0 or 1) gives each its own
# half, so they never pick the same port. Pairs of ports a fixed distance apart (free_port_pair)
# start in 20000-20999 (each half its own 500) and end in 30000-32767, outside both halves.
_HALF = os.environ.get("GOVERNOR_TEST_PORTS")
_H = int(_HALF) if _HALF in ("0", "1") else None
PORT_RANGE = (21000, 30000) if _H is None else (21000 + 4500 * _H, 25500 + 4500 * _H)
PAIR_FIRST = (20000, 21000) if _H is None else (20000 + 500 * _H, 20500 + 500 * _H)
PAIR_SECOND = (30000, 32768)
_issued: set = set()
_port_lock = threading.Lock()
_next_port = [PORT_RANGE[0] + (os.getpid() * 37) % (PORT_RANGE[1] - PORT_RANGE[0])]


def _bindable(*ports: int) -> bool:
    try:
        with contextlib.ExitStack() as stack:
            for port in ports:
                s = stack.enter_context(socket.socket())
                s.bind(("0.0.0.0", port))
    except OSError:
        return False
    return True


def free_port() -> int:
    with _port_lock:
        for _ in range(PORT_RANGE[1] - PORT_RANGE[0]):
            port = _next_port[0]
            _next_port[0] = port + 1 if port + 1 < PORT_RANGE[1] else PORT_RANGE[0]
            if port not in _issued and _bindable(port):
                _issued.add(port)
                return port
    raise RuntimeError("no free port left in the test range")


def free_port_pair(offset: int) -> int:
    """A port P such that P and P + offset are both free and issued to the caller (for files whose
    ports follow a convention, like the 2015 template's check port = PostgreSQL's port + 10000)."""
    with _port_lock:
        for port in range(*PAIR_FIRST):
            pair = (port, port + offset)
            if not PAIR_SECOND[0] <= pair[1] < PAIR_SECOND[1]:
                raise ValueError(f"free_port_pair: an offset of {offset} leaves the range for second ports")
            if not any(p in _issued for p in pair) and _bindable(*pair):
                _issued.update(pair)
                return port
    raise RuntimeError(f"no two free ports {offset} apart left in the test range")


def wait_until(predicate: Callable[[], object], timeout: float, what: str, interval: float = 0.2):
    deadline = time.monotonic() + timeout
    last_exc: Optional[BaseException] = None
    while time.monotonic() < deadline:
        try:
            value = predicate()
            if value:
                return value
        except Exception as exc:  # noqa: BLE001 - keep polling, report the last error
            last_exc = exc
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}"
                         + (f" (last error: {last_exc!r})" if last_exc else ""))


def _comm(pid: int) -> str:
    try:
        with open(f"/proc/{pid}/stat") as fh:
            return fh.read().split("(", 1)[1].rsplit(")", 1)[0]
    except (OSError, IndexError):
        return ""


def process_gone(pid: int) -> bool:
    """True when `pid` has exited (a zombie waiting to be reaped counts as gone)."""
    try:
        with open(f"/proc/{pid}/stat") as fh:
            return fh.read().rsplit(")", 1)[1].split()[0] in ("Z", "X")
    except OSError:   # gone, possibly while being read (ESRCH)
        return True


def child_pids(pid: int) -> List[int]:
    """Direct children of `pid`, from /proc."""
    result = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as fh:
                fields = fh.read().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[1]) == pid:
            result.append(int(entry))
    return result


def cmdline(pid: int) -> str:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as fh:
            return fh.read().replace(b"\0", b" ").decode(errors="replace").strip()
    except OSError:
        return ""


def chown_to_runner(path: str) -> None:
    pw = pwd.getpwnam(RUN_AS)
    os.chown(path, pw.pw_uid, pw.pw_gid)


def stop_all_processes() -> None:
    for proc in _processes:
        if proc.poll() is None:
            # governor's HA loop runs in a child of the process started (supervisor.py); it dies
            # with its parent, but only once the kernel got to it: wait for that too.
            loops = [p for p in child_pids(proc.pid) if "governor" in cmdline(p)]
            try:
                proc.kill()
                proc.wait(10)
            except (OSError, subprocess.TimeoutExpired):
                pass
            for pid in loops:
                try:
                    os.kill(pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
            deadline = time.monotonic() + 10
            while any(not process_gone(p) for p in loops) and time.monotonic() < deadline:
                time.sleep(0.05)
    _processes.clear()


def pids_naming(text: str) -> List[int]:
    """Processes (other than zombies) whose command line contains `text`."""
    found = subprocess.run(["pgrep", "-f", "--", re.escape(text)], capture_output=True, text=True).stdout.split()
    return [int(p) for p in found if int(p) != os.getpid() and not process_gone(int(p))]


def stop_postmaster(data_dir: str) -> None:
    """Immediate stop of a postmaster left running in `data_dir`, by its PID."""
    try:
        with open(os.path.join(data_dir, "postmaster.pid")) as fh:
            pid = int(fh.readline())
    except (OSError, ValueError):
        return
    try:
        os.kill(pid, signal.SIGQUIT)
    except ProcessLookupError:
        return
    for _ in range(100):
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return
        time.sleep(0.1)
    try:
        os.kill(pid, signal.SIGKILL)
    except ProcessLookupError:
        pass


class Etcd:
    # Clients over TLS: (certificate, key, CA file, whether clients need a certificate from the CA);
    # a class default too, for views made without __init__ (tests/etcdtrio.py's EtcdTrio).
    tls: Optional[Tuple[str, str, str, bool]] = None

    def __init__(self, base_dir: str, binary: str = "etcd"):
        self.binary = binary              # Debian 12's etcd 3.4 unless told otherwise
        self.listen_all = False           # clients on every address (members in network namespaces)
        self.api: Optional[int] = None    # the keyspace the tests read (None: ETCD_API)
        self.dir = os.path.join(base_dir, "etcd")
        self.port = free_port()
        self.peer_port = free_port()
        self.proc: Optional[subprocess.Popen] = None
        self.tls = None
        self.extra_args: List[str] = []

    @property
    def endpoint(self) -> str:
        return f"127.0.0.1:{self.port}"

    @property
    def scheme(self) -> str:
        return "https" if self.tls else "http"

    def start(self) -> Etcd:
        os.makedirs(self.dir, exist_ok=True)
        url, peer = f"{self.scheme}://127.0.0.1:{self.port}", f"http://127.0.0.1:{self.peer_port}"
        listen = f"{self.scheme}://0.0.0.0:{self.port}" if self.listen_all else url
        tls = []
        if self.tls:
            cert, key, ca, client_cert_auth = self.tls
            tls = ["--cert-file", cert, "--key-file", key,
                   *(["--trusted-ca-file", ca, "--client-cert-auth"] if client_cert_auth else [])]
        self.log = open(os.path.join(self.dir, "etcd.log"), "ab")
        self.proc = subprocess.Popen(
            [self.binary, "--name", "test", "--data-dir", os.path.join(self.dir, "data"),
             *(["--enable-v2=true"] if self.binary == "etcd" else []),
             "--listen-client-urls", listen, "--advertise-client-urls", url,
             "--listen-peer-urls", peer, "--initial-advertise-peer-urls", peer,
             "--initial-cluster", f"test={peer}", *tls, *self.extra_args],
            stdout=self.log, stderr=subprocess.STDOUT, start_new_session=True)
        _processes.append(self.proc)
        wait_until(self.healthy, 30, "etcd to answer")
        return self

    def restart(self) -> Etcd:
        """Start again on the same ports and data directory after stop()."""
        return self.start()

    def healthy(self) -> bool:
        context = None
        if self.tls:     # whether it answers, not whom it answers as: the tests check that
            context = ssl.create_default_context()
            context.check_hostname, context.verify_mode = False, ssl.CERT_NONE
            context.load_cert_chain(self.tls[0], self.tls[1])
        with urllib.request.urlopen(f"{self.scheme}://127.0.0.1:{self.port}/health", timeout=1,
                                    context=context) as resp:
            return json.load(resp).get("health") == "true"

    def stop(self, sig: int = signal.SIGTERM) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(sig)
            self.proc.wait(20)

    # Direct access to the keys, as an operator with etcdctl would have, in the API the test
    # clusters use (ETCD_API): v2 keys and v3 keys are separate in etcd 3.4.

    def _v3(self, path: str, body: dict) -> dict:
        req = urllib.request.Request(f"http://127.0.0.1:{self.port}/v3{path}", data=json.dumps(body).encode(),
                                     method="POST", headers={"Content-Type": "application/json"})
        with urllib.request.urlopen(req, timeout=3) as resp:
            return json.load(resp)

    def get(self, key: str, api: Optional[int] = None) -> Optional[dict]:
        """{"key", "value"[, "ttl"]} of one key, or None."""
        if (api or self.api or ETCD_API) == 3:
            kvs = self._v3("/kv/range", {"key": _b64(key)}).get("kvs") or []
            return {"key": key, "value": _unb64(kvs[0].get("value"))} if kvs else None
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{self.port}/v2/keys{key}?recursive=true",
                                        timeout=3) as resp:
                return json.load(resp)["node"]
        except urllib.error.HTTPError as exc:
            if exc.code == 404:
                return None
            raise

    def put(self, key: str, value: str) -> None:
        if (self.api or ETCD_API) == 3:
            self._v3("/kv/put", {"key": _b64(key), "value": _b64(value)})
            return
        data = urllib.parse.urlencode({"value": value}).encode()
        req = urllib.request.Request(f"http://127.0.0.1:{self.port}/v2/keys{key}", data=data, method="PUT")
        urllib.request.urlopen(req, timeout=3).close()

    def delete_tree(self, key: str) -> None:
        if (self.api or ETCD_API) == 3:
            self._v3("/kv/deleterange", {"key": _b64(key + "/"), "range_end": _prefix_end(key + "/")})
            self._v3("/kv/deleterange", {"key": _b64(key)})
            return
        req = urllib.request.Request(f"http://127.0.0.1:{self.port}/v2/keys{key}?recursive=true&dir=true",
                                     method="DELETE")
        urllib.request.urlopen(req, timeout=3).close()

    def dump(self) -> str:
        """Every key and value in both APIs, as text (to look for what must not be there)."""
        text = ""
        if self.binary == "etcd":
            with urllib.request.urlopen(f"http://127.0.0.1:{self.port}/v2/keys/?recursive=true", timeout=3) as resp:
                text = resp.read().decode()
        kvs = self._v3("/kv/range", {"key": _b64("\0"), "range_end": _b64("\0")}).get("kvs") or []
        return text + "\n" + "\n".join(f"{_unb64(kv['key'])} = {_unb64(kv.get('value'))}" for kv in kvs)


class Node:
    def __init__(self, cluster: TestCluster, name: str, extra: Optional[dict] = None):
        self.cluster = cluster
        self.name = name
        self.port = free_port()
        self.api_port = free_port()
        self.api_host = "127.0.0.1"
        self.pg_host = "127.0.0.1"
        self.metrics_port = free_port()
        self.dir = os.path.join(cluster.base_dir, name)
        os.makedirs(self.dir, exist_ok=True)
        chown_to_runner(self.dir)
        self.data_dir = os.path.join(self.dir, "data")
        self.config_path = os.path.join(self.dir, "governor.yml")
        self.log_path = os.path.join(self.dir, "governor.log")
        self.pg_log = os.path.join(self.dir, "postgresql.log")
        self.proc: Optional[subprocess.Popen] = None
        self.config = {
            "loop_wait": 1,
            "retry_timeout": 3,
            "etcd": {"scope": cluster.scope, "ttl": 10, "host": cluster.etcd.endpoint, "api": ETCD_API},
            "restapi": {"listen": f"127.0.0.1:{self.api_port}"},
            "metrics": {"listen": f"127.0.0.1:{self.metrics_port}"},
            "postgresql": {
                "name": name,
                "listen": f"127.0.0.1:{self.port}",
                "data_dir": self.data_dir,
                "bin_dir": PG_BIN,
                "log_file": self.pg_log,
                "replication": {"username": "replicator", "password": REPLICATION_PASSWORD,
                                "network": "127.0.0.1/32"},
                "superuser": {"username": "postgres", "password": SUPERUSER_PASSWORD},
                "parameters": {"unix_socket_directories": self.dir, "shared_buffers": "16MB",
                               "max_connections": 30},
            },
        }
        if extra:
            _deep_update(self.config, extra)
        self.write_config()

    def write_config(self) -> None:
        with open(self.config_path, "w") as fh:
            yaml.safe_dump(self.config, fh)
        os.chmod(self.config_path, 0o600)
        chown_to_runner(self.config_path)

    def start(self, env: Optional[dict] = None, args: tuple = ()) -> Node:
        pw = pwd.getpwnam(RUN_AS)
        env = {"PATH": "/usr/bin:/bin", "PYTHONPATH": self.cluster.src_dir, "HOME": self.dir, "LANG": "C.UTF-8",
               **(env or {})}
        log = open(self.log_path, "ab")
        self.proc = subprocess.Popen([PYTHON, "-m", "governor", *args, self.config_path], stdout=log,
                                     stderr=subprocess.STDOUT, env=env, cwd=self.dir, user=pw.pw_uid,
                                     group=pw.pw_gid, extra_groups=[], start_new_session=True)
        _processes.append(self.proc)
        return self

    def signal(self, sig: int) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(sig)

    def loop_pid(self) -> Optional[int]:
        """The PID of the process running the HA loop: outside systemd governor forks, and the
        process the test started (self.proc) is the supervising parent (governor/supervisor.py)."""
        if not self.proc or self.proc.poll() is not None:
            return None
        children = [p for p in child_pids(self.proc.pid) if "governor" in cmdline(p)]
        return children[0] if children else self.proc.pid

    def signal_loop(self, sig: int) -> int:
        """`sig` to the HA loop's process only; returns its PID."""
        pid = wait_until(self.loop_pid, 10, f"the HA loop process of {self.name}")
        os.kill(pid, sig)
        return pid

    def freeze(self) -> int:
        """SIGSTOP the HA loop's process (a hung governor); returns its PID for thaw()."""
        pid = wait_until(self.loop_pid, 10, f"the HA loop process of {self.name}")
        os.kill(pid, signal.SIGSTOP)
        return pid

    def thaw(self, pid: int) -> None:
        os.kill(pid, signal.SIGCONT)

    def stop(self, timeout: float = 60) -> int:
        """SIGTERM governor and wait for it to exit."""
        self.signal(signal.SIGTERM)
        return self.proc.wait(timeout) if self.proc else 0

    def kill(self) -> None:
        """SIGKILL of governor's main PID only (the supervising parent, the PID `ps` shows first):
        the HA loop's process notices and stops governor as on SIGTERM (PostgreSQL stopped, the
        lock handed over); waits until it has exited."""
        loop = self.loop_pid()
        self.signal(signal.SIGKILL)
        if self.proc:
            self.proc.wait(10)
        if loop and loop != self.proc.pid:
            wait_until(lambda: process_gone(loop), 90, "the HA loop process to stop after its parent died",
                       interval=0.02)

    def signal_all(self, sig: int) -> List[int]:
        """`sig` to every governor process at once (its process group: the supervising parent, the
        HA loop's process and whatever they run; not PostgreSQL, which runs in its own session, as
        `pkill -f governor` or a crashing runtime would); returns their PIDs."""
        pids = [self.proc.pid] + child_pids(self.proc.pid) if self.proc and self.proc.poll() is None else []
        if pids:
            os.killpg(self.proc.pid, sig)
        return pids

    def kill_all(self) -> None:
        """SIGKILL every governor process at once; PostgreSQL is not signalled by the test."""
        pids = self.signal_all(signal.SIGKILL)
        if self.proc:
            self.proc.wait(10)
        wait_until(lambda: all(process_gone(p) for p in pids), 10, "every governor process to die", interval=0.02)

    def log_text(self) -> str:
        try:
            with open(self.log_path, errors="replace") as fh:
                return fh.read()
        except FileNotFoundError:
            return ""

    def postgres_processes(self, kind: str = "") -> List[int]:
        """PIDs of the postmaster's children whose title contains `kind` (e.g. 'walsender')."""
        pm = self.postmaster_pid()
        if not pm:
            return []
        return [p for p in child_pids(pm) if kind in cmdline(p)]

    def crash_postgres(self) -> None:
        """SIGKILL the postmaster and every backend: what a host crash does to PostgreSQL."""
        pm = self.postmaster_pid()
        if not pm:
            return
        children = child_pids(pm)
        for pid in [pm] + children:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        wait_until(lambda: all(process_gone(p) for p in [pm] + children), 10, "PostgreSQL to die")

    def crash(self) -> None:
        """SIGKILL governor and its PostgreSQL, as a host crash."""
        self.kill_all()
        self.crash_postgres()

    def signal_postgres(self, kind: str, sig: int) -> List[int]:
        pids = self.postgres_processes(kind)
        for pid in pids:
            os.kill(pid, sig)
        return pids

    def postmaster_pid(self) -> Optional[int]:
        try:
            with open(os.path.join(self.data_dir, "postmaster.pid")) as fh:
                pid = int(fh.readline())
        except (OSError, ValueError):
            return None
        return None if process_gone(pid) else pid

    def connect(self, timeout: float = 3):
        conn = psycopg2.connect(host=self.pg_host, port=self.port, user="postgres", dbname="postgres",
                                password=SUPERUSER_PASSWORD, connect_timeout=timeout)
        conn.autocommit = True
        return conn

    def sql(self, query: str, params: tuple = ()) -> list:
        conn = self.connect()
        try:
            with conn.cursor() as cur:
                cur.execute(query, params)
                return cur.fetchall() if cur.description else []
        finally:
            conn.close()

    def role(self) -> Optional[str]:
        """'primary' / 'replica' as PostgreSQL itself reports, None when unreachable."""
        try:
            return "replica" if self.sql("SELECT pg_is_in_recovery()")[0][0] else "primary"
        except psycopg2.Error:
            return None

    def streaming_walsenders(self) -> int:
        """WAL senders of this server in state streaming (0 when it does not answer)."""
        try:
            return self.sql("SELECT count(*) FROM pg_stat_replication WHERE state = 'streaming'")[0][0]
        except psycopg2.Error:
            return 0

    def reports_streaming(self) -> bool:
        """Whether governor's own /status says this member is a replica that streams."""
        try:
            code, body = self.api("/status")
        except OSError:
            return False
        return code == 200 and bool(body) and body.get("role") == "replica" and bool(body.get("streaming"))

    def is_streaming(self) -> bool:
        try:
            rows = self.sql("SELECT status FROM pg_stat_wal_receiver")
        except psycopg2.Error:
            return False
        return bool(rows) and rows[0][0] == "streaming"

    def api(self, path: str, method: str = "GET", headers: Optional[dict] = None) -> Tuple[int, Optional[dict]]:
        """(status code, JSON body or None) of a request to this node's REST API."""
        req = urllib.request.Request(f"http://{self.api_host}:{self.api_port}{path}", method=method,
                                     headers=headers or {})
        try:
            with urllib.request.urlopen(req, timeout=3) as resp:
                body = resp.read()
                code = resp.status
        except urllib.error.HTTPError as exc:
            body, code = exc.read(), exc.code
        return code, (json.loads(body) if body else None)

    def member(self) -> Optional[dict]:
        node = self.cluster.etcd.get(f"/service/{self.cluster.scope}/members/{self.name}")
        return json.loads(node["value"]) if node else None


class TestCluster:
    def __init__(self, etcd: Etcd, base_dir: str, src_dir: str, scope: str):
        self.etcd = etcd
        self.base_dir = os.path.join(base_dir, scope)
        os.makedirs(self.base_dir, exist_ok=True)
        chown_to_runner(self.base_dir)
        self.src_dir = src_dir
        self.scope = scope
        self.nodes: Dict[str, Node] = {}

    def add(self, name: str, start: bool = True, extra: Optional[dict] = None) -> Node:
        node = Node(self, name, extra)
        self.nodes[name] = node
        if start:
            node.start()
        return node

    def leader_name(self) -> Optional[str]:
        node = self.etcd.get(f"/service/{self.scope}/leader")
        return node["value"] if node else None

    def primaries(self) -> List[Node]:
        return [n for n in self.nodes.values() if n.postmaster_pid() and n.role() == "primary"]

    def wait_for_primary(self, timeout: float = 60) -> Node:
        def one() -> Optional[Node]:
            name = self.leader_name()
            node = self.nodes.get(name) if name else None
            return node if node and node.role() == "primary" else None

        return wait_until(one, timeout, f"a primary holding the lock in {self.scope}")

    def wait_for_streaming(self, names: List[str], timeout: float = 60) -> None:
        wait_until(lambda: all(self.nodes[n].is_streaming() for n in names), timeout,
                   f"{', '.join(names)} to stream")

    def teardown(self) -> None:
        for node in self.nodes.values():
            if node.proc and node.proc.poll() is None:
                node.kill_all()
            stop_postmaster(node.data_dir)
            # A pg_ctl the killed governor had just started outlives it and may start a
            # postmaster after the line above looked for one: stop whatever names the directory.
            for pid in pids_naming(f"-D {node.data_dir}"):
                try:
                    os.kill(pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass


class PrimaryWatch(threading.Thread):
    """Every 100 ms: which servers accept writes (pg_is_in_recovery() = false, asked on a new
    connection straight to each server, not through governor), and who holds the leader key."""

    def __init__(self, cluster: TestCluster):
        super().__init__(daemon=True)
        self.cluster = cluster
        self.samples: List[Tuple[float, frozenset, Optional[str]]] = []
        self.halt = threading.Event()

    @staticmethod
    def writable(node: Node) -> bool:
        try:
            conn = psycopg2.connect(host=node.pg_host, port=node.port, user="postgres", dbname="postgres",
                                    password=SUPERUSER_PASSWORD, connect_timeout=1)
        except psycopg2.Error:
            return False
        try:
            with conn.cursor() as cur:
                cur.execute("SELECT pg_is_in_recovery()")
                return not cur.fetchone()[0]
        except psycopg2.Error:
            return False
        finally:
            conn.close()

    def run(self) -> None:
        while not self.halt.is_set():
            started = time.monotonic()
            primaries = frozenset(n.name for n in self.cluster.nodes.values() if self.writable(n))
            try:
                leader = self.cluster.leader_name()
            except OSError:
                leader = "?"
            self.samples.append((started, primaries, leader))
            self.halt.wait(max(0.0, 0.1 - (time.monotonic() - started)))

    def stop(self) -> None:
        self.halt.set()
        self.join(10)

    def two_primaries(self) -> list:
        return [(round(t, 2), sorted(p)) for t, p, _l in self.samples if len(p) > 1]

    def last_writable(self, name: str) -> Optional[float]:
        times = [t for t, p, _l in self.samples if name in p]
        return times[-1] if times else None

    def first_writable_after(self, name: str, moment: float) -> Optional[float]:
        times = [t for t, p, _l in self.samples if name in p and t > moment]
        return times[0] if times else None

    def leader_changed(self, old: str, moment: float) -> Optional[float]:
        """When the leader key first stopped naming `old` (expired, or taken by another)."""
        times = [t for t, _p, leader in self.samples if t > moment and leader != old]
        return times[0] if times else None


def haproxy_example_for(text: str, admin_socket: str) -> str:
    """The shipped example with its admin socket at `admin_socket`: tests run several haproxies
    side by side, which would otherwise take over each other's /run/haproxy/admin.sock."""
    shipped = "stats socket /run/haproxy/admin.sock "
    assert shipped in text, "the shipped haproxy.cfg has no admin socket line any more"
    return text.replace(shipped, f"stats socket {admin_socket} ")


class Haproxy:
    """A real haproxy running the shipped example, pointed at the test cluster's ports."""

    def __init__(self, cluster: TestCluster, base_dir: str, rw_port: Optional[int] = None):
        self.rw_port = rw_port or free_port()
        self.ro_port, self.stats_port = free_port(), free_port()
        with open(HAPROXY_EXAMPLE) as fh:
            text = fh.read()
        text = text.replace("bind *:5000", f"bind 127.0.0.1:{self.rw_port}")
        text = text.replace("bind *:5001", f"bind 127.0.0.1:{self.ro_port}")
        text = text.replace("bind 127.0.0.1:7000", f"bind 127.0.0.1:{self.stats_port}")
        servers = "".join(f"    server {n.name} 127.0.0.1:{n.port} maxconn 100 check port {n.api_port}\n"
                          for n in cluster.nodes.values())
        text = haproxy_example_for(re.sub(r"(?m)^    server .*\n(?:    server .*\n)*", servers, text),
                                   os.path.join(base_dir, f"haproxy-{cluster.scope}.sock"))
        self.path = os.path.join(base_dir, f"haproxy-{cluster.scope}.cfg")
        with open(self.path, "w") as fh:
            fh.write(text)
        self.proc = subprocess.Popen(["haproxy", "-db", "-f", self.path], stdout=subprocess.DEVNULL,
                                     stderr=subprocess.DEVNULL, start_new_session=True)
        _processes.append(self.proc)

    def connect(self, port: int):
        conn = psycopg2.connect(host="127.0.0.1", port=port, user="postgres", dbname="postgres",
                                password=SUPERUSER_PASSWORD, connect_timeout=2)
        conn.autocommit = True
        return conn

    def server_port(self, port: int) -> int:
        return server_port(port)

    def stop(self) -> None:
        self.proc.terminate()
        self.proc.wait(10)


class WritableCount(threading.Thread):
    """Asks every server (host, port) whether it is in recovery, every 0.1 s, and keeps the most
    that accepted writes at once: never more than 1."""

    def __init__(self, servers: List[Tuple[str, int]], password: str):
        super().__init__(daemon=True)
        self.servers, self.password = servers, password
        self.most, self.stopped = 0, threading.Event()

    def run(self) -> None:
        while not self.stopped.is_set():
            writable = 0
            for host, port in self.servers:
                try:
                    conn = psycopg2.connect(host=host, port=port, user="postgres", dbname="postgres",
                                            password=self.password, connect_timeout=1)
                    try:
                        with conn.cursor() as cur:
                            cur.execute("SELECT pg_is_in_recovery()")
                            writable += not cur.fetchone()[0]
                    finally:
                        conn.close()
                except psycopg2.Error:
                    pass
            self.most = max(self.most, writable)
            self.stopped.wait(0.1)


class WriteClient(threading.Thread):
    """Every `interval` seconds: a new connection, one INSERT into `table`; remembers every
    acknowledgement. Shared by the tests and the benchmarks."""

    def __init__(self, dsn: str, table: str, interval: float = 0.1):
        super().__init__(daemon=True)
        self.dsn, self.table, self.interval = dsn, table, interval
        self.acked: List[Tuple[int, float, float]] = []   # (id, attempt started, acknowledged)
        self.server_of: Dict[int, int] = {}                 # id -> port of the server that acknowledged it
        self.halt = threading.Event()
        self.seq = 0
        self.lock = threading.Lock()

    def run(self) -> None:
        while not self.halt.is_set():
            started = time.monotonic()
            self.seq += 1
            try:
                conn = psycopg2.connect(self.dsn)
                try:
                    conn.autocommit = True
                    with conn.cursor() as cur:
                        cur.execute(f"INSERT INTO {self.table} (id) VALUES (%s) RETURNING inet_server_port()",
                                    (self.seq,))
                        port = cur.fetchone()[0]
                    with self.lock:
                        self.acked.append((self.seq, started, time.monotonic()))
                        self.server_of[self.seq] = port
                finally:
                    conn.close()
            except psycopg2.Error:
                pass
            self.halt.wait(max(0.0, self.interval - (time.monotonic() - started)))

    def stop(self) -> None:
        self.halt.set()
        self.join(10)

    def acked_ids(self) -> List[int]:
        with self.lock:
            return [i for i, _b, _a in self.acked]

    def first_ack_after(self, moment: float, timeout: float) -> Optional[float]:
        """Acknowledgement time of the first INSERT whose connection attempt began after `moment`
        (one already in flight at the fault may still be acknowledged by the old primary)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            with self.lock:
                after = [acked for _i, began, acked in self.acked if began > moment]
            if after:
                return after[0]
            time.sleep(0.05)
        return None

    def longest_gap(self, since: float = 0.0) -> float:
        """The longest time between two consecutive acknowledgements after `since`."""
        with self.lock:
            times = [acked for _i, _b, acked in self.acked if acked >= since]
        return max((b - a for a, b in zip(times, times[1:])), default=0.0)


def multihost_dsn(cluster: TestCluster) -> str:
    """libpq connection string that reaches whichever node accepts writes."""
    nodes = list(cluster.nodes.values())
    return (f"host={','.join('127.0.0.1' for _ in nodes)} port={','.join(str(n.port) for n in nodes)} "
            f"target_session_attrs=read-write dbname=postgres user=postgres password={SUPERUSER_PASSWORD} "
            "connect_timeout=1")


TEST_CACHE = os.environ.get("GOVERNOR_TEST_CACHE", "/var/cache/governor-test")


def debian13_etcd() -> str:
    """Path of the etcd binary of Debian 13's etcd-server package (etcd 3.5), fetched once with
    apt from the Debian archive into the test cache. Raises RuntimeError with the reason when it
    cannot be had (no network, archive moved)."""
    target = os.path.join(TEST_CACHE, "etcd-debian13")
    binary = os.path.join(target, "usr", "bin", "etcd")
    if os.access(binary, os.X_OK):
        return binary
    work = tempfile.mkdtemp(prefix="etcd-debian13-")
    try:
        for sub in ("lists/partial", "archives/partial"):
            os.makedirs(os.path.join(work, sub))
        with open(os.path.join(work, "sources.list"), "w") as fh:
            fh.write("deb [signed-by=/usr/share/keyrings/debian-archive-keyring.gpg] "
                     "http://deb.debian.org/debian trixie main\n")
        opts = [f"-oDir::Etc::SourceList={work}/sources.list", "-oDir::Etc::SourceParts=/dev/null",
                f"-oDir::State::Lists={work}/lists", f"-oDir::Cache::Archives={work}/archives",
                "-oAPT::Sandbox::User=root"]
        for args in (["update", "-q"], ["download", "-q", "etcd-server"]):
            done = subprocess.run(["apt-get", *opts, *args], cwd=work, capture_output=True, text=True, timeout=300)
            if done.returncode != 0:
                raise RuntimeError(f"apt-get {args[0]} for Debian 13's etcd-server failed: "
                                   f"{done.stderr.strip().splitlines()[-1:]}")
        deb = [f for f in os.listdir(work) if f.startswith("etcd-server_") and f.endswith(".deb")]
        if not deb:
            raise RuntimeError("apt-get download left no etcd-server package")
        os.makedirs(TEST_CACHE, exist_ok=True)
        unpacked = tempfile.mkdtemp(prefix="etcd-debian13-", dir=TEST_CACHE)
        subprocess.run(["dpkg-deb", "-x", os.path.join(work, deb[0]), unpacked], check=True)
        os.rename(unpacked, target)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return binary


def _b64(text: str) -> str:
    return base64.b64encode(text.encode()).decode()


def _unb64(text: Optional[str]) -> str:
    return base64.b64decode(text or "").decode()


def _prefix_end(prefix: str) -> str:
    raw = bytearray(prefix.encode())
    raw[-1] += 1
    return base64.b64encode(bytes(raw)).decode()


def governorctl(node: Node, *args: str, stdin: str = "", env: Optional[Dict[str, str]] = None
                ) -> subprocess.CompletedProcess:
    """governorctl with the node's configuration; `stdin` answers its confirmation prompts."""
    return subprocess.run([sys.executable, "-m", "governor.ctl", "-c", node.config_path, *args],
                          capture_output=True, text=True, cwd=REPO, input=stdin,
                          env={**os.environ, "PYTHONPATH": REPO, **(env or {})}, timeout=400)


def server_port(port: int, password: str = SUPERUSER_PASSWORD) -> int:
    """The port of the PostgreSQL server a connection to 127.0.0.1:`port` lands on (behind haproxy)."""
    conn = psycopg2.connect(host="127.0.0.1", port=port, user="postgres", dbname="postgres", password=password,
                            connect_timeout=2)
    try:
        with conn.cursor() as cur:
            cur.execute("SELECT inet_server_port()")
            return cur.fetchone()[0]
    finally:
        conn.close()


def make_source_copy(base_dir: str) -> str:
    """Copy the package where the postgres user can read it."""
    src = os.path.join(base_dir, "src")
    shutil.copytree(os.path.join(REPO, "governor"), os.path.join(src, "governor"),
                    ignore=shutil.ignore_patterns("__pycache__"))
    for root, _dirs, files in os.walk(src):
        os.chmod(root, 0o755)
        for f in files:
            os.chmod(os.path.join(root, f), 0o644)
    return src


def new_base_dir() -> str:
    base = tempfile.mkdtemp(prefix="governor-test-")
    os.chmod(base, 0o755)
    return base


def _deep_update(base: dict, extra: dict) -> None:
    for key, value in extra.items():
        if isinstance(value, dict) and isinstance(base.get(key), dict):
            _deep_update(base[key], value)
        else:
            base[key] = value
