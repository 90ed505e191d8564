"""Replicas of an upgraded leader without copying what they already have (PostgreSQL's documented
method for standbys after pg_upgrade --link, without rsync or ssh between hosts).

After pg_upgrade --link and before the new cluster starts, the leader describes its new data
directory in a *seed*, `{data_dir}.upgrade-seed`: each file pg_upgrade linked (a relation's data:
the same inode in the old directory) is named by its path in the old directory; every other file
(the new catalogs, WAL, pg_xact, ...) is copied into the seed as it is then. A replica that
stopped at the same checkpoint as the leader's old cluster has those linked files itself: it
builds its new directory by hard-linking its own and fetching only the copied ones (over the
leader's API, with the control credentials), then starts as a standby of the new cluster.

Not linked, left out:
- the free space map (`_fsm`): not WAL-logged as a whole; a replica keeps its own (or none,
  which PostgreSQL rebuilds);
- the data of unlogged relations (those with an `_init` fork): a standby has none, and
  PostgreSQL makes them empty from the init fork when it is promoted.
- a visibility map (`_vm`) the replica does not have: VACUUM creates the file without WAL when it
  first looks at a relation, and only the bits it sets are WAL-logged (they make the standby's
  map); a replica that replayed everything and has none has seen no bit set, and no map means
  nothing all-visible.
A replica's file may be shorter than the leader's (pages the leader added but never wrote to
WAL are empty), never longer: then, or when another is missing, the replica clones instead.

The manifest comes over the network: parse_manifest() takes it as hostile (paths confined to
the directory, sizes and counts bounded)."""
from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import shutil
import stat
import time
from dataclasses import dataclass, field
from typing import Callable, Dict, Iterable, List, Optional, Tuple

SUFFIX = ".upgrade-seed"
MANIFEST = "manifest.json"
MANIFEST_MAX = 256 * 2**20
ENTRIES_MAX = 2_000_000
FILE_MAX = 2**40
NAME = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]{0,254}")
RELATION_FILE = re.compile(r"(\d+)(_[a-z]+)?(\.\d+)?")
log = logging.getLogger("governor")


class SeedError(Exception):
    """The seed cannot be made or used: the replica clones instead."""


@dataclass
class Manifest:
    dirs: List[Tuple[str, int]] = field(default_factory=list)       # (path, mode), parents first
    links: List[Tuple[str, str, int, bool]] = field(default_factory=list)  # (path, old path, size, optional)
    copies: List[Tuple[str, int, str]] = field(default_factory=list)  # (path, size, sha256)

    def as_dict(self) -> dict:
        return {"version": 1, "dirs": [list(d) for d in self.dirs],
                "links": [{"path": p, "from": o, "size": s, "optional": opt} for p, o, s, opt in self.links],
                "copies": [{"path": p, "size": s, "sha256": h} for p, s, h in self.copies]}


def seed_dir(data_dir: str) -> str:
    return data_dir.rstrip("/") + SUFFIX


def _unlogged(names: Iterable[str]) -> set:
    """The relation file numbers of a directory's unlogged relations (they have an init fork)."""
    return {m.group(1) for m in map(RELATION_FILE.fullmatch, names) if m and m.group(2) == "_init"}


def build(old: str, new: str, seed: str) -> Manifest:
    """Describe `new` (pg_upgrade --link's cluster, not started) against `old` into `seed`."""
    inodes: Dict[Tuple[int, int], str] = {}
    for root, _dirs, files in os.walk(old):
        for name in files:
            path = os.path.join(root, name)
            st = os.lstat(path)
            if stat.S_ISREG(st.st_mode) and st.st_nlink > 1:
                inodes[(st.st_dev, st.st_ino)] = os.path.relpath(path, old)
    manifest = Manifest()
    os.mkdir(seed, 0o700)
    os.mkdir(os.path.join(seed, "files"), 0o700)
    for root, dirs, files in os.walk(new):
        dirs.sort()
        rel_root = os.path.relpath(root, new)
        for name in dirs:
            path = os.path.join(root, name)
            if os.path.islink(path):
                raise SeedError(f"{path} is a symbolic link (a tablespace?): replicas are cloned")
            rel = os.path.normpath(os.path.join(rel_root, name))
            manifest.dirs.append((rel, stat.S_IMODE(os.lstat(path).st_mode)))
            os.mkdir(os.path.join(seed, "files", rel), 0o700)
        unlogged = _unlogged(files)
        for name in sorted(files):
            path, rel = os.path.join(root, name), os.path.normpath(os.path.join(rel_root, name))
            st = os.lstat(path)
            if not stat.S_ISREG(st.st_mode):
                raise SeedError(f"{path} is not a regular file: replicas are cloned")
            relation = RELATION_FILE.fullmatch(name)
            origin = inodes.get((st.st_dev, st.st_ino))
            if relation and relation.group(1) in unlogged and relation.group(2) != "_init":
                continue
            if origin is not None:
                manifest.links.append((rel, origin, st.st_size, bool(relation and relation.group(2) == "_fsm")))
                continue
            target = os.path.join(seed, "files", rel)
            digest = hashlib.sha256()
            with open(path, "rb") as src, open(target, "wb") as dst:
                for chunk in iter(lambda: src.read(1 << 20), b""):
                    digest.update(chunk)
                    dst.write(chunk)
            manifest.copies.append((rel, os.path.getsize(target), digest.hexdigest()))
    temporary = os.path.join(seed, MANIFEST + ".new")
    with open(temporary, "w") as fh:
        json.dump(manifest.as_dict(), fh, separators=(",", ":"))
    os.rename(temporary, os.path.join(seed, MANIFEST))
    return manifest


def make(data_dir: str, new: str, at: Optional[str] = None) -> bool:
    """The leader, after pg_upgrade: the seed beside `at` (where the new cluster will run from;
    default `data_dir`, which it replaces); False (the replicas clone) when it cannot be made."""
    at = at or data_dir
    remove(at)
    began = time.monotonic()
    try:
        m = build(data_dir, new, seed_dir(at))
    except (OSError, SeedError) as exc:
        log.warning("upgrade: no seed for the replicas (they will clone this member instead): %s", exc)
        remove(at)
        return False
    log.info("upgrade: seed for the replicas made in %.2f s: %d files they link from their own data directory, "
             "%d (%.1f MiB) they fetch from this member", time.monotonic() - began, len(m.links), len(m.copies),
             copies_size(m) / 2**20)
    return True


def remove(data_dir: str) -> None:
    seed = seed_dir(data_dir)
    if os.path.isdir(seed) and not os.path.islink(seed):
        shutil.rmtree(seed)


def read_manifest(seed: str) -> Optional[bytes]:
    try:
        with open(os.path.join(seed, MANIFEST), "rb") as fh:
            return fh.read(MANIFEST_MAX + 1)
    except OSError:
        return None


# ------------------------------------------------------------------ the replica's side

def _path(value: object) -> str:
    if not isinstance(value, str) or len(value) > 1024:
        raise SeedError("a path in the manifest is not text of at most 1024 characters")
    parts = value.split("/")
    if not all(NAME.fullmatch(p) and p not in (".", "..") for p in parts):
        raise SeedError(f"the manifest names a path outside the data directory: {value[:100]!r}")
    return value


def _size(value: object) -> int:
    if not isinstance(value, int) or isinstance(value, bool) or not 0 <= value < FILE_MAX:
        raise SeedError("a size in the manifest is not a number of bytes")
    return value


def parse_manifest(raw: Optional[bytes]) -> Manifest:
    """The leader's manifest, checked: SeedError when anything in it does not make sense."""
    if raw is None or len(raw) > MANIFEST_MAX:
        raise SeedError("no manifest, or one too large")
    try:
        data = json.loads(raw)
    except (ValueError, RecursionError) as exc:
        raise SeedError(f"the manifest is not JSON: {exc}") from exc
    if not isinstance(data, dict) or data.get("version") != 1:
        raise SeedError("the manifest is not version 1 of a seed's")
    dirs, links, copies = data.get("dirs"), data.get("links"), data.get("copies")
    if not all(isinstance(v, list) for v in (dirs, links, copies)) or len(dirs) + len(links) + len(copies) > \
            ENTRIES_MAX:
        raise SeedError("the manifest's lists are missing or too long")
    m, known = Manifest(), {""}
    for entry in dirs:
        if not isinstance(entry, list) or len(entry) != 2 or not isinstance(entry[1], int) \
                or not 0 <= entry[1] <= 0o777:
            raise SeedError("a directory in the manifest is not [path, mode]")
        path = _path(entry[0])
        if os.path.dirname(path) not in known or path in known:
            raise SeedError(f"the manifest's directory {path!r} comes before its parent, or twice")
        known.add(path)
        m.dirs.append((path, entry[1] | 0o700))
    seen = set()
    for entry in links + copies:
        if not isinstance(entry, dict):
            raise SeedError("a file in the manifest is not an object")
        path = _path(entry.get("path"))
        if os.path.dirname(path) not in known or path in seen or path in known:
            raise SeedError(f"the manifest's file {path!r} is outside its directories, or listed twice")
        seen.add(path)
        if "from" in entry:
            m.links.append((path, _path(entry["from"]), _size(entry.get("size")), entry.get("optional") is True))
        else:
            digest = entry.get("sha256")
            if not isinstance(digest, str) or not re.fullmatch(r"[0-9a-f]{64}", digest):
                raise SeedError(f"the manifest's file {path!r} has no sha256")
            m.copies.append((path, _size(entry.get("size")), digest))
    return m


@dataclass
class Built:
    linked: int = 0
    linked_bytes: int = 0
    fetched: int = 0
    fetched_bytes: int = 0


def apply(m: Manifest, old: str, new: str, stream: Callable[[int], bytes]) -> Built:
    """Make `new` (which must not exist) from the manifest: hard links to this member's own
    files in `old`, and the copied files read from `stream` (the leader's GET
    /upgrade/seed/files: each copied file's bytes in the manifest's order). SeedError when a file
    does not match; the caller removes `new` and clones."""
    built, old_real = Built(), os.path.realpath(old)
    os.mkdir(new, 0o700)
    for path, mode in m.dirs:
        os.mkdir(os.path.join(new, path), mode)
    for path, origin, size, optional in m.links:
        source = os.path.join(old, origin)
        try:
            st = os.lstat(source)
        except FileNotFoundError:
            if optional or _fork(origin) == "_vm":
                continue
            raise SeedError(f"{source} is missing here") from None
        if not stat.S_ISREG(st.st_mode) or not os.path.realpath(source).startswith(old_real + os.sep):
            raise SeedError(f"{source} is not a regular file inside {old}")
        if st.st_size > size and not optional:
            raise SeedError(f"{source} is longer here ({st.st_size} bytes) than on the leader ({size})")
        os.link(source, os.path.join(new, path), follow_symlinks=False)
        built.linked += 1
        built.linked_bytes += st.st_size
    for path, size, digest in m.copies:
        left, check = size, hashlib.sha256()
        fd = os.open(os.path.join(new, path), os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
        with os.fdopen(fd, "wb") as out:
            while left:
                chunk = stream(min(left, 1 << 20))
                if not chunk:
                    raise SeedError(f"the leader's files ended in {path}, {left} bytes short")
                left -= len(chunk)
                check.update(chunk)
                out.write(chunk)
            out.flush()
            os.fsync(out.fileno())
        if check.hexdigest() != digest:
            raise SeedError(f"{path} arrived with another checksum than the manifest's")
        built.fetched += 1
        built.fetched_bytes += size
    return built


def send_copies(seed: str, m: Manifest, write: Callable[[bytes], object]) -> None:
    """The leader's side of GET /upgrade/seed/files: every copied file, in the manifest's order,
    exactly as long as the manifest says (a file that changed size is a broken seed)."""
    for path, size, _digest in m.copies:
        with open(os.path.join(seed, "files", path), "rb") as fh:
            left = size
            while left:
                chunk = fh.read(min(left, 1 << 20))
                if not chunk:
                    raise SeedError(f"the seed's copy of {path} is shorter than its manifest says")
                left -= len(chunk)
                write(chunk)


def _fork(path: str) -> Optional[str]:
    """The fork a relation file's name says ("_vm", "_fsm", "_init"), None for the main fork."""
    found = RELATION_FILE.fullmatch(os.path.basename(path))
    return found.group(2) if found else None


def copies_size(m: Manifest) -> int:
    return sum(size for _path, size, _digest in m.copies)
