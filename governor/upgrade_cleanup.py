"""`governorctl upgrade --cleanup`: each member removes what a finished major upgrade left beside
its data directory — the old cluster (`DATA_DIR.pgOLD`, kept by the upgrade so that nothing is
lost before the operator says so), the leader's seed for its replicas (upgrade_seed.py) and
the statistics run's log. Only a directory that holds a
PostgreSQL data directory of an older major than the one running, and no running server."""
from __future__ import annotations

import glob
import os
import re
import shutil
from typing import List, Optional, Tuple

from governor import bindir, majorpaths, upgrade_seed
from governor.settings import PostgresConfig


def leftovers(data_dir: str) -> List[Tuple[str, int]]:
    """(path, major) of each old cluster a major upgrade set aside beside `data_dir`."""
    current = bindir.data_major(data_dir)
    found = []
    for path in sorted(glob.glob(f"{glob.escape(data_dir)}.pg*")):
        suffix = re.fullmatch(r"\.pg(\d+)", path[len(data_dir):])
        major = bindir.data_major(path)
        if suffix and major is not None and major == int(suffix.group(1)) and current is not None \
                and major < current and os.path.isdir(path) and not os.path.islink(path) \
                and not os.path.exists(os.path.join(path, "postmaster.pid")):
            found.append((path, major))
    return found


def moved_on(pg: PostgresConfig) -> List[Tuple[str, int]]:
    """With `{major}` in the settings (majorpaths.py): (path, major) of each old cluster in its own
    version's place that an upgrade moved on from to the running one."""
    t = pg.major_templates
    current = bindir.data_major(pg.data_dir)
    if t is None or current is None:
        return []
    found = []
    for major in sorted(majorpaths.candidates(t.data_dir)):
        path = majorpaths.fill(t.data_dir, major)
        if major < current and bindir.data_major(path) == major and majorpaths.moved_to(path) is not None \
                and os.path.isdir(path) and not os.path.islink(path) \
                and not os.path.exists(os.path.join(path, "postmaster.pid")):
            found.append((path, major))
    return found


def remove(data_dir: str, pg: Optional[PostgresConfig] = None) -> List[str]:
    """Remove them (and the statistics run's log); what was removed. With `{major}` in the
    settings, an old cluster's configuration directory goes with it (as pg_dropcluster does)."""
    removed = []
    for path, _major in leftovers(data_dir):
        shutil.rmtree(path)
        removed.append(path)
    for path, major in moved_on(pg) if pg is not None else []:
        shutil.rmtree(path)
        os.remove(path.rstrip("/") + majorpaths.MOVED)
        removed.append(path)
        config = majorpaths.for_major(pg, major).config_dir if pg.major_templates.config_dir else None
        if config and os.path.isdir(config) and not os.path.islink(config):
            shutil.rmtree(config)
            removed.append(config)
    log, seed = f"{data_dir}.analyze.log", upgrade_seed.seed_dir(data_dir)
    if removed and os.path.isfile(log):
        os.remove(log)
        removed.append(log)
    if removed and upgrade_seed.read_manifest(seed) is not None:
        upgrade_seed.remove(data_dir)
        removed.append(seed)
    return removed
