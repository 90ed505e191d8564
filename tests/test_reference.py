"""The configuration reference (governor.yml(5), docs/configuration.md) covers exactly the keys
the validator reads, says truthfully how each applies, and is what tools/config-reference makes."""
from __future__ import annotations

import logging
import os
import re
import subprocess

from governor import dynamic, reconfigure, reference
from governor import log as log_mod

ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..")


def test_every_key_the_validator_reads_is_in_the_reference_and_nothing_else():
    read, described = set(reference.declared()), set(reference.SETTINGS)
    assert read - described == set(), "keys the validator reads that the reference does not describe"
    assert described - read == set(), "keys the reference describes that the validator does not read"
    assert len(read) > 90


def test_the_shipped_reference_is_up_to_date():
    from governor import __version__
    for path, text in (("docs/configuration.md", reference.markdown()),
                       ("packaging/man/governor.yml.5", reference.manpage(__version__))):
        with open(os.path.join(ROOT, path), encoding="utf-8") as fh:
            assert fh.read() == text, f"{path} is out of date: run tools/config-reference"


def test_the_man_page_renders_without_warnings():
    done = subprocess.run(["man", "--warnings", "-l", "-Tutf8", os.path.join(ROOT, "packaging/man/governor.yml.5")],
                          capture_output=True, text=True, env={**os.environ, "MANWIDTH": "80"})
    assert done.returncode == 0 and not done.stderr.strip(), done.stderr
    shown = re.sub(".\b", "", done.stdout)     # the terminal's bold and underline
    assert "postgresql.replication.password_file" in shown and "read at start" in shown


# RESTART_ONLY names fields of the validated configuration; these are the keys they come from.
FIELD_KEYS = {"listen_host": "listen", "port": "listen", "connect_host": "connect_address"}


def test_restart_only_keys_are_the_ones_a_reload_keeps():
    keys = set(reference.declared())
    kept = set()
    for section, names in reconfigure.RESTART_ONLY.items():
        if names is None:
            kept |= {k for k in keys if k.startswith(section + ".")}
        else:
            kept |= {f"{section}.{FIELD_KEYS.get(n, n)}" for n in names if n != "socket_dir"}
    said = {k for k, s in reference.SETTINGS.items() if s.applies == reference.RESTART}
    assert said == kept


def test_dynamic_keys_are_the_ones_etcd_can_set():
    to_file = {"ttl": {"etcd.ttl"}, "maximum_lag_on_failover": {"postgresql.maximum_lag_on_failover"},
               "postgresql": {"postgresql.parameters"},
               "standby_cluster": {"standby_cluster.host", "standby_cluster.port", "standby_cluster.primary_slot_name"}}
    expected = set().union(*(to_file.get(k, {k}) for k in dynamic.TOP_KEYS))
    said = {k for k, s in reference.SETTINGS.items() if s.applies == reference.DYNAMIC}
    assert said == expected


def test_a_reload_changes_the_log_format(capsys):
    root = logging.getLogger()
    saved = list(root.handlers), root.level
    try:
        log_mod.setup("INFO", fmt="text")
        logging.getLogger("governor").info("before")
        log_mod.reformat("json")
        logging.getLogger("governor").info("after")
        err = capsys.readouterr().err.splitlines()
        assert err[0].endswith("INFO: before") and err[1].startswith("{") and '"after"' in err[1], err
    finally:
        root.handlers[:] = saved[0]
        root.setLevel(saved[1])


def test_the_readme_names_every_dynamic_key():
    """The README's list of dynamic keys drifted once: it is checked against the declarations."""
    with open(os.path.join(os.path.dirname(__file__), "..", "README.md"), encoding="utf-8") as f:
        text = f.read()
    paragraph = text[text.index("Dynamic keys ("):].split("\n\n")[0]
    missing = [k for k in dynamic.TOP_KEYS if f"`{k}`" not in paragraph and f"`{k}." not in paragraph]
    assert not missing, f"README's 'Dynamic keys' paragraph lacks {missing}"
