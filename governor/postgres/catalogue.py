"""The installed PostgreSQL server's own catalogue of settings (`postgres --describe-config`)."""
from __future__ import annotations

import functools
import logging
import os
import subprocess
from typing import Optional

from governor.pgparams import Catalogue, Setting, _float

log = logging.getLogger(__name__)


@functools.lru_cache(maxsize=8)
def catalogue(bin_dir: str) -> Optional[Catalogue]:
    """Every setting the server binary in `bin_dir` knows, by lower-case name; None when the
    binary cannot tell (not installed on this host, e.g. where only governorctl runs)."""
    binary = os.path.join(bin_dir, "postgres")
    try:
        done = subprocess.run([binary, "--describe-config"], capture_output=True, text=True, timeout=20,
                              stdin=subprocess.DEVNULL)
    except (OSError, subprocess.SubprocessError) as exc:
        log.debug("cannot list PostgreSQL settings with %s: %s", binary, exc)
        return None
    if done.returncode != 0:
        return None
    found: Catalogue = {}
    for line in done.stdout.splitlines():
        cols = line.split("\t")
        if len(cols) < 7:
            continue
        found[cols[0].lower()] = Setting(cols[0], cols[3], _float(cols[5]), _float(cols[6]))
    return found or None
