"""A Debian-style configuration directory (/etc/postgresql/15/main) for another major version:
what a major upgrade of that layout needs, as `pg_upgradecluster` makes it — the same files, the
paths in postgresql.conf naming the new version's directories, and `start.conf` saying `manual`
(governor starts the cluster; `postgresql.service` starts every cluster marked `auto` at boot)."""
from __future__ import annotations

import os
import re
import shutil

PATH_SETTINGS = ("data_directory", "hba_file", "ident_file", "external_pid_file", "cluster_name")
FILE_MAX = 4 * 2**20


def set_start(config_dir: str, how: str = "manual") -> None:
    """start.conf of the cluster in `config_dir` (`manual`: only governor starts it)."""
    path = os.path.join(config_dir, "start.conf")
    temporary = path + ".governor"
    with open(temporary, "w") as fh:
        fh.write(f"# set by governor: it starts and stops this cluster\n{how}\n")
    os.replace(temporary, path)


def rewrite(text: str, source: int, target: int) -> str:
    """postgresql.conf with the version in its path settings (and cluster_name) changed."""
    def line(found: re.Match) -> str:
        value = found.group(0)
        for before, after in ((f"/{source}/", f"/{target}/"), (f"/{source}-", f"/{target}-"),
                              (f"'{source}/", f"'{target}/")):
            value = value.replace(before, after)
        return value
    names = "|".join(PATH_SETTINGS)
    return re.sub(rf"(?m)^\s*({names})\s*=?\s*'[^'\n]*'.*$", line, text)


def copy_for_major(source_dir: str, target_dir: str, source: int, target: int) -> None:
    """Make `target_dir` from `source_dir` (which must not be the same); an existing target_dir
    is left as it is (made by a previous attempt, or by the operator)."""
    if os.path.isdir(target_dir):
        return
    partial = target_dir.rstrip("/") + ".governor-new"
    shutil.rmtree(partial, ignore_errors=True)
    os.makedirs(os.path.dirname(partial), mode=0o755, exist_ok=True)
    shutil.copytree(source_dir, partial, symlinks=True)
    conf = os.path.join(partial, "postgresql.conf")
    if os.path.isfile(conf) and os.path.getsize(conf) <= FILE_MAX:
        with open(conf, encoding="utf-8", errors="surrogateescape") as fh:
            text = fh.read()
        with open(conf, "w", encoding="utf-8", errors="surrogateescape") as fh:
            fh.write(rewrite(text, source, target))
    set_start(partial)
    os.rename(partial, target_dir)
