"""Logging setup: journald-friendly under systemd, timestamped lines elsewhere."""
from __future__ import annotations

import logging
import logging.handlers
import os
import sys
from typing import Optional

# syslog priorities journald understands as a "<N>" line prefix
_PRIORITY = {logging.DEBUG: 7, logging.INFO: 6, logging.WARNING: 4, logging.ERROR: 3, logging.CRITICAL: 2}


class JournalFormatter(logging.Formatter):
    """`<N>message`: journald takes N as the priority and adds its own timestamp."""

    def format(self, record: logging.LogRecord) -> str:
        text = super().format(record)
        prio = _PRIORITY.get(record.levelno, 6)
        return "\n".join(f"<{prio}>{line}" for line in text.splitlines())


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


def setup(level: str = "INFO", log_file: Optional[str] = None, syslog: bool = False) -> None:
    """Log to the journal (priority prefixes), a file, syslog (daemon mode), or stderr."""
    handler: logging.Handler
    if log_file:
        handler = logging.FileHandler(log_file)
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s: %(message)s"))
    elif syslog and os.path.exists("/dev/log"):
        handler = logging.handlers.SysLogHandler("/dev/log", facility=logging.handlers.SysLogHandler.LOG_DAEMON)
        handler.setFormatter(logging.Formatter("governor[%(process)d]: %(message)s"))
    elif under_journald():
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(JournalFormatter("%(message)s"))
    else:
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s: %(message)s"))
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(level)
    # python-etcd and urllib3 are chatty about every failed connection; governor reports those itself.
    for noisy in ("etcd", "urllib3"):
        logging.getLogger(noisy).setLevel(logging.CRITICAL)
