"""Callbacks (governor/callbacks.py): what the configuration accepts, which change of
PostgreSQL's state calls which callback, and how a real process is run: its arguments, its
clean environment, its output and exit status in the log, the timeout that kills its whole
process group, and a newer callback of a kind cancelling an older one still running."""
from __future__ import annotations

import logging
import os
import stat
import time

import pytest

from governor import callbacks, config
from governor.settings import CallbacksConfig

PG = {"name": "pg1", "data_dir": "/tmp/none", "bin_dir": "/usr/lib/postgresql/15/bin",
      "replication": {"password": "p"}}


def script(tmp_path, name: str, body: str, mode: int = 0o755) -> str:
    path = tmp_path / name
    path.write_text("#!/bin/sh\n" + body + "\n")
    path.chmod(mode)
    return str(path)


def validated(section) -> config.Config:
    return config.validate({"etcd": {"scope": "s"}, "postgresql": PG, "callbacks": section}, {}, "governor.yml")


def test_a_path_or_a_list_is_accepted_with_a_timeout(tmp_path):
    hook = script(tmp_path, "hook", "exit 0")
    cfg = validated({"on_role_change": hook, "pre_promote": [hook, "--check", "x"], "timeout": 5})
    assert cfg.callbacks.command("on_role_change") == (hook,)
    assert cfg.callbacks.command("pre_promote") == (hook, "--check", "x")
    assert cfg.callbacks.command("on_start") is None and cfg.callbacks.timeout == 5


@pytest.mark.parametrize("value,said", [
    ("hook.sh", "expected an absolute path"),
    ("/nonexistent/hook", "/nonexistent/hook: no such file"),
    ("NOT_EXECUTABLE", "not executable"),
    ([], "expected the absolute path of an executable"),
    (["/bin/true", 3], "expected the absolute path of an executable"),
    ("/bin/true\nrm -rf /", "expected the absolute path of an executable"),
    ({"run": "/bin/true"}, "expected the absolute path of an executable"),
])
def test_a_bad_callback_is_refused_naming_file_and_key(tmp_path, value, said):
    if value == "NOT_EXECUTABLE":
        value = script(tmp_path, "plain", "exit 0", mode=0o644)
    with pytest.raises(config.ConfigError) as err:
        validated({"on_start": value})
    assert "governor.yml: callbacks.on_start: " in str(err.value) and said in str(err.value)


@pytest.mark.parametrize("section,key", [
    ({"on_promote": "/bin/true"}, "callbacks.on_promote: unknown setting"),
    ({"timeout": 0}, "callbacks.timeout: expected 1 to 600 seconds"),
    ({"timeout": "30s"}, "callbacks.timeout: expected a number"),
    ("/bin/true", "callbacks: expected a mapping"),
])
def test_a_bad_section_is_refused(section, key):
    with pytest.raises(config.ConfigError) as err:
        validated(section)
    assert key in str(err.value)


@pytest.mark.parametrize("before,after,called", [
    (None, "primary", None),                 # first pass: governor (re)started beside a running server
    ("down", "replica", ("on_start", "replica")),
    ("down", "primary", ("on_start", "primary")),
    ("primary", "down", ("on_stop", "primary")),
    ("replica", "primary", ("on_role_change", "primary")),
    ("primary", "replica", ("on_role_change", "replica")),   # a demotion: stop and start as replica in one pass
    ("replica", "replica", None),
    ("replica", None, None),                 # running, not answering yet: nothing known
])
def test_which_change_calls_which_callback(before, after, called):
    assert callbacks.transition(before, after) == called


def test_a_server_back_in_another_role_reports_a_role_change():
    """A switchover's old primary stops, then starts as a replica: on_stop primary, then
    on_role_change replica (what a VIP or pgbouncer script acts on), not on_start."""
    assert callbacks.transition("primary", "down", "primary") == ("on_stop", "primary")
    assert callbacks.transition("down", "replica", "primary") == ("on_role_change", "replica")
    assert callbacks.transition("down", "replica", "replica") == ("on_start", "replica")


@pytest.fixture
def runner(tmp_path):
    failed = []
    made = callbacks.Runner("pg1", lambda: "main", lambda: str(tmp_path), failed=failed.append)
    made.failures = failed
    return made


def test_arguments_environment_output_and_status(tmp_path, runner, caplog, monkeypatch):
    monkeypatch.setenv("NOTIFY_SOCKET", "/run/systemd/notify")
    monkeypatch.setenv("PGPASSWORD", "secret-in-env")
    out = tmp_path / "seen"
    hook = script(tmp_path, "hook", f'echo "$@" > {out}; env >> {out}; echo "said on stdout"; echo oops >&2; exit 3')
    cfg = CallbacksConfig(commands=(("on_role_change", (hook, "--flag")),), timeout=10)
    with caplog.at_level(logging.INFO, logger="governor"):
        assert runner.wait(cfg, "on_role_change", "primary", 10) == 3
    lines = out.read_text().splitlines()
    assert lines[0] == "--flag on_role_change primary main"
    env = dict(line.split("=", 1) for line in lines[1:] if "=" in line)
    assert "NOTIFY_SOCKET" not in env and "PGPASSWORD" not in env
    assert env["GOVERNOR_ROLE"] == "primary" and env["GOVERNOR_MEMBER"] == "pg1" and env["GOVERNOR_SCOPE"] == "main"
    assert "callback on_role_change (primary) exited 3" in caplog.text and "said on stdout | oops" in caplog.text
    assert runner.failures == ["on_role_change"]


def test_a_callback_past_its_timeout_is_killed_with_what_it_started(tmp_path, runner, caplog):
    pidfile = tmp_path / "child"
    hook = script(tmp_path, "hang", f"sleep 300 & echo $! > {pidfile}; wait")
    cfg = CallbacksConfig(commands=(("before_stop", (hook,)),), timeout=1)
    began = time.monotonic()
    with caplog.at_level(logging.INFO, logger="governor"):
        assert runner.wait(cfg, "before_stop", "primary", 30) is None
    assert time.monotonic() - began < 4
    child = int(pidfile.read_text())
    time.sleep(0.2)
    assert not os.path.exists(f"/proc/{child}") or "Z" in open(f"/proc/{child}/stat").read().split()[2]
    assert "killed after 1s (callbacks.timeout)" in caplog.text and runner.failures == ["before_stop"]


def test_a_newer_callback_of_a_kind_cancels_the_older_one(tmp_path, runner, caplog):
    out = tmp_path / "done"
    hook = script(tmp_path, "slow", f'[ "$2" = replica ] && sleep 30; echo "$2" >> {out}')
    cfg = CallbacksConfig(commands=(("on_role_change", (hook,)),), timeout=60)
    with caplog.at_level(logging.INFO, logger="governor"):
        runner.fire(cfg, "on_role_change", "replica")
        time.sleep(0.5)
        began = time.monotonic()
        assert runner.wait(cfg, "on_role_change", "primary", 60) == 0
        deadline = time.monotonic() + 5
        while "cancelled" not in caplog.text and time.monotonic() < deadline:
            time.sleep(0.05)
    assert time.monotonic() - began < 5
    assert out.read_text().split() == ["primary"]
    assert "callback on_role_change (replica) cancelled" in caplog.text and runner.failures == []


def test_a_flood_of_output_is_read_and_bounded(tmp_path, runner, caplog):
    hook = script(tmp_path, "loud", "head -c 5000000 /dev/zero | tr '\\0' x; echo")
    cfg = CallbacksConfig(commands=(("on_start", (hook,)),), timeout=10)
    with caplog.at_level(logging.INFO, logger="governor"):
        assert runner.wait(cfg, "on_start", "replica", 10) == 0
    said = [r.getMessage() for r in caplog.records if "callback on_start" in r.getMessage()][0]
    assert len(said) < callbacks.OUTPUT_KEEP + 200 and "more bytes]" in said


def test_an_unconfigured_callback_is_nothing_and_a_vanished_one_is_a_failure(tmp_path, runner):
    assert runner.wait(CallbacksConfig(), "pre_promote", "primary", 5) == 0
    gone = script(tmp_path, "gone", "exit 0")
    os.chmod(gone, stat.S_IRUSR)
    os.remove(gone)
    cfg = CallbacksConfig(commands=(("pre_promote", (gone,)),), timeout=5)
    assert runner.wait(cfg, "pre_promote", "primary", 5) is None and runner.failures == ["pre_promote"]


def shipped(name: str) -> str:
    return os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "packaging", "callbacks", name)


def fake(tmp_path, name: str) -> None:
    """A stand-in on PATH that records its arguments."""
    bindir = tmp_path / "bin"
    bindir.mkdir(exist_ok=True)
    script(bindir, name, f'printf "%s\\n" "$@" > {tmp_path}/{name}.args')


def run_example(tmp_path, name: str, *args: str, **env: str):
    import subprocess
    full = {"PATH": f"{tmp_path}/bin:/usr/bin:/bin", "GOVERNOR_MEMBER": "pg2", "GOVERNOR_PG_HOST": "10.0.0.2",
            "GOVERNOR_PG_PORT": "5432", **env}
    return subprocess.run([shipped(name), *args], env=full, capture_output=True, text=True, timeout=10)


def test_the_journal_example_logs_one_line_per_call(tmp_path):
    fake(tmp_path, "logger")
    done = run_example(tmp_path, "journal-log", "on_role_change", "primary", "main")
    assert done.returncode == 0, done.stderr
    said = (tmp_path / "logger.args").read_text().splitlines()
    assert said[:4] == ["-t", "governor-callback", "-p", "daemon.notice"]
    assert said[-1] == "scope main member pg2: on_role_change, now primary (PostgreSQL at 10.0.0.2:5432)"


def test_the_pgbouncer_example_moves_pgbouncer_only_on_the_new_primary(tmp_path):
    """Its settings come as arguments before governor's (`on_role_change: [PATH, --include, FILE,
    --admin, DSN]`): callbacks get no environment of the operator's, and a file under /usr/share
    is not the operator's to edit."""
    fake(tmp_path, "psql")
    include = tmp_path / "governor-primary.ini"
    admin = "host=10.0.0.9 port=6432 dbname=pgbouncer user=admin"
    options = ("--include", str(include), "--admin", admin)
    done = run_example(tmp_path, "pgbouncer-follow-primary", *options, "on_role_change", "replica", "main")
    assert done.returncode == 0 and not include.exists() and not (tmp_path / "psql.args").exists()
    done = run_example(tmp_path, "pgbouncer-follow-primary", *options, "on_role_change", "primary", "main")
    assert done.returncode == 0, done.stderr
    assert include.read_text().splitlines()[-1] == "* = host=10.0.0.2 port=5432"
    assert (tmp_path / "psql.args").read_text().split("\n")[:5] == ["-X", "-q", "-c", "RELOAD", admin]
    wrong = run_example(tmp_path, "pgbouncer-follow-primary", "--includ", "x", "on_role_change", "primary", "main")
    assert wrong.returncode == 2 and "unknown option --includ" in wrong.stderr, wrong.stderr
