"""Which PostgreSQL binaries run a data directory: those of the major version its PG_VERSION
names, never simply the newest installed. A host upgraded from Debian 12 to 13 keeps
postgresql-15 beside the new postgresql-17; a pg_upgrade rehearsal installs another major: with
"the newest", governor's next restart would start a 15 data directory with 17's binaries (which
refuse it) or run 17's pg_basebackup against a 15 primary.
"""
from __future__ import annotations

import glob
import os
import re
import subprocess
import time
from typing import Any, Dict, List, Optional, Tuple

_versions: Dict[str, Optional[int]] = {}


def data_major(data_dir: Optional[str]) -> Optional[int]:
    """The major version in data_dir/PG_VERSION, or None (no data directory yet, or no number)."""
    try:
        with open(os.path.join(data_dir or "", "PG_VERSION"), encoding="ascii", errors="replace") as fh:
            text = fh.read(16).strip()
    except OSError:
        return None
    return int(text) if text.isdigit() and 0 < int(text) < 1000 else None


def bin_major(bin_dir: str) -> Optional[int]:
    """The major version of bin_dir/postgres (`postgres --version`), or None."""
    if bin_dir not in _versions:
        try:
            out = subprocess.run([os.path.join(bin_dir, "postgres"), "--version"], capture_output=True, text=True,
                                 timeout=10, check=False).stdout
        except (OSError, subprocess.SubprocessError):
            out = ""
        found = re.search(r"\(PostgreSQL\) (\d+)", out)
        _versions[bin_dir] = int(found.group(1)) if found else None
    return _versions[bin_dir]


def _installed(major: Optional[int]) -> list:
    """bin directories with pg_ctl, newest major first; only `major`'s when given."""
    pattern = str(major) if major is not None else "*"
    candidates = glob.glob(f"/usr/lib/postgresql/{pattern}/bin") + glob.glob(f"/usr/pgsql-{pattern}/bin")

    def version(path: str) -> float:
        match = re.search(r"(\d+(?:\.\d+)?)", path)
        return float(match.group(1)) if match else 0.0
    found = [p for p in sorted(candidates, key=version, reverse=True) if os.path.exists(os.path.join(p, "pg_ctl"))]
    if os.path.exists("/usr/bin/pg_ctl") and (major is None or bin_major("/usr/bin") == major):
        found.append("/usr/bin")      # RHEL's AppStream layout
    return found


def installed(major: int) -> Optional[str]:
    """The bin directory of PostgreSQL `major` on this host, or None."""
    found = _installed(major)
    return found[0] if found else None


_majors_seen: List[Any] = [None, -1e9]      # (the majors, when looked for): at most once a minute
MAJORS_EVERY = 60.0


def installed_majors() -> Tuple[int, ...]:
    """The PostgreSQL major versions whose binaries this host has, oldest first (the member key
    publishes them: an upgrade checks every member has its target). Looked for at most once a
    minute: packages are installed rarely, and every pass publishes them."""
    now = time.monotonic()
    if _majors_seen[0] is None or now - _majors_seen[1] >= MAJORS_EVERY:
        _majors_seen[:] = [_find_majors(), now]
    return _majors_seen[0]


def _find_majors() -> Tuple[int, ...]:
    majors = set()
    for path in _installed(None):
        found = re.search(r"/(?:postgresql/|pgsql-)(\d+)/bin$", path)
        major = int(found.group(1)) if found else bin_major(path)
        if major is not None:
            majors.add(major)
    return tuple(sorted(majors))


def choose(explicit: Optional[str], data_dir: Optional[str]) -> Tuple[str, Optional[str]]:
    """(bin_dir, the problem with it or None): `explicit` when given, checked against the data
    directory's major; else that major's binaries; else (no data yet) the newest installed."""
    major = data_major(data_dir)
    if explicit:
        have = bin_major(explicit) if major is not None else None
        if major is not None and have is not None and have != major:
            return explicit, (f"{explicit} holds PostgreSQL {have}, but {data_dir} is a PostgreSQL {major} data "
                              f"directory (PG_VERSION): point bin_dir at the {major} binaries, or leave it out and "
                              "governor takes them from PG_VERSION")
        return explicit, None
    found = _installed(major)
    if found:
        return found[0], None
    if major is not None:
        return "/usr/bin", (f"{data_dir} is a PostgreSQL {major} data directory (PG_VERSION) and no PostgreSQL "
                            f"{major} binaries are installed (/usr/lib/postgresql/{major}/bin, /usr/pgsql-{major}/bin):"
                            f" install them (Debian: postgresql-{major}), or set bin_dir")
    return "/usr/bin", None
