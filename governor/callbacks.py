"""Callbacks: the operator's executables, run when this member's PostgreSQL starts, stops,
restarts, reloads or changes role (in the background), and before it is promoted or stopped
(governor waits, within a bound).

Each runs as `COMMAND... ACTION ROLE SCOPE` (ACTION the callback's name, ROLE primary or
replica), without a shell, in a session of its own, as the data directory's owner, with an
environment made from nothing (PATH, LANG, HOME and GOVERNOR_ACTION, _ROLE, _SCOPE, _MEMBER,
_PG_HOST, _PG_PORT: never NOTIFY_SOCKET, PGPASSWORD or anything else of governor's). Past
`callbacks.timeout` its whole process group is killed. A newer callback of one kind kills an
older one of that kind still running: only the newest role matters. Exit status and output are
logged; failures are counted (governor_callback_failures_total).
"""
from __future__ import annotations

import logging
import os
import pwd
import signal
import subprocess
import threading
from typing import IO, TYPE_CHECKING, Callable, Dict, List, Optional, Tuple

from governor import clock
from governor.checker import Checker
from governor.hatypes import LocalState
from governor.settings import CONTROL_RE, CallbacksConfig

if TYPE_CHECKING:
    pass

log = logging.getLogger("governor")

BACKGROUND = ("on_start", "on_stop", "on_restart", "on_reload", "on_role_change")
WAITED = ("pre_promote", "before_stop")
KEYS = BACKGROUND + WAITED + ("timeout",)
OUTPUT_KEEP = 2048
PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"


def check(c: Checker) -> CallbacksConfig:
    """The `callbacks` section: each an absolute path to an executable, or [path, argument, ...]."""
    c.unknown("callbacks", c.section("callbacks"), KEYS)
    commands: List[Tuple[str, Tuple[str, ...]]] = []
    for kind in BACKGROUND + WAITED:
        key, value = f"callbacks.{kind}", c.get(f"callbacks.{kind}")
        if value is None:
            continue
        argv = [value] if isinstance(value, str) else value
        if not isinstance(argv, list) or not 0 < len(argv) <= 32 or not all(
                isinstance(a, str) and a and len(a) <= 4096 and not CONTROL_RE.search(a) for a in argv):
            c.fail(key, "expected the absolute path of an executable, or a list [path, argument, ...] "
                        f"(no shell runs it), got {value!r}"[:400])
            continue
        path = argv[0]
        if not os.path.isabs(path):
            c.fail(key, f"expected an absolute path (no shell or PATH lookup runs it), got {path!r}")
        elif not os.path.isfile(path):
            c.fail(key, f"{path}: no such file")
        elif not os.access(path, os.X_OK):
            c.fail(key, f"{path}: not executable")
        else:
            commands.append((kind, tuple(argv)))
    timeout = c.value("callbacks.timeout", "number", 30,
                      check=lambda v: None if 1 <= v <= 600 else f"expected 1 to 600 seconds, got {v}")
    return CallbacksConfig(commands=tuple(commands), timeout=float(timeout))


def seen_as(local: LocalState) -> Optional[str]:
    """PostgreSQL's state as transition() compares it."""
    if not local.running:
        return "down"
    return local.role if local.role in ("primary", "replica") else None


def transition(before: Optional[str], after: Optional[str],
               last_role: Optional[str] = None) -> Optional[Tuple[str, str]]:
    """The background callback a change of PostgreSQL's observed state calls for, as (kind,
    role). States: "primary", "replica", "down"; None is not known (first pass, or running but
    not answering): no callback from or to it. `last_role`: the role it last ran as, in this
    process: a server that comes back in another role (a switchover's old primary: stopped,
    started as a replica) changed role, and says so with on_role_change, as Patroni does, for the
    scripts (a VIP, DNS, pgbouncer) that only act on that."""
    if before is None or after is None or before == after:
        return None
    if before == "down":
        return ("on_role_change" if last_role not in (None, after) else "on_start", after)
    if after == "down":
        return ("on_stop", before)
    return ("on_role_change", after)


class Runner:
    """Starts callbacks and keeps the one running per kind."""

    def __init__(self, name: str, scope: Callable[[], str], data_dir: Callable[[], str],
                 failed: Optional[Callable[[str], None]] = None,
                 address: Callable[[], Tuple[str, int]] = lambda: ("", 0)):
        self.name, self.scope, self.data_dir, self.failed = name, scope, data_dir, failed
        self.address = address      # where the other members reach this PostgreSQL
        self.lock = threading.Lock()
        self.running: Dict[str, subprocess.Popen] = {}
        self.cancelled: set = set()

    def fire(self, config: CallbacksConfig, kind: str, role: str) -> None:
        """Run `kind` in the background (nothing when it is not configured)."""
        argv = config.command(kind)
        if argv is not None:
            threading.Thread(target=self.run, args=(argv, kind, role, config.timeout), daemon=True,
                             name=f"callback-{kind}").start()

    def wait(self, config: CallbacksConfig, kind: str, role: str, limit: float) -> Optional[int]:
        """Run `kind` and wait for it, at most min(timeout, limit) seconds: its exit status; None
        when it could not start or was killed; 0 when it is not configured."""
        argv = config.command(kind)
        if argv is None:
            return 0
        return self.run(argv, kind, role, max(0.1, min(config.timeout, limit)))

    def run(self, argv: Tuple[str, ...], kind: str, role: str, timeout: float) -> Optional[int]:
        started = clock.monotonic()
        with self.lock:
            older = self.running.pop(kind, None)
            if older is not None:
                self.cancelled.add(older.pid)
                _kill(older)
            try:
                proc = subprocess.Popen([*argv, kind, role, self.scope()], stdin=subprocess.DEVNULL,
                                        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=self._env(kind, role),
                                        cwd="/", start_new_session=True, close_fds=True, **self._user())
            except (OSError, ValueError, KeyError) as exc:
                self._report(kind, role, f"could not start {argv[0]}: {exc}", "", False)
                return None
            self.running[kind] = proc
        output = _Output(proc.stdout)
        try:
            code: Optional[int] = proc.wait(timeout)
        except subprocess.TimeoutExpired:
            _kill(proc)
            proc.wait()
            code = None
        text = output.text()
        took = clock.monotonic() - started
        with self.lock:
            if self.running.get(kind) is proc:
                del self.running[kind]
            cancelled = proc.pid in self.cancelled
            self.cancelled.discard(proc.pid)
        if cancelled:
            log.info("callback %s (%s) cancelled after %.1fs: a newer %s replaced it%s", kind, role, took, kind,
                     f"; it said: {text}" if text else "")
            return None
        if code is None:
            self._report(kind, role, f"killed after {timeout:g}s (callbacks.timeout)", text, False)
        else:
            self._report(kind, role, f"exited {code} after {took:.1f}s", text, code == 0)
        return code

    def _report(self, kind: str, role: str, outcome: str, text: str, ok: bool) -> None:
        log.log(logging.INFO if ok else logging.WARNING, "callback %s (%s) %s%s", kind, role, outcome,
                f": {text}" if text else "")
        if not ok and self.failed is not None:
            self.failed(kind)

    def _env(self, kind: str, role: str) -> Dict[str, str]:
        home = "/"
        try:
            home = pwd.getpwuid(self._owner() if os.geteuid() == 0 else os.geteuid()).pw_dir
        except (KeyError, OSError):
            pass
        return {"PATH": PATH, "LANG": os.environ.get("LANG", "C.UTF-8"), "HOME": home,
                "GOVERNOR_ACTION": kind, "GOVERNOR_ROLE": role, "GOVERNOR_SCOPE": self.scope(),
                "GOVERNOR_MEMBER": self.name, "GOVERNOR_PG_HOST": self.address()[0],
                "GOVERNOR_PG_PORT": str(self.address()[1])}

    def _owner(self) -> int:
        return os.stat(self.data_dir()).st_uid if os.path.exists(self.data_dir()) else \
            os.stat(os.path.dirname(self.data_dir())).st_uid

    def _user(self) -> dict:
        """As root, the data directory's owner (PostgreSQL's user); otherwise governor's own."""
        if os.geteuid() != 0:
            return {}
        owner = pwd.getpwuid(self._owner())
        if owner.pw_uid == 0:
            return {}
        return {"user": owner.pw_uid, "group": owner.pw_gid, "extra_groups": []}


def _kill(proc: subprocess.Popen) -> None:
    """The callback and everything it started (its own session)."""
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass


class _Output(threading.Thread):
    """Reads a callback's output as it comes (a full pipe would block it), keeping the first
    OUTPUT_KEEP bytes."""

    def __init__(self, pipe: Optional[IO[bytes]]):
        super().__init__(daemon=True)
        self.pipe, self.kept, self.more = pipe, b"", 0
        self.start()

    def run(self) -> None:
        if self.pipe is None:
            return
        try:
            while True:
                chunk = self.pipe.read1(65536) if hasattr(self.pipe, "read1") else self.pipe.read(65536)
                if not chunk:
                    break
                room = OUTPUT_KEEP - len(self.kept)
                self.kept += chunk[:max(room, 0)]
                self.more += max(len(chunk) - max(room, 0), 0)
        except (OSError, ValueError):
            pass

    def text(self) -> str:
        """What it printed, on one line, printable (a child left running may hold the pipe: what
        came within a second)."""
        self.join(1.0)
        text = self.kept.decode("utf-8", "replace").strip()
        text = " | ".join(line.strip() for line in text.splitlines() if line.strip())
        text = "".join(ch if ch.isprintable() else "?" for ch in text)
        return text + (f" [{self.more} more bytes]" if self.more else "")
