"""A booted Debian 12 with a real systemd (systemd-nspawn), for system tests.

The root file system is built once with debootstrap (PostgreSQL 15 and governor's Python
dependencies from Debian's archive) and cached; every boot runs it with --volatile=overlay, so
nothing a test does persists. governor comes from the working tree through read-only bind mounts
(the package issue will switch this to installing the .deb). The container shares the host's
network, so it reaches the test etcd on the host's loopback.
"""
from __future__ import annotations

import hashlib
import os
import shutil
import signal
import subprocess
from typing import List, Optional, Sequence

import yaml

from tests.harness import (
    REPLICATION_PASSWORD,
    REPO,
    SUPERUSER_PASSWORD,
    _processes,
    child_pids,
    cmdline,
    free_port,
    wait_until,
)

CACHE = os.environ.get("GOVERNOR_TEST_CACHE", "/var/cache/governor-test")
PACKAGES = ["systemd", "systemd-sysv", "dbus", "libpam-systemd", "polkitd", "procps", "postgresql-15",
            "python3-psycopg2", "python3-etcd", "python3-yaml", "python3-sdnotify", "python3-daemon",
            "python3-prometheus-client"]
MIRROR = "http://deb.debian.org/debian"


# Debian 13 carries PostgreSQL 17 and Python 3.13: the same .deb must install there too.
TRIXIE_PACKAGES = [p.replace("postgresql-15", "postgresql-17") for p in PACKAGES]


def rootfs(release: str = "bookworm", packages: Optional[List[str]] = None, as_apt_leaves_it: bool = False,
           to_install: Sequence[str] = ()) -> str:
    """Path of a cached root file system of `release`, built on first use. By default no default
    PostgreSQL cluster or etcd starts at boot (the system tests run their own). With
    `as_apt_leaves_it`, a host as an operator's: Debian's 15/main starts at boot, and
    `to_install` waits in apt's cache (with apt's lists) for an `apt install` that needs no
    network and runs the packages' own maintainer scripts (etcd-server starts its etcd)."""
    packages = packages or PACKAGES
    key = hashlib.sha256(" ".join([*packages, str(as_apt_leaves_it), *to_install]).encode()).hexdigest()[:12]
    path = os.path.join(CACHE, f"{release}-{key}")
    if os.path.exists(os.path.join(path, ".complete")):
        return path
    shutil.rmtree(path, ignore_errors=True)
    os.makedirs(CACHE, exist_ok=True)
    subprocess.run(["debootstrap", "--variant=minbase", f"--include={','.join(packages)}", release, path,
                    MIRROR], check=True, capture_output=True)
    if as_apt_leaves_it:
        resolv = os.path.join(path, "etc/resolv.conf")
        kept = open(resolv, "rb").read() if os.path.isfile(resolv) and not os.path.islink(resolv) else None
        shutil.copy("/etc/resolv.conf", resolv + ".download")
        os.replace(resolv + ".download", resolv)
        try:
            for cmd in (["apt-get", "update", "-q"],
                        ["apt-get", "install", "-q", "-y", "--download-only", *to_install]):
                subprocess.run(["chroot", path, *cmd], check=True, capture_output=True,
                               env={"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "DEBIAN_FRONTEND": "noninteractive"})
        finally:    # the hosts have no name server on their LAN: a lookup must fail at once
            with open(resolv, "wb") as fh:
                fh.write(kept or b"")
        # An operator answers apt's "Do you want to continue?"; a test has no terminal to.
        with open(os.path.join(path, "etc/apt/apt.conf.d/90-test-assume-yes"), "w") as fh:
            fh.write('APT::Get::Assume-Yes "true";\n')
    else:
        for unit in ("postgresql.service", "etcd.service"):
            link = os.path.join(path, "etc/systemd/system", unit)
            if not os.path.lexists(link):
                os.symlink("/dev/null", link)
    open(os.path.join(path, ".complete"), "w").close()
    return path


def upgraded_rootfs() -> str:
    """A Debian 12 host with PostgreSQL 15 and pgBackRest, then upgraded to Debian 13 the way apt
    does it: sources switched to trixie, `apt full-upgrade` (postgresql-15 stays, obsolete but
    installed; pgbackrest is upgraded), and `apt install postgresql-17`. Built from
    rootfs("bookworm") once and cached."""
    base = rootfs("bookworm")
    path = base + "-pgbackrest-to-trixie"
    if os.path.exists(os.path.join(path, ".complete")):
        return path
    shutil.rmtree(path, ignore_errors=True)
    subprocess.run(["cp", "-a", base, path], check=True)
    os.remove(os.path.join(path, ".complete"))
    resolv = os.path.join(path, "etc/resolv.conf")
    if os.path.islink(resolv) or os.path.exists(resolv):
        os.remove(resolv)
    shutil.copy("/etc/resolv.conf", resolv)
    env = {"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "DEBIAN_FRONTEND": "noninteractive"}
    keep = ["-o", "Dpkg::Options::=--force-confold", "-o", "Dpkg::Options::=--force-confdef"]
    trixie = ["sh", "-c", f"echo 'deb {MIRROR} trixie main' > /etc/apt/sources.list"]
    for cmd in (["apt-get", "update", "-q"], ["apt-get", "install", "-q", "-y", "pgbackrest"], trixie,
                ["apt-get", "update", "-q"], ["apt-get", "full-upgrade", "-q", "-y", *keep],
                ["apt-get", "install", "-q", "-y", *keep, "postgresql-17"], ["apt-get", "clean"]):
        done = subprocess.run(["chroot", path, *cmd], capture_output=True, text=True, env=env, timeout=1800)
        if done.returncode != 0:
            raise RuntimeError(f"{' '.join(cmd)} in the upgraded root failed: {done.stderr.strip()[-500:]}")
    with open(resolv, "w"):
        pass
    open(os.path.join(path, ".complete"), "w").close()
    return path


def container_uid(root: str, user: str) -> tuple:
    with open(os.path.join(root, "etc/passwd")) as fh:
        for line in fh:
            fields = line.split(":")
            if fields[0] == user:
                return int(fields[2]), int(fields[3])
    raise KeyError(user)


class Machine:
    """One booted container; `run()` executes a command inside it."""

    def __init__(self, root: str, binds: List[tuple], ro_binds: List[tuple], log_path: str,
                 extra: Sequence[str] = (), volatile: bool = True):
        """`volatile`: the container writes to a memory layer over `root`, gone when it stops;
        otherwise `root` is its own disk (for a host that boots again with its data)."""
        args = ["systemd-nspawn", "-D", root, "-b", "--register=no", "--keep-unit", "--console=passive",
                *(["--volatile=overlay"] if volatile else []), "--quiet", *extra]
        args += [f"--bind={src}:{dst}" for src, dst in binds]
        args += [f"--bind-ro={src}:{dst}" for src, dst in ro_binds]
        self.log = open(log_path, "ab")
        self.proc = subprocess.Popen(args, stdout=self.log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                     start_new_session=True)
        _processes.append(self.proc)
        self.init_pid = wait_until(self._find_init, 30, "the container's systemd")
        wait_until(lambda: self.run("systemctl", "is-system-running", check=False).stdout.strip()
                   in ("running", "degraded"), 60, "the container to boot")

    def _find_init(self) -> Optional[int]:
        todo = [self.proc.pid]
        while todo:
            pid = todo.pop()
            for child in child_pids(pid):
                if cmdline(child).split(" ")[0].endswith("systemd"):
                    return child
                todo.append(child)
        return None

    def run(self, *cmd: str, check: bool = True, timeout: float = 60) -> subprocess.CompletedProcess:
        result = subprocess.run(["nsenter", "-t", str(self.init_pid), "-a", *cmd], capture_output=True, text=True,
                                timeout=timeout)
        if check and result.returncode != 0:
            raise AssertionError(f"{' '.join(cmd)} failed ({result.returncode}): {result.stdout}{result.stderr}")
        return result

    def install_config(self, path: str, cfg: dict) -> None:
        """Write a governor YAML file inside the container as the packages lay them out:
        root-owned, group postgres, mode 0640 (in a 0750 directory when it creates one)."""
        text = yaml.safe_dump(cfg)
        directory = os.path.dirname(path)
        self.run("sh", "-c", f"test -d {directory} || install -d -m 0750 -g postgres {directory}\n"
                             f"cat > {path} <<'EOF'\n{text}EOF\n"
                             f"chgrp postgres {path} && chmod 0640 {path}")

    def journal(self, unit: str, priority: str = "debug") -> str:
        return self.run("journalctl", "-u", unit, "-p", priority, "--no-pager", "-o", "cat", check=False).stdout

    def poweroff(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)   # nspawn asks the container's systemd to shut down
            try:
                self.proc.wait(60)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)


def node_config(etcd_endpoint: str, scope: str, name: str, data_dir: str, **top: object) -> tuple:
    """A governor configuration for a member inside a container (which shares the host's network,
    so every port is chosen free on the host): (config dict, ports)."""
    ports = {key: free_port() for key in ("pg", "api", "metrics")}
    cfg = {
        "loop_wait": 2, "retry_timeout": 3,
        "etcd": {"scope": scope, "ttl": 10, "host": etcd_endpoint, "api": 3},
        "restapi": {"listen": f"127.0.0.1:{ports['api']}"},
        "metrics": {"listen": f"127.0.0.1:{ports['metrics']}"},
        "postgresql": {"name": name, "listen": f"127.0.0.1:{ports['pg']}", "data_dir": data_dir,
                       "replication": {"password": REPLICATION_PASSWORD},
                       "superuser": {"password": SUPERUSER_PASSWORD},
                       "parameters": {"shared_buffers": "16MB"}},
    }
    cfg.update(top)
    return cfg, ports


def governor_launcher(path: str) -> str:
    """The /usr/bin/governor a package would install."""
    with open(path, "w") as fh:
        fh.write("#!/usr/bin/python3\nimport sys\nfrom governor.cli import main\nsys.exit(main())\n")
    os.chmod(path, 0o755)
    return path


def unit_path(name: str) -> str:
    return os.path.join(REPO, "systemd", name)
