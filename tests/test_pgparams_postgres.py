"""The validator against PostgreSQL itself: for settings of each type, generated values are given
to the installed server (`postgres -C NAME -c NAME=VALUE` on a scratch data directory, which parses
the value as a restart would without starting anything) and to governor's check. governor must
accept every value PostgreSQL accepts, and refuse every value it refuses (a value governor lets
through would stop PostgreSQL at its next restart)."""
from __future__ import annotations

import glob
import os
import pwd
import shutil
import subprocess
import tempfile

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from governor import pgparams, pgvalue
from governor.postgres.catalogue import catalogue
from tests.harness import PG_BIN, RUN_AS

pytestmark = pytest.mark.integration
CATALOGUE = catalogue(PG_BIN)


@pytest.fixture(scope="module")
def scratch():
    pw = pwd.getpwnam(RUN_AS)
    top = tempfile.mkdtemp(prefix="governor-pgparams-")
    os.chown(top, pw.pw_uid, pw.pw_gid)
    data = os.path.join(top, "data")
    subprocess.run([os.path.join(PG_BIN, "initdb"), "-D", data, "-A", "trust"], check=True, capture_output=True,
                   user=pw.pw_uid, group=pw.pw_gid, cwd=top)
    yield data
    shutil.rmtree(top)


def postgres_accepts(data: str, name: str, value: str) -> bool:
    pw = pwd.getpwnam(RUN_AS)
    done = subprocess.run([os.path.join(PG_BIN, "postgres"), "-D", data, "-C", name, "-c", f"{name}={value}"],
                          capture_output=True, text=True, user=pw.pw_uid, group=pw.pw_gid, cwd=data, timeout=30)
    return said_yes(done)


def said_yes(done: subprocess.CompletedProcess) -> bool:
    """Judged by what the server printed, not its exit status: the harness's reaper thread
    (tests/harness.py) may collect an exited `postgres` child before subprocess does, which then
    reads its status as 0."""
    return bool(done.stdout.strip()) and "FATAL" not in done.stderr and "ERROR" not in done.stderr


def governor_accepts(name: str, value: str) -> bool:
    return pgparams.check(name, value, CATALOGUE) is None


def mixed_case(word: str) -> st.SearchStrategy:
    return st.lists(st.booleans(), min_size=len(word), max_size=len(word)).map(
        lambda ups: "".join(c.upper() if up else c for c, up in zip(word, ups)))


SPACE = st.sampled_from(["", " ", "  ", "\t"])
DIGITS = st.integers(min_value=0, max_value=10**7).map(str)
NUMBER = st.one_of(
    DIGITS,
    st.integers(min_value=0, max_value=4095).map(lambda n: f"0{n:o}"),            # octal
    st.integers(min_value=0, max_value=4095).map(lambda n: f"0x{n:x}"),           # hexadecimal
    st.builds(lambda a, b: f"{a}.{b}", DIGITS, DIGITS),
    st.builds(lambda a, e: f"{a}e{e}", st.integers(0, 99), st.integers(-3, 6)),
    st.sampled_from([".5", "5.", "-1", "+3", "1e", "0x", "08", "1_000", "", "one"]),
)
UNIT = st.sampled_from(["", "B", "kB", "MB", "GB", "TB", "us", "ms", "s", "min", "h", "d", "mb", "Kb", "m", "x"])
NUMERIC_VALUE = st.builds(lambda pre, n, mid, u, post: f"{pre}{n}{mid}{u}{post}", SPACE, NUMBER, SPACE, UNIT, SPACE)
BOOL_WORD = st.sampled_from(["on", "off", "true", "false", "yes", "no", "1", "0", "t", "tr", "tru", "f", "fa",
                             "fals", "y", "ye", "n", "o", "of", "onn", "2", "enable", ""])
BOOL_VALUE = st.builds(lambda pre, w, post: (pre, w, post), SPACE, BOOL_WORD, SPACE).flatmap(
    lambda parts: mixed_case(parts[1]).map(lambda w: parts[0] + w + parts[2]))

# Words the server knows (it lists them only in an error's hint, so governor cannot refuse an
# unknown word; spacing and case it does check).
ENUM_VALUE = st.builds(lambda pre, w, post: (pre, w, post), SPACE,
                       st.sampled_from(["replica", "logical", "repeatable read", "read committed", "repeatable  read"]),
                       SPACE).flatmap(lambda parts: mixed_case(parts[1]).map(lambda w: parts[0] + w + parts[2]))
ENUM_SETTING_WORDS = {"wal_level": ("replica", "logical"),
                      "default_transaction_isolation": ("repeatable read", "read committed")}

# One setting of each kind of value governor checks.
CASES = {
    "log_checkpoints": BOOL_VALUE,              # boolean
    "shared_buffers": NUMERIC_VALUE,            # integer in 8kB blocks
    "statement_timeout": NUMERIC_VALUE,         # integer in ms
    "log_file_mode": NUMERIC_VALUE,             # integer, documented in octal
    "max_connections": NUMERIC_VALUE,           # integer without a unit
    "checkpoint_completion_target": NUMERIC_VALUE,  # real from 0 to 1
    "random_page_cost": NUMERIC_VALUE,          # real
    "wal_level": ENUM_VALUE,                    # one word
    "default_transaction_isolation": ENUM_VALUE,    # words with a space
}


@pytest.mark.parametrize("name", sorted(CASES))
def test_governor_accepts_exactly_what_postgresql_accepts(scratch, name):
    assert CATALOGUE is not None and name in CATALOGUE
    disagreements = []

    @settings(max_examples=60, deadline=None)
    @given(CASES[name])
    def compare(value):
        if name in ENUM_SETTING_WORDS and " ".join(value.split()).lower() not in ENUM_SETTING_WORDS[name]:
            return      # another setting's word: the server refuses it, governor cannot know
        ours, theirs = governor_accepts(name, value), postgres_accepts(scratch, name, value)
        if ours != theirs:
            disagreements.append((value, "governor accepts, PostgreSQL refuses" if ours else
                                  "PostgreSQL accepts, governor refuses"))

    compare()
    assert disagreements == [], f"{name}: {disagreements}"


def _servers():
    return sorted(glob.glob("/usr/lib/postgresql/*/bin/postgres"))


@pytest.mark.parametrize("postgres", _servers())
def test_the_unit_table_says_what_each_installed_server_does(postgres, scratch):
    """Every integer and real setting of every installed server: governor's table of units
    (governor/pgvalue.py) names the unit the server converts to, and no unit where it takes none.
    The server says it itself: `postgres -C NAME -c NAME=1MB` prints the value in the setting's
    base unit, or refuses a unit of the wrong kind."""
    pw = pwd.getpwnam(RUN_AS)
    confdir = os.path.join(os.path.dirname(scratch), "units")     # a configuration file is all -C needs
    os.makedirs(confdir, exist_ok=True)
    open(os.path.join(confdir, "postgresql.conf"), "w").close()
    os.chown(confdir, pw.pw_uid, pw.pw_gid)
    cat = catalogue(os.path.dirname(postgres))

    def ask(name: str, value: str):
        done = subprocess.run([postgres, "-D", confdir, "-C", name, "-c", f"{name}={value}"], capture_output=True,
                              text=True, user=pw.pw_uid, group=pw.pw_gid, cwd=confdir, timeout=30)
        if said_yes(done):
            return float(done.stdout.split()[0])
        return "wrong unit" if "invalid value" in done.stderr else "out of range"

    wrong = []
    for name, setting in sorted(cat.items()):
        if setting.type not in ("INTEGER", "REAL"):
            continue
        ours = pgvalue.UNITS.get(name)
        for kind, probes in ((pgvalue.MEMORY, ("1MB", "64kB", "1GB", "1TB")),
                             (pgvalue.TIME, ("1min", "1s", "1h", "1ms"))):
            answers = [(probe, ask(name, probe)) for probe in probes]
            if all(a == "wrong unit" for _p, a in answers):
                if ours is not None and pgvalue.BASES[ours][0] is kind:
                    wrong.append((name, ours, "the server takes no such unit"))
                continue
            probe, answer = next(((p, a) for p, a in answers if isinstance(a, float)), answers[0])
            mine, _why = pgvalue.parse_number(probe, setting.type == "INTEGER", ours)
            if not isinstance(answer, float) or mine is None or abs(mine - answer) > 1e-9 * max(1.0, abs(answer)):
                wrong.append((name, ours, f"{probe}: the server reads {answer}, governor {mine}"))
    assert wrong == []
