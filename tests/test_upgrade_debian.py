"""A Debian 12 host upgraded to Debian 13 the way apt does it (postgresql-15 kept, postgresql-17
installed), running a PostgreSQL 15 cluster under governor from the .deb: `governorctl upgrade
--to 17 --check` passes on the real path (pg_upgrade --check from 15 to 17 against the live
leader), and refuses an extension PostgreSQL 17 no longer has, naming it. Nothing changes."""
from __future__ import annotations

import json
import os
import subprocess
import threading
import time
from typing import Dict, Optional

import psycopg2
import pytest
import yaml

from tests import debs, harness, system
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
    return ctl_of(m, "a", *args)


def ctl_of(m: system.Machine, name: str, *args: str):
    return m.run("governorctl", "-c", f"/etc/governor/{name}.d", *args, check=False, timeout=400)


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

        blocked = ctl(m, "upgrade", "--to", "17", "--check")
        assert blocked.returncode == 1
        for name in NAMES:      # after the upgrade, a bin_dir of 15 in the files would keep governor from starting
            assert f"  - {name}: postgresql.bin_dir is set in its files: remove it" in blocked.stdout, blocked.stdout
        for name in NAMES:      # as README says: the files without it, governor restarted, PostgreSQL left running
            cfg = yaml.safe_load(m.run("cat", f"/etc/governor/{name}.d/local.yml").stdout)
            del cfg["postgresql"]["bin_dir"]
            m.install_config(f"/etc/governor/{name}.d/local.yml", cfg)
            m.run("sh", "-c", f"touch /run/governor-{name}/restart-keep-postgres && systemctl restart governor@{name}")
        passed = wait_until(lambda: (lambda done: done if done.returncode == 0 else None)(
            ctl(m, "upgrade", "--to", "17", "--check")), 30, "the checks to pass")
        assert "upgrade to PostgreSQL 17: every check passed (checked by a)" in passed.stdout

        # b receives everything but replays far behind (its replay paused, as a long query on a
        # standby can hold it): stopped now, it would stop short of the leader's last checkpoint
        # and could not link its files. The checks name it; nothing changes.
        sql(m, ports["b"]["pg"], "SELECT pg_wal_replay_pause()")
        sql(m, ports["a"]["pg"], "CREATE TABLE behind AS SELECT g, md5(g::text) FROM generate_series(1, 400000) g")
        lagging = wait_until(lambda: (lambda done: done if done.returncode == 1 else None)(
            ctl(m, "upgrade", "--to", "17", "--check")), 30, "the checks to name b's replay")
        assert "  - b: replays " in lagging.stdout, lagging.stdout
        assert role(m, ports["a"]["pg"]) == "primary" and role(m, ports["b"]["pg"]) == "replica"
        sql(m, ports["b"]["pg"], "SELECT pg_wal_replay_resume()")
        wait_until(lambda: ctl(m, "upgrade", "--to", "17", "--check").returncode == 0, 30, "the checks to pass again")

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


def deploy(m: system.Machine, etcd, scope: str, names, prefix: str, archive: Optional[dict] = None) -> Dict[str, dict]:
    """A PostgreSQL 15 cluster as a Debian 12 host made it, then upgraded to 13: names[0]
    bootstraps 15 (the files name its binaries: with no data yet governor would take the newest,
    17), the others stream from it; then, as README's "Upgrading" says, each member's files drop
    bin_dir and governor restarts keeping PostgreSQL running. The members' ports by name."""
    ports, configs = {}, {}
    for name in names:
        cfg, ports[name] = system.node_config(etcd.endpoint, scope, name, f"/var/lib/postgresql/{prefix}-{name}",
                                              loop_wait=1)
        cfg["postgresql"]["bin_dir"] = "/usr/lib/postgresql/15/bin"
        if archive:
            cfg["postgresql"]["archive"] = archive
        configs[name] = cfg
        m.install_config(f"/etc/governor/{name}.d/local.yml", cfg)
    m.run("systemctl", "start", f"governor@{names[0]}")
    wait_until(lambda: role(m, ports[names[0]]["pg"]) == "primary", 90, f"{names[0]} to bootstrap")
    m.run("systemctl", "start", *(f"governor@{n}" for n in names[1:]))
    wait_until(lambda: all(role(m, ports[n]["pg"]) == "replica" for n in names[1:]), 120, "the replicas to stream")
    for name in names:
        del configs[name]["postgresql"]["bin_dir"]
        m.install_config(f"/etc/governor/{name}.d/local.yml", configs[name])
        m.run("sh", "-c", f"touch /run/governor-{name}/restart-keep-postgres && systemctl restart governor@{name}")
    return ports


def checks_pass(m: system.Machine, leader: str) -> None:
    """Once the restarted members' keys say they no longer set bin_dir."""
    wait_until(lambda: m.run("governorctl", "-c", f"/etc/governor/{leader}.d", "upgrade", "--to", "17", "--check",
                             check=False, timeout=300).returncode == 0, 30, "the checks to pass")


def journals(m: system.Machine, names) -> None:
    for name in names:
        said = [line for line in m.journal(f"governor@{name}").splitlines() if not line.startswith("\t")]
        print(f"--- governor@{name}:\n" + "\n".join(said[-60:]))


class Writer(threading.Thread):
    """Inserts a numbered row into the leader every 20 ms and keeps what was acknowledged, and the
    longest time between two acknowledged writes."""

    def __init__(self, port: int):
        super().__init__(daemon=True)
        self.port, self.acked, self.stopped = port, [], threading.Event()
        self.gap, self._last = 0.0, None

    def run(self) -> None:
        n, conn = 0, None
        while not self.stopped.is_set():
            n += 1
            try:
                if conn is None or conn.closed:
                    conn = psycopg2.connect(host="127.0.0.1", port=self.port, user="postgres", dbname="postgres",
                                            password=harness.SUPERUSER_PASSWORD, connect_timeout=1)
                    conn.autocommit = True
                with conn.cursor() as cur:
                    cur.execute("INSERT INTO upgrade_writes VALUES (%s)", (n,))
                now = time.monotonic()
                if self._last is not None:
                    self.gap = max(self.gap, now - self._last)
                self._last = now
                self.acked.append(n)
            except psycopg2.Error:
                conn = None
                time.sleep(0.05)
            self.stopped.wait(0.02)


def test_governorctl_upgrade_moves_the_cluster_from_15_to_17_keeping_every_write(upgraded, etcd):
    m = upgraded
    names = ("x", "y", "z")
    try:
        # WAL archived with pgBackRest (installed on Debian 12, upgraded with the host), a local
        # repository: after pg_upgrade the stanza must follow the new cluster, or archiving stops.
        m.run("sh", "-euc", "install -d -o postgres -g postgres /var/lib/pgbackrest-up /var/log/pgbackrest-up && "
                            "printf '[global]\\nrepo1-path=/var/lib/pgbackrest-up\\nlog-path=/var/log/pgbackrest-up\\n"
                            "start-fast=y\\n' > /etc/pgbackrest-up.conf")
        ports = deploy(m, etcd, f"upgrading{os.getpid()}", names, "up",
                       archive={"pgbackrest": {"stanza": "up", "config": "/etc/pgbackrest-up.conf"}})
        wait_until(lambda: "pgBackRest stanza up created and checked" in m.journal("governor@x"), 120,
                   "the stanza on 15")
        sql(m, ports["x"]["pg"], "CREATE TABLE upgrade_writes (n int PRIMARY KEY)")
        sql(m, ports["x"]["pg"], "CREATE TABLE bulk AS SELECT g AS id, md5(g::text) AS payload "
                                 "FROM generate_series(1, 200000) AS g")
        wait_until(lambda: all(sql(m, ports[n]["pg"], "SELECT count(*) FROM bulk") == ["200000"] for n in ("y", "z")),
                   60, "the replicas to have the table")
        checks_pass(m, "x")

        writer = Writer(ports["x"]["pg"])
        watcher = harness.WritableCount([("127.0.0.1", ports[n]["pg"]) for n in names], harness.SUPERUSER_PASSWORD)
        writer.start()
        watcher.start()
        time.sleep(2)
        began = time.monotonic()
        done = m.run("governorctl", "-c", "/etc/governor/x.d", "upgrade", "--to", "17", check=False, timeout=900)
        took = time.monotonic() - began
        assert done.returncode == 0, (done.stdout, done.stderr)
        assert "done: every member runs PostgreSQL 17" in done.stdout, done.stdout
        time.sleep(2)
        writer.stopped.set()
        watcher.stopped.set()
        writer.join(10)
        watcher.join(10)

        assert watcher.most <= 1, "two members accepted writes at once"
        for name in names:
            assert sql(m, ports[name]["pg"], "SHOW server_version_num")[0].startswith("17"), name
        assert role(m, ports["x"]["pg"]) == "primary"
        wait_until(lambda: all(role(m, ports[n]["pg"]) == "replica" for n in ("y", "z")), 60, "the replicas on 17")
        have = {int(v) for v in sql(m, ports["x"]["pg"], "SELECT n FROM upgrade_writes")}
        assert set(writer.acked) <= have, f"acknowledged writes lost: {sorted(set(writer.acked) - have)[:10]}"
        assert sql(m, ports["x"]["pg"], "SELECT count(*) FROM bulk") == ["200000"]
        end = sql(m, ports["x"]["pg"], "SELECT pg_current_wal_lsn()")[0]
        wait_until(lambda: all(sql(m, ports[n]["pg"], f"SELECT pg_last_wal_replay_lsn() >= '{end}'") == ["t"]
                               for n in ("y", "z")), 60, "the replicas to replay everything")
        for name in names:
            assert m.run("test", "-f", f"/var/lib/postgresql/up-{name}.pg15/PG_VERSION", check=False).returncode == 0, \
                f"{name}'s old data directory is kept"
        # the replicas did not copy the table: their new files are their old ones, hard-linked
        # (PostgreSQL's method for standbys after pg_upgrade --link, over governor's API)
        relation = sql(m, ports["x"]["pg"], "SELECT pg_relation_filepath('bulk')")[0]
        for name in ("y", "z"):
            data = f"/var/lib/postgresql/up-{name}"
            same = m.run("sh", "-c", f"[ {data}/{relation} -ef {data}.pg15/{relation} ]", check=False)
            assert same.returncode == 0, f"{name}'s copy of the table is not its own old file: it was copied"
            assert "received from x" in m.journal(f"governor@{name}"), name
        # the stanza follows the cluster: archiving works on 17, the repository knows both systems
        wait_until(lambda: "pgBackRest stanza up upgraded and checked" in m.journal("governor@x"), 120,
                   "the stanza upgraded")
        info = json.loads(m.run("runuser", "-u", "postgres", "--", "pgbackrest", "--config=/etc/pgbackrest-up.conf",
                                "--stanza=up", "info", "--output=json").stdout)
        assert [db["version"] for db in info[0]["db"]] == ["15", "17"], info[0]["db"]
        checked = m.run("runuser", "-u", "postgres", "--", "pgbackrest", "--config=/etc/pgbackrest-up.conf",
                        "--stanza=up", "--pg1-path=/var/lib/postgresql/up-x", f"--pg1-port={ports['x']['pg']}",
                        "--pg1-socket-path=/var/run/postgresql", "check", check=False, timeout=120)
        assert checked.returncode == 0, checked.stdout + checked.stderr
        # pg_upgrade from 15 carries no statistics: the leader rebuilt them in stages, in the background
        wait_until(lambda: sql(m, ports["x"]["pg"], "SELECT count(*) > 0 FROM pg_stats WHERE tablename = 'bulk'")
                   == ["t"], 60, "the planner's statistics on the new cluster")
        cleaned = m.run("governorctl", "-c", "/etc/governor/x.d", "upgrade", "--cleanup", check=False, timeout=300)
        assert cleaned.returncode == 0, (cleaned.stdout, cleaned.stderr)
        for name in names:
            assert f"{name}: removed /var/lib/postgresql/up-{name}.pg15" in cleaned.stdout, cleaned.stdout
            assert m.run("test", "-e", f"/var/lib/postgresql/up-{name}.pg15", check=False).returncode == 1
        assert sql(m, ports["x"]["pg"], "SELECT count(*) FROM bulk") == ["200000"], "the hard links' data lives on"
        print(f"upgrade 15 -> 17 of 3 members: {took:.1f}s in all; longest write gap {writer.gap:.1f}s; "
              f"{len(writer.acked)} writes acknowledged, none lost\n{done.stdout}")
    except AssertionError:
        journals(m, names)
        raise
    finally:
        m.run("systemctl", "stop", *(f"governor@{n}" for n in names), check=False)


def test_the_leaders_governor_killed_during_pg_upgrade_resumes_and_finishes(upgraded, etcd):
    """systemd kills only governor's own process (KillMode=process): pg_upgrade goes on. The
    governor systemd starts again waits for it, starts the attempt afresh from the old cluster
    (nothing of the new one had started) and finishes; nothing written is lost."""
    m = upgraded
    names = ("p", "q")
    try:
        ports = deploy(m, etcd, f"resuming{os.getpid()}", names, "re")
        sql(m, ports["p"]["pg"], "CREATE TABLE kept AS SELECT g AS id FROM generate_series(1, 300000) AS g")
        checks_pass(m, "p")
        follow = subprocess.Popen(["nsenter", "-t", str(m.init_pid), "-a", "governorctl", "-c", "/etc/governor/p.d",
                                   "upgrade", "--to", "17"], stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                  text=True)
        wait_until(lambda: "bin/pg_upgrade --link" in m.journal("governor@p"), 60, "pg_upgrade to run")
        m.run("systemctl", "kill", "--signal=SIGKILL", "--kill-whom=main", "governor@p")
        out, _ = follow.communicate(timeout=300)
        assert follow.returncode == 0, out
        said = m.journal("governor@p")
        assert said.count("bin/pg_upgrade --link") >= 2, "pg_upgrade ran again after the restart"
        print([line for line in said.splitlines() if "still runs" in line or "not shut down cleanly" in line])
        for name in names:
            assert sql(m, ports[name]["pg"], "SHOW server_version_num")[0].startswith("17"), name
        assert sql(m, ports["p"]["pg"], "SELECT count(*) FROM kept") == ["300000"]
        wait_until(lambda: role(m, ports["q"]["pg"]) == "replica", 60, "q on 17")
        print(f"resumed after governor was killed during pg_upgrade:\n{out}")
    except AssertionError:
        journals(m, names)
        raise
    finally:
        m.run("systemctl", "stop", *(f"governor@{n}" for n in names), check=False)


def test_a_replica_whose_host_crashed_during_the_upgrade_clones_the_leader_when_it_is_back(upgraded, etcd):
    """One replica's host dies (every process at once) as the upgrade begins: the others go on to
    17 without it; when it comes back, its old directory (not stopped where the leader's was:
    nothing to link) is set aside and it clones the leader, on 17, with every row."""
    m = upgraded
    names = ("f", "g", "h")
    try:
        ports = deploy(m, etcd, f"crashing{os.getpid()}", names, "cr")
        sql(m, ports["f"]["pg"], "CREATE TABLE kept AS SELECT g AS id FROM generate_series(1, 100000) AS g")
        wait_until(lambda: sql(m, ports["h"]["pg"], "SELECT count(*) FROM kept") == ["100000"], 60, "h to have it")
        checks_pass(m, "f")
        follow = subprocess.Popen(["nsenter", "-t", str(m.init_pid), "-a", "governorctl", "-c", "/etc/governor/f.d",
                                   "upgrade", "--to", "17"], stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                  text=True)
        wait_until(lambda: "upgrade to PostgreSQL 17: requested" in m.journal("governor@f") or
                   "upgrade to PostgreSQL 17: stopped" in m.journal("governor@f"), 60, "the upgrade to begin")
        # h's host goes down: governor and PostgreSQL killed at once, and nothing restarts them
        m.run("systemctl", "kill", "--signal=SIGKILL", "--kill-whom=all", "governor@h")
        m.run("systemctl", "stop", "governor@h")
        out, _ = follow.communicate(timeout=300)
        assert follow.returncode == 0, out
        assert "done: every member runs PostgreSQL 17" in out, out
        sql(m, ports["f"]["pg"], "INSERT INTO kept VALUES (100001)")

        m.run("systemctl", "start", "governor@h")      # the host is back
        wait_until(lambda: sql(m, ports["h"]["pg"], "SELECT current_setting('server_version_num')::int >= 170000 "
                               "AND pg_is_in_recovery()") == ["t"], 120, "h on 17 as a replica")
        wait_until(lambda: sql(m, ports["h"]["pg"], "SELECT count(*) FROM kept") == ["100001"], 60, "h to catch up")
        said = m.journal("governor@h")
        assert "cannot link this member's files into the new cluster" in said, "h stopped elsewhere: no link"
        assert m.run("test", "-f", "/var/lib/postgresql/cr-h.pg15/PG_VERSION", check=False).returncode == 0, \
            "h's old data directory is kept"
        assert role(m, ports["f"]["pg"]) == "primary" and role(m, ports["g"]["pg"]) == "replica"
        print(f"a replica down during the upgrade, back after it:\n{out}")
    except AssertionError:
        journals(m, names)
        raise
    finally:
        m.run("systemctl", "stop", *(f"governor@{n}" for n in names), check=False)


def test_debians_own_layout_moves_to_17_with_major_in_the_settings(upgraded, etcd):
    """PostgreSQL run as Debian's unit (README's "PostgreSQL as the distribution's unit"), with
    `{major}` in place of the version in data_dir, config_dir and systemd_unit: the upgrade makes
    17/NAME beside 15/NAME as pg_upgradecluster would (configuration copied, start.conf manual),
    runs postgresql@17-NAME, keeps 15/NAME until --cleanup, and a governor restarted afterwards
    still runs 17 from the same files."""
    m = upgraded
    names = ("d1", "d2")
    ports: Dict[str, dict] = {}
    m.run("cp", "/usr/share/doc/governor/examples/50-governor-postgresql.rules", "/etc/polkit-1/rules.d/")
    try:
        for name in names:
            cfg, ports[name] = system.node_config(etcd.endpoint, f"debianlayout{os.getpid()}", name,
                                                  f"/var/lib/postgresql/{{major}}/{name}", loop_wait=1)
            cfg["postgresql"].update(config_dir=f"/etc/postgresql/{{major}}/{name}",
                                     systemd_unit=f"postgresql@{{major}}-{name}")
            m.run("pg_createcluster", "15", name, "-p", str(ports[name]["pg"]), "--start-conf", "manual")
            m.install_config(f"/etc/governor/{name}.d/local.yml", cfg)
        m.run("sh", "-c", "rm -rf /var/lib/postgresql/15/d2/*")      # README: the others clone the leader
        m.run("systemctl", "start", "governor@d1")
        wait_until(lambda: role(m, ports["d1"]["pg"]) == "primary", 90, "d1 to adopt 15/d1")
        m.run("systemctl", "start", "governor@d2")
        wait_until(lambda: role(m, ports["d2"]["pg"]) == "replica", 120, "d2 to clone into 15/d2")
        wait_until(lambda: m.run("systemctl", "is-active", "postgresql@15-d2", check=False).stdout.strip() == "active",
                   60, "postgresql@15-d2 active")
        sql(m, ports["d1"]["pg"], "CREATE TABLE kept AS SELECT g AS id FROM generate_series(1, 100000) AS g")
        checks_pass(m, "d1")

        done = m.run("governorctl", "-c", "/etc/governor/d1.d", "upgrade", "--to", "17", check=False, timeout=600)
        assert done.returncode == 0 and "done: every member runs PostgreSQL 17" in done.stdout, done.stdout
        for name in names:
            assert sql(m, ports[name]["pg"], "SHOW server_version_num")[0].startswith("17"), name
            unit = f"postgresql@17-{name}"
            wait_until(lambda: m.run("systemctl", "is-active", unit, check=False).stdout.strip() == "active",  # noqa: B023
                       60, f"{unit} active")
            assert m.run("systemctl", "is-active", f"postgresql@15-{name}", check=False).stdout.strip() != "active"
            for version in ("15", "17"):     # neither starts at boot: governor starts the cluster
                assert m.run("cat", f"/etc/postgresql/{version}/{name}/start.conf").stdout.split()[-1] == "manual"
            assert m.run("test", "-f", f"/var/lib/postgresql/15/{name}/PG_VERSION", check=False).returncode == 0
        listed = m.run("pg_lsclusters", "-h").stdout
        assert any(line.split()[:4] == ["17", "d1", str(ports["d1"]["pg"]), "online"]
                   for line in listed.splitlines()), listed
        wait_until(lambda: role(m, ports["d2"]["pg"]) == "replica", 60, "d2 on 17")
        assert sql(m, ports["d2"]["pg"], "SELECT count(*) FROM kept") == ["100000"]
        assert "linked from this member's own" in m.journal("governor@d2"), "d2 linked its files"

        # the same files, read again: 17 is this member's version now
        before = m.run("systemctl", "show", "-p", "MainPID", "--value", "governor@d1").stdout.strip()
        m.run("sh", "-c", "touch /run/governor-d1/restart-keep-postgres && systemctl restart governor@d1")

        def d1_listed():
            members = json.loads(ctl_of(m, "d1", "list", "--format", "json").stdout or "{}").get("members", [])
            return [x for x in members if x.get("member") == "d1" or x.get("name") == "d1"]
        wait_until(lambda: m.run("systemctl", "show", "-p", "MainPID", "--value", "governor@d1").stdout.strip()
                   not in ("", "0", before), 30, "a new governor@d1")
        time.sleep(4)
        assert role(m, ports["d1"]["pg"]) == "primary"
        assert m.run("systemctl", "is-active", "postgresql@17-d1", check=False).stdout.strip() == "active"
        assert m.run("systemctl", "is-active", "postgresql@15-d1", check=False).stdout.strip() != "active"
        listed_after = d1_listed()
        assert listed_after and str(listed_after[0].get("pg_version", "")).startswith("17"), listed_after

        cleaned = m.run("governorctl", "-c", "/etc/governor/d1.d", "upgrade", "--cleanup", check=False, timeout=300)
        assert cleaned.returncode == 0, cleaned.stdout + cleaned.stderr
        for name in names:
            assert m.run("test", "-e", f"/var/lib/postgresql/15/{name}", check=False).returncode == 1, name
            assert m.run("test", "-e", f"/etc/postgresql/15/{name}", check=False).returncode == 1, name
        assert sql(m, ports["d1"]["pg"], "SELECT count(*) FROM kept") == ["100000"]
    except AssertionError:
        journals(m, names)
        raise
    finally:
        m.run("systemctl", "stop", *(f"governor@{n}" for n in names), check=False)
