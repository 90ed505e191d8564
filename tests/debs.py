"""The .deb under test, and the same package under a newer version (for upgrades)."""
from __future__ import annotations

import glob
import os
import shutil
import subprocess

from tests.harness import REPO


def build() -> str:
    """`make deb`: the path of build/deb/governor_<version>_all.deb."""
    result = subprocess.run(["make", "-s", "deb"], cwd=REPO, capture_output=True, text=True)
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]
    debs = glob.glob(os.path.join(REPO, "build", "deb", "governor_*_all.deb"))
    assert len(debs) == 1, debs
    return debs[0]


def build_next() -> str:
    """The package build() made, rebuilt as version <version>+next1 in build/deb-next."""
    src = os.path.join(REPO, "build", "deb", "src")
    work = os.path.join(REPO, "build", "deb-next")
    shutil.rmtree(work, ignore_errors=True)
    shutil.copytree(src, os.path.join(work, "src"), symlinks=True)
    changelog = os.path.join(work, "src", "debian", "changelog")
    with open(changelog) as fh:
        old = fh.read()
    version = old.split("(", 1)[1].split(")", 1)[0] + "+next1"
    entry = (f"governor ({version}) unstable; urgency=medium\n\n  * Test upgrade.\n\n"
             f" -- governor developers <governor@governor-ha.org>  Wed, 25 Nov 2026 20:00:00 +0000\n\n")
    with open(changelog, "w") as fh:
        fh.write(entry + old)
    result = subprocess.run(["dpkg-buildpackage", "-us", "-uc", "-b"], cwd=os.path.join(work, "src"),
                            capture_output=True, text=True)
    assert result.returncode == 0, result.stderr[-2000:]
    return os.path.join(work, f"governor_{version}_all.deb")
