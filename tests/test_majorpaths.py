"""`{major}` in data_dir, config_dir and systemd_unit (governor/majorpaths.py): the templates stand
for the version the host's cluster runs, so a major upgrade of Debian's layout changes no file."""
from __future__ import annotations

import os

import pytest

from governor import bindir
from governor import majorpaths as layout


def cluster(root, major: int, attempt: bool = False) -> str:
    data = os.path.join(root, str(major), "main")
    os.makedirs(data)
    with open(os.path.join(data, "PG_VERSION"), "w") as fh:
        fh.write(f"{major}\n")
    if attempt:
        open(data + layout.ATTEMPT, "w").close()
    return data


def resolve(root, installed=(15, 17)):
    return layout.resolve(os.path.join(str(root), "{major}", "main"), installed, bindir.data_major)


def test_the_cluster_there_names_the_major(tmp_path):
    cluster(tmp_path, 15)
    assert resolve(tmp_path) == 15, "17 installed beside it changes nothing"


def test_after_an_upgrade_the_new_cluster_wins_while_the_old_is_kept(tmp_path):
    old = cluster(tmp_path, 15)
    cluster(tmp_path, 17)
    layout.mark_moved(old, 17)
    assert resolve(tmp_path) == 17
    assert layout.moved_to(old) == 17


def test_a_cluster_governor_did_not_make_beside_its_own_is_an_error_not_a_guess(tmp_path):
    """Debian's postgresql-17 package, or an operator's pg_createcluster, made 17/main beside
    governor's 15/main: running the empty one would be a cluster nobody wrote to."""
    cluster(tmp_path, 15)
    cluster(tmp_path, 17)
    with pytest.raises(layout.Ambiguous, match="15/main.*17/main"):
        resolve(tmp_path)


def test_a_replica_that_moved_on_and_is_cloning_runs_the_new_major(tmp_path):
    old = cluster(tmp_path, 15)
    os.makedirs(tmp_path / "17" / "main")          # empty until the clone is done
    layout.mark_moved(old, 17)
    assert resolve(tmp_path, installed=(15, 17, 18)) == 17


def test_a_moved_mark_that_says_nonsense_is_no_mark(tmp_path):
    old = cluster(tmp_path, 15)
    with open(old + layout.MOVED, "w") as fh:
        fh.write("seventeen\n")
    assert layout.moved_to(old) is None
    assert resolve(tmp_path) == 15


def test_a_new_cluster_governor_is_still_making_does_not_count(tmp_path):
    """A governor restarted while pg_upgrade runs must run the old cluster's settings."""
    cluster(tmp_path, 15)
    cluster(tmp_path, 17, attempt=True)
    assert resolve(tmp_path) == 15


def test_a_directory_whose_version_file_says_otherwise_does_not_count(tmp_path):
    cluster(tmp_path, 15)
    os.makedirs(tmp_path / "17" / "main")
    (tmp_path / "17" / "main" / "PG_VERSION").write_text("15\n")
    assert resolve(tmp_path) == 15


def test_an_empty_host_takes_the_newest_installed(tmp_path):
    assert resolve(tmp_path) == 17
    assert resolve(tmp_path, installed=()) is None
    os.makedirs(tmp_path / "15" / "main")      # emptied for a clone of the leader, which runs 15
    assert resolve(tmp_path) == 15


def test_fill_puts_the_major_in_each_setting():
    assert layout.fill("/etc/postgresql/{major}/main", 17) == "/etc/postgresql/17/main"
    assert layout.fill("postgresql@{major}-main", 17) == "postgresql@17-main"
    assert layout.fill(None, 17) is None


@pytest.mark.parametrize("value", ["/var/lib/postgresql/{major}{major}/main", "/var/lib/pg{major}/main",
                                   "/var/lib/postgresql/{major}/{name}", "/var/lib/{MAJOR}/main", "{major}x"])
def test_a_template_that_cannot_be_read_back_is_refused(value):
    assert layout.template_problem(value)


@pytest.mark.parametrize("value", ["/var/lib/postgresql/{major}/main", "/etc/postgresql/{major}/main",
                                   "postgresql@{major}-main", "/srv/pg/{major}"])
def test_debians_layout_is_a_valid_template(value):
    assert layout.template_problem(value) is None
