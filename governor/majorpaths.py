"""Settings that follow the PostgreSQL major version: `{major}` in postgresql.data_dir,
config_dir and systemd_unit (Debian's layout: /var/lib/postgresql/{major}/main,
/etc/postgresql/{major}/main, postgresql@{major}-main). A major upgrade then changes no file:
the templates stand for the version the host's cluster runs, read from the file system.

Which major (resolve()): among the directories the template matches that hold a PG_VERSION of
their own major and are no unfinished attempt (governor's `.governor` mark beside one it is still
making), the one a finished upgrade did not move on from (governor leaves `.governor-moved`,
naming the new major, beside the old one). Two such — Debian's own cluster made by a package
beside governor's — is an error, never a guess. With every one moved on, the newest they moved
to (a replica about to clone it); with none, the version of an empty directory there (where the
operator made room for a clone, as README says for the other members); with nothing there, the
newest installed."""
from __future__ import annotations

import glob
import os
import re
from dataclasses import replace
from typing import TYPE_CHECKING, Any, Callable, Iterable, Optional, Sequence

from governor import bindir
from governor.settings import MajorTemplates, PostgresConfig

if TYPE_CHECKING:
    from governor.checker import Checker

MAJOR = "{major}"
KEYS = ("data_dir", "config_dir", "systemd_unit")
ATTEMPT = ".governor"      # beside a directory governor is still making: not the cluster yet
MOVED = ".governor-moved"  # beside an old cluster a finished upgrade moved on from: the new major


def templated(value: Optional[str]) -> bool:
    return bool(value) and MAJOR in str(value)


def fill(value: Optional[str], major: int) -> Optional[str]:
    return value.replace(MAJOR, str(major)) if value else value


def template_problem(value: str) -> Optional[str]:
    """What is wrong with a template (None: fine): `{major}` once, as a whole path component or
    between the unit name's '@' and '-'; no other braces."""
    if value.count(MAJOR) != 1 or value.replace(MAJOR, "").count("{") or value.replace(MAJOR, "").count("}"):
        return f"expected {MAJOR} exactly once and no other braces, got {value!r}"
    if not re.search(r"(^|/|@|-)\{major\}($|/|-)", value):
        return f"{MAJOR} must stand alone between '/' (or '@' and '-'), as in /var/lib/postgresql/{MAJOR}/main"
    return None


def candidates(data_template: str) -> Iterable[int]:
    """The majors some directory matching the data directory's template is named after."""
    head, tail = data_template.split(MAJOR, 1)
    pattern = re.compile(re.escape(head) + r"(\d{1,3})" + re.escape(tail))
    for path in glob.glob(glob.escape(head) + "*" + glob.escape(tail)):
        found = pattern.fullmatch(path)
        if found:
            yield int(found.group(1))


class Ambiguous(Exception):
    """Several directories hold a cluster of their own major and governor moved none of them."""


def moved_to(data: str) -> Optional[int]:
    """The major a finished upgrade moved the cluster in `data` on to (its MOVED file), or None."""
    try:
        with open(data.rstrip("/") + MOVED, encoding="ascii", errors="replace") as fh:
            text = fh.read(16).strip()
    except OSError:
        return None
    return int(text) if text.isdigit() and len(text) <= 3 else None


def resolve(data_template: str, installed: Sequence[int],
            data_major: Callable[[str], Optional[int]], exists: Callable[[str], bool] = os.path.exists,
            found: Optional[Iterable[int]] = None) -> Optional[int]:
    """The major the templates stand for on this host (see the module's docstring). Ambiguous
    when several clusters were not moved on (one is not governor's: made by hand, or by a package)."""
    found = set(candidates(data_template) if found is None else found)
    moved = {}      # each cluster of its own major that is no unfinished attempt -> where it moved on to
    for major in found:
        data = fill(data_template, major)
        if data_major(data) == major and not exists(data.rstrip("/") + ATTEMPT):
            moved[major] = moved_to(data)
    current = sorted(m for m, to in moved.items() if to is None)
    if len(current) > 1:
        raise Ambiguous(", ".join(fill(data_template, m) for m in current))
    if current:
        return current[0]
    if moved:       # every one moved on: the newest they moved to (a replica cloning it)
        return max(to for to in moved.values() if to is not None)
    if found:       # an empty directory: where the operator made room for a clone
        return max(found)
    return max(installed) if installed else None


def fill_as(value: Any, templates: Optional[MajorTemplates]) -> Any:
    """`value` with the host's major in place of `{major}` (unchanged without templates)."""
    return fill(value, templates.major) if templates and isinstance(value, str) and templated(value) else value


def read(c: Checker, data_dir: Optional[str]) -> Optional[MajorTemplates]:
    """The templates in the files, checked, and the major they stand for; None without any."""
    config_dir, unit = c.get("postgresql.config_dir"), c.get("postgresql.systemd_unit")
    named = {key: v for key, v in (("data_dir", data_dir), ("config_dir", config_dir), ("systemd_unit", unit))
             if isinstance(v, str) and templated(v)}
    if not named:
        return None
    if "data_dir" not in named:
        for key in named:
            c.fail(f"postgresql.{key}", f"{MAJOR} needs postgresql.data_dir to have it too (the data directory "
                                        "says which major the host runs)")
        return None
    for key, value in named.items():
        problem = template_problem(value)
        if problem:
            c.fail(f"postgresql.{key}", problem)
            return None
    try:
        major = resolve(os.path.abspath(named["data_dir"]), bindir.installed_majors(), bindir.data_major)
    except Ambiguous as exc:
        c.fail("postgresql.data_dir", f"{MAJOR}: clusters in {exc} and governor moved none of them on: which is "
                                      "this member's is unknown; move the other away (pg_dropcluster if it is "
                                      "Debian's own)")
        return None
    if major is None:
        c.fail("postgresql.data_dir", f"{MAJOR}: no cluster in {named['data_dir']} for any major and no "
                                      "PostgreSQL installed")
        return None
    return MajorTemplates(os.path.abspath(named["data_dir"]), named.get("config_dir"), named.get("systemd_unit"),
                          major)


def for_major(pg: PostgresConfig, major: int) -> PostgresConfig:
    """The settings for running PostgreSQL `major` in the templates' places (binaries chosen by
    the caller)."""
    t = pg.major_templates
    if t is None:
        return pg
    return replace(pg, data_dir=fill(t.data_dir, major), config_dir=fill(t.config_dir, major) or pg.config_dir,
                   systemd_unit=fill(t.systemd_unit, major) or pg.systemd_unit,
                   major_templates=replace(t, major=major))


def mark_moved(old_data: str, major: int) -> None:
    """Say beside `old_data` that its cluster moved on to `major` (before the attempt's mark goes)."""
    path = old_data.rstrip("/") + MOVED
    with open(path + ".new", "w") as fh:
        fh.write(f"{major}\n")
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(path + ".new", path)
