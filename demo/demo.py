#!/usr/bin/env python3
"""A local 3-node governor cluster on loopback: etcd + three governor/PostgreSQL nodes.

    demo.py start  --dir DIR   start (or show, if already running) the cluster
    demo.py status --dir DIR   show the members
    demo.py stop   --dir DIR   stop every process it started (data stays; start again to reuse it)
    demo.py clean  --dir DIR   stop and delete DIR
"""
from __future__ import annotations

import argparse
import os
import pwd
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)

from tests.harness import make_source_copy, server_port  # noqa: E402

ETCD_PORT, ETCD_PEER_PORT = 2379, 2380
NODES = {"node1": 5441, "node2": 5442, "node3": 5443}
API_PORTS = {"node1": 8008, "node2": 8009, "node3": 8010}     # as in demo/haproxy.cfg
METRICS_PORTS = {"node1": 9547, "node2": 9548, "node3": 9549}
HAPROXY_PORTS = (5000, 5001, 7000)
SUPERUSER_PASSWORD = "demo-superuser"   # demo only: real deployments keep passwords in 0640 files
PYTHON = "/usr/bin/python3"


def run_as() -> pwd.struct_passwd:
    """PostgreSQL refuses to run as root: use the postgres user when started as root."""
    return pwd.getpwnam("postgres") if os.geteuid() == 0 else pwd.getpwuid(os.geteuid())


def port_busy(port: int) -> bool:
    with socket.socket() as s:
        return s.connect_ex(("127.0.0.1", port)) == 0


def pid_alive(path: str) -> int:
    try:
        with open(path) as fh:
            pid = int(fh.read().strip())
        os.kill(pid, 0)
        with open(f"/proc/{pid}/stat") as fh:
            if fh.read().rsplit(")", 1)[1].split()[0] == "Z":
                return 0
        return pid
    except (OSError, ValueError):
        return 0


def spawn(cmd: list, log: str, pidfile: str, user: pwd.struct_passwd = None, env: dict = None) -> None:
    kwargs = {}
    if user is not None and os.geteuid() == 0:
        kwargs = {"user": user.pw_uid, "group": user.pw_gid, "extra_groups": []}
    with open(log, "ab") as out:
        proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                start_new_session=True, env=env, cwd=os.path.dirname(log), **kwargs)
    with open(pidfile, "w") as fh:
        fh.write(str(proc.pid))


def wait_for(predicate, timeout: float, what: str):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            result = predicate()
            if result:
                return result
        except Exception:  # noqa: BLE001 - keep waiting
            pass
        time.sleep(0.5)
    raise SystemExit(f"demo: timed out waiting for {what}; see the logs in the demo directory")


def node_config(base: str, name: str, port: int) -> str:
    return f"""# demo node {name}: fast timings so failover can be watched
loop_wait: 1
retry_timeout: 3
restapi:
  listen: 127.0.0.1:{API_PORTS[name]}
metrics:
  listen: 127.0.0.1:{METRICS_PORTS[name]}
etcd:
  scope: demo
  ttl: 10
  host: 127.0.0.1:{ETCD_PORT}
  api: 3
postgresql:
  name: {name}
  listen: 127.0.0.1:{port}
  data_dir: {base}/{name}/data
  log_file: {base}/{name}/postgresql.log
  replication:
    username: replicator
    password: demo-replication
    network: 127.0.0.1/32
  superuser:
    username: postgres
    password: {SUPERUSER_PASSWORD}
  parameters:
    unix_socket_directories: {base}/{name}
    shared_buffers: 32MB
"""


def start(base: str) -> None:
    user = run_as()
    os.makedirs(base, exist_ok=True)
    os.chmod(base, 0o755)
    shutil.rmtree(os.path.join(base, "src"), ignore_errors=True)
    src = make_source_copy(base)   # where the postgres user can read it

    etcd_pid = os.path.join(base, "etcd.pid")
    if not pid_alive(etcd_pid):
        for port in (ETCD_PORT, ETCD_PEER_PORT):
            if port_busy(port):
                raise SystemExit(f"demo: port {port} is in use; stop what listens there (another etcd?)")
        url, peer = f"http://127.0.0.1:{ETCD_PORT}", f"http://127.0.0.1:{ETCD_PEER_PORT}"
        spawn(["etcd", "--name", "demo", "--data-dir", os.path.join(base, "etcd"),
               "--listen-client-urls", url, "--advertise-client-urls", url, "--listen-peer-urls", peer,
               "--initial-advertise-peer-urls", peer, "--initial-cluster", f"demo={peer}"],
              os.path.join(base, "etcd.log"), etcd_pid)
        wait_for(lambda: urllib.request.urlopen(f"http://127.0.0.1:{ETCD_PORT}/health", timeout=1).status == 200,
                 30, "etcd")
        print(f"etcd listening on 127.0.0.1:{ETCD_PORT} (governor uses its v3 API)")

    env = {"PATH": "/usr/bin:/bin", "PYTHONPATH": src, "LANG": "C.UTF-8", "HOME": base}
    for name, port in NODES.items():
        node_dir = os.path.join(base, name)
        os.makedirs(node_dir, exist_ok=True)
        cfg = os.path.join(node_dir, "governor.yml")
        with open(cfg, "w") as fh:
            fh.write(node_config(base, name, port))
        os.chmod(cfg, 0o600)
        for path in (node_dir, cfg):
            os.chown(path, user.pw_uid, user.pw_gid) if os.geteuid() == 0 else None
        pidfile = os.path.join(node_dir, "governor.pid")
        if pid_alive(pidfile):
            continue
        if port_busy(port):
            raise SystemExit(f"demo: port {port} is in use; the demo needs ports {', '.join(map(str, NODES.values()))}")
        spawn([PYTHON, "-m", "governor", cfg], os.path.join(node_dir, "governor.log"), pidfile, user, env)
        print(f"started governor {name} (PostgreSQL on 127.0.0.1:{port}), log {node_dir}/governor.log")

    haproxy_pid = os.path.join(base, "haproxy.pid")
    if not pid_alive(haproxy_pid):
        for port in HAPROXY_PORTS:
            if port_busy(port):
                raise SystemExit(f"demo: port {port} is in use; haproxy needs {HAPROXY_PORTS}")
        spawn(["haproxy", "-db", "-f", os.path.join(REPO, "demo", "haproxy.cfg")],
              os.path.join(base, "haproxy.log"), haproxy_pid)
        print("started haproxy: 5000 read-write, 5001 read-only, http://127.0.0.1:7000/ statistics")

    print("waiting for 1 primary and 2 streaming replicas ...")
    wait_for(lambda: healthy(base), 180, "the cluster to form")
    wait_for(lambda: server_port(5000, SUPERUSER_PASSWORD) == NODES[leader(base)], 30,
             "haproxy to route to the primary")
    status(base)
    name = leader(base)
    print(f"""
Connect to the primary through haproxy (a replica: -p 5001):
  PGPASSWORD={SUPERUSER_PASSWORD} psql -h 127.0.0.1 -p 5000 -U postgres
Health and metrics:  curl -s http://127.0.0.1:{API_PORTS[name]}/status; curl -s http://127.0.0.1:{METRICS_PORTS[name]}/metrics
Watch the cluster:   make demo-status   (or: {PYTHON} -m governor.ctl -c {base}/node1/governor.yml list)
Try a failover:      kill -9 $(cat {base}/{name}/governor.pid) $(head -1 {base}/{name}/data/postmaster.pid)
Stop everything:     make demo-stop     (data stays in {base}; make demo reuses it)
""")


def read_cluster():
    from governor.config import EtcdConfig
    from governor.dcs import make

    return make(EtcdConfig(scope="demo", ttl=10, hosts=(("127.0.0.1", ETCD_PORT),), api=3), 2).get_cluster()


def leader(base: str) -> str:
    cluster = read_cluster()
    return cluster.leader.name if cluster.leader else ""


def healthy(base: str) -> bool:
    import psycopg2

    cluster = read_cluster()
    if cluster.leader is None or cluster.leader_member is None or cluster.leader_member.role != "primary":
        return False
    name = cluster.leader.name
    # Every member has published itself as running (one loop after PostgreSQL is up).
    if len(cluster.members) != len(NODES) or any(m.state != "running" for m in cluster.members):
        return False
    conn = psycopg2.connect(host="127.0.0.1", port=NODES[name], user="postgres", password=SUPERUSER_PASSWORD,
                            dbname="postgres", connect_timeout=2)
    try:
        with conn.cursor() as cur:
            cur.execute("SELECT count(*) FROM pg_stat_replication WHERE state = 'streaming'")
            return cur.fetchone()[0] == len(NODES) - 1
    finally:
        conn.close()


def status(base: str) -> None:
    from governor import ctl

    ctl.main(["--dcs-url", f"127.0.0.1:{ETCD_PORT}", "--scope", "demo", "--dcs-api", "3", "list"])


def stop(base: str) -> None:
    pids = []
    for name in NODES:
        pid = pid_alive(os.path.join(base, name, "governor.pid"))
        if pid:
            os.kill(pid, signal.SIGTERM)
            pids.append((name, pid))
    for name, _pid in pids:
        deadline = time.monotonic() + 60
        while pid_alive(os.path.join(base, name, "governor.pid")) and time.monotonic() < deadline:
            time.sleep(0.2)
        print(f"stopped governor {name}")
    pid = pid_alive(os.path.join(base, "haproxy.pid"))
    if pid:
        os.kill(pid, signal.SIGTERM)
        print("stopped haproxy")
    pid = pid_alive(os.path.join(base, "etcd.pid"))
    if pid:
        os.kill(pid, signal.SIGTERM)
        while pid_alive(os.path.join(base, "etcd.pid")):
            time.sleep(0.2)
        print("stopped etcd")
    # A postmaster whose governor was killed by hand is stopped here too.
    for name in NODES:
        pid = pid_alive(os.path.join(base, name, "data", "postmaster.pid"))
        if pid:
            os.kill(pid, signal.SIGINT)
            print(f"stopped PostgreSQL of {name}")


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("command", choices=("start", "status", "stop", "clean"))
    p.add_argument("--dir", default="/tmp/governor-demo")
    args = p.parse_args()
    base = os.path.abspath(args.dir)
    if args.command == "start":
        start(base)
    elif args.command == "status":
        status(base)
    else:
        stop(base)
        if args.command == "clean":
            shutil.rmtree(base, ignore_errors=True)
            print(f"removed {base}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
