"""postgresql.archive and create_replica_methods: what governor writes into postgresql.conf,
and every bad value refused with its key before anything runs."""
from __future__ import annotations

import pytest

from governor import config
from governor.postgres import datadir
from governor.settings import ArchiveConfig, PgBackRest
from tests.test_config import minimal, problems, write


def load(tmp_path, **postgresql) -> config.Config:
    raw = minimal(tmp_path)
    raw["postgresql"].update(postgresql)
    return config.load(write(tmp_path / "g.yml", raw))


def test_pgbackrest_writes_both_commands_quoted_for_the_shell_and_for_postgresql(tmp_path):
    conf = tmp_path / "pgbackrest.conf"
    conf.write_text("[global]\n")
    cfg = load(tmp_path, data_dir=str(tmp_path / "my data"),
               archive={"pgbackrest": {"stanza": "main", "config": str(conf)}},
               create_replica_methods=["pgbackrest", "basebackup"])
    archive = cfg.postgresql.archive
    assert archive.mode == "on" and archive.create_replica_methods == ("pgbackrest", "basebackup")
    settings = archive.settings(cfg.postgresql.data_dir)
    assert settings["archive_command"] == (f"pgbackrest --stanza=main --config={conf} "
                                           f"'--pg1-path={tmp_path}/my data' archive-push %p")
    assert settings["restore_command"].endswith("archive-get %f \"%p\"")
    (tmp_path / "my data").mkdir()
    datadir.write_postgresql_conf(cfg.postgresql)
    text = (tmp_path / "my data" / "postgresql.conf").read_text()
    assert "archive_mode = 'on'" in text
    assert f"archive_command = 'pgbackrest --stanza=main --config={conf} ''--pg1-path={tmp_path}/my data'' " \
           "archive-push %p'" in text


def test_without_an_archive_section_nothing_changes():
    assert ArchiveConfig().settings("/d") == {}
    assert ArchiveConfig(mode="always", command="cp %p /a/%f").settings("/d") == {
        "archive_mode": "always", "archive_command": "cp %p /a/%f"}
    assert PgBackRest("s").argv("/d", "check", "--pg1-port=5") == ["pgbackrest", "--stanza=s", "--pg1-path=/d",
                                                                   "--pg1-port=5", "check"]


def test_yaml_on_and_off_are_modes(tmp_path):
    assert load(tmp_path, archive={"mode": True, "command": "true"}).postgresql.archive.mode == "on"
    assert load(tmp_path, archive={"mode": False, "command": "true"}).postgresql.archive.settings("/d") == {}


@pytest.mark.parametrize("postgresql,said", [
    ({"archive": {"mode": "sometimes", "command": "true"}}, "postgresql.archive.mode: expected one of off, on"),
    ({"archive": {"mode": "on"}}, "archive_mode on needs postgresql.archive.command or .pgbackrest"),
    ({"archive": {"command": "cp %p /a/%f\nrm -rf /"}}, "postgresql.archive.command: expected a one-line"),
    ({"archive": {"pgbackrest": {"stanza": "x; rm -rf /"}}}, "pgbackrest.stanza: expected a stanza name"),
    ({"archive": {"pgbackrest": {}}}, "postgresql.archive.pgbackrest.stanza: required"),
    ({"archive": {"pgbackrest": {"stanza": "m", "config": "pgbackrest.conf"}}}, "expected an absolute path"),
    ({"archive": {"pgbackrest": {"stanza": "m", "config": "/nonexistent.conf"}}}, "/nonexistent.conf: no such file"),
    ({"archive": {"pgbackrest": {"stanza": "m", "repo": "/x"}}}, "pgbackrest.repo: unknown setting"),
    ({"archive": {"pgbackrest": {"stanza": "m"}, "command": "true"}}, "either pgbackrest or command"),
    ({"archive": {"command": "true"}, "parameters": {"archive_command": "false"}},
     "postgresql.parameters.archive_command: set by governor from postgresql.archive"),
    ({"archive": {"command": "true", "restore_command": "true"}, "recovery_conf": {"restore_command": "x"}},
     "postgresql.recovery_conf.restore_command: set by governor"),
    ({"create_replica_methods": ["pgbackrest"]}, "pgbackrest needs postgresql.archive.pgbackrest"),
    ({"create_replica_methods": ["rsync"]}, "expected a list of distinct methods among pgbackrest, basebackup"),
    ({"create_replica_methods": []}, "expected a list of distinct methods"),
    ({"create_replica_methods": ["basebackup", "basebackup"]}, "expected a list of distinct methods"),
])
def test_bad_archive_settings_are_refused_with_their_key(tmp_path, postgresql, said):
    raw = minimal(tmp_path)
    raw["postgresql"].update(postgresql)
    found = problems(write(tmp_path / "g.yml", raw))
    assert any(said in p for p in found), found


def test_a_restore_bootstrap_keeps_its_target_with_its_zone(tmp_path):
    conf = tmp_path / "pgbackrest.conf"
    conf.write_text("[global]\n")
    cfg = load(tmp_path, bootstrap={"method": "pgbackrest", "stanza": "main", "config": str(conf),
                                    "recovery_target_time": "2026-11-27T10:00:00.5Z"},
               archive={"pgbackrest": {"stanza": "copy", "config": str(conf)}})
    restore = cfg.postgresql.restore
    assert restore.pgbackrest == PgBackRest("main", str(conf))
    assert restore.target_time == "2026-11-27 10:00:00.500000+00:00"
    assert load(tmp_path).postgresql.restore is None


@pytest.mark.parametrize("bootstrap,archive,said", [
    ({"method": "rsync"}, None, "postgresql.bootstrap.method: expected initdb or pgbackrest"),
    ({"stanza": "main"}, None, "postgresql.bootstrap.stanza: only with method: pgbackrest"),
    ({"method": "pgbackrest"}, None, "postgresql.bootstrap.stanza: required"),
    ({"method": "pgbackrest", "stanza": "main", "recovery_target_time": "2026-11-27 10:00"}, None,
     "expected a time zone too"),
    ({"method": "pgbackrest", "stanza": "main", "recovery_target_time": "yesterday"}, None,
     "expected a date and time such as"),
    ({"method": "pgbackrest", "stanza": "main"}, {"pgbackrest": {"stanza": "main"}},
     "must archive to another stanza than 'main'"),
])
def test_bad_bootstrap_settings_are_refused_with_their_key(tmp_path, bootstrap, archive, said):
    raw = minimal(tmp_path)
    raw["postgresql"]["bootstrap"] = bootstrap
    if archive:
        raw["postgresql"]["archive"] = archive
    found = problems(write(tmp_path / "g.yml", raw))
    assert any(said in p for p in found), found
