"""Debian's configuration directory made for the next major (governor/postgres/clusterconf.py)."""
from __future__ import annotations

import os

from governor.postgres import clusterconf

DEBIAN_15 = """# PostgreSQL configuration file
data_directory = '/var/lib/postgresql/15/main'		# use data in another directory
hba_file = '/etc/postgresql/15/main/pg_hba.conf'	# host-based authentication file
ident_file = '/etc/postgresql/15/main/pg_ident.conf'	# ident configuration file
external_pid_file = '/var/run/postgresql/15-main.pid'			# write an extra PID file
port = 5432				# (change requires restart)
shared_buffers = 128MB			# min 128kB
cluster_name = '15/main'			# added to process titles
#archive_command = '/15/'
include_dir = 'conf.d'			# include files ending in '.conf' from
"""


def test_the_paths_and_the_name_follow_the_version_and_nothing_else(tmp_path):
    source, target = tmp_path / "15" / "main", tmp_path / "17" / "main"
    (source / "conf.d").mkdir(parents=True)
    (source / "postgresql.conf").write_text(DEBIAN_15)
    (source / "pg_hba.conf").write_text("local all postgres peer\n")
    (source / "start.conf").write_text("auto\n")
    (source / "conf.d" / "governor.conf").write_text("wal_level = 'replica'\n")
    clusterconf.copy_for_major(str(source), str(target), 15, 17)
    text = (target / "postgresql.conf").read_text()
    assert "data_directory = '/var/lib/postgresql/17/main'\t\t# use data in another directory" in text
    assert "hba_file = '/etc/postgresql/17/main/pg_hba.conf'" in text
    assert "ident_file = '/etc/postgresql/17/main/pg_ident.conf'" in text
    assert "external_pid_file = '/var/run/postgresql/17-main.pid'" in text  # Debian's name: 15-main, not /15/
    assert "cluster_name = '17/main'" in text
    assert "#archive_command = '/15/'" in text and "shared_buffers = 128MB" in text
    assert (target / "pg_hba.conf").read_text() == "local all postgres peer\n"
    assert (target / "conf.d" / "governor.conf").exists()
    assert (target / "start.conf").read_text().splitlines()[-1] == "manual"
    assert (source / "start.conf").read_text() == "auto\n", "the old one is not touched here"
    assert not os.path.exists(str(target) + ".governor-new")


def test_an_existing_directory_is_left_as_it_is(tmp_path):
    source, target = tmp_path / "15" / "main", tmp_path / "17" / "main"
    source.mkdir(parents=True)
    (source / "postgresql.conf").write_text(DEBIAN_15)
    target.mkdir(parents=True)
    (target / "postgresql.conf").write_text("mine\n")
    clusterconf.copy_for_major(str(source), str(target), 15, 17)
    assert (target / "postgresql.conf").read_text() == "mine\n"
