"""Logging setup: journald-friendly under systemd, timestamped lines elsewhere."""
from __future__ import annotations

import json
import logging
import logging.handlers
import os
import sys
import time
from typing import Optional

# syslog priorities journald understands as a "<N>" line prefix
_PRIORITY = {logging.DEBUG: 7, logging.INFO: 6, logging.WARNING: 4, logging.ERROR: 3, logging.CRITICAL: 2}


class JournalFormatter(logging.Formatter):
    """`<N>message`: journald takes N as the priority and adds its own timestamp."""

    def __init__(self, inner: Optional[logging.Formatter] = None):
        super().__init__()
        self.inner = inner or logging.Formatter("%(message)s")

    def format(self, record: logging.LogRecord) -> str:
        text = self.inner.format(record)
        prio = _PRIORITY.get(record.levelno, 6)
        return "\n".join(f"<{prio}>{line}" for line in text.splitlines())


class JsonFormatter(logging.Formatter):
    """One JSON object per line, for log shippers (times in UTC)."""

    converter = time.gmtime

    def format(self, record: logging.LogRecord) -> str:
        entry = {"time": self.formatTime(record, "%Y-%m-%dT%H:%M:%S") + f".{int(record.msecs):03d}Z",
                 "level": record.levelname.lower(), "logger": record.name, "message": record.getMessage()}
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        return json.dumps(entry, separators=(",", ":"))


def under_journald() -> bool:
    """True when stderr is connected to the journal (systemd sets JOURNAL_STREAM=dev:inode)."""
    stream = os.environ.get("JOURNAL_STREAM", "")
    if not stream:
        return False
    try:
        st = os.fstat(sys.stderr.fileno())
    except (OSError, ValueError):
        return False
    return stream == f"{st.st_dev}:{st.st_ino}"


_where: dict = {}


def reformat(fmt: str) -> None:
    """A reload that changed log_format: the same destination, the new format."""
    if _where and _where.get("fmt") != fmt:
        setup(logging.getLevelName(logging.getLogger().level), _where["log_file"], _where["syslog"], fmt)


def setup(level: str = "INFO", log_file: Optional[str] = None, syslog: bool = False, fmt: str = "text") -> None:
    """Log to a file, syslog (daemon mode), the journal (priority prefixes) or stderr; `fmt`
    "json" writes one JSON object per line instead of text (journal priorities still apply)."""
    _where.update(log_file=log_file, syslog=syslog, fmt=fmt)
    text = logging.Formatter("%(asctime)s %(levelname)s: %(message)s")
    body: logging.Formatter = JsonFormatter() if fmt == "json" else text
    handler: logging.Handler
    if log_file:
        handler = logging.FileHandler(log_file)
        handler.setFormatter(body)
    elif syslog and os.path.exists("/dev/log"):
        handler = logging.handlers.SysLogHandler("/dev/log", facility=logging.handlers.SysLogHandler.LOG_DAEMON)
        handler.setFormatter(JsonFormatter() if fmt == "json" else
                             logging.Formatter("governor[%(process)d]: %(message)s"))
    elif under_journald():
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(JournalFormatter(JsonFormatter() if fmt == "json" else None))
    else:
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(body)
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(level)
    # python-etcd and urllib3 are chatty about every failed connection; governor reports those itself.
    for noisy in ("etcd", "urllib3"):
        logging.getLogger(noisy).setLevel(logging.CRITICAL)
