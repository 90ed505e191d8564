"""Shell completion: the bash scripts the packages install, sourced in a real bash with
bash-completion and asked to complete partial command lines; and their option lists checked
against governorctl's and governor's own argument parsers, so they cannot drift."""
from __future__ import annotations

import argparse
import os
import re
import subprocess

import pytest

from governor import cli
from governor.ctl import parser
from tests.harness import REPO

COMPLETION = os.path.join(REPO, "packaging", "completion")


def complete(command: str, line: str) -> list:
    """What bash offers for `line` (completing its last word; a trailing space starts a new one)."""
    script = f"""
source /usr/share/bash-completion/bash_completion
source {os.path.join(COMPLETION, command)}
COMP_LINE={line!r}; COMP_POINT=${{#COMP_LINE}}
read -ra COMP_WORDS <<< "$COMP_LINE"
[[ "$COMP_LINE" == *" " ]] && COMP_WORDS+=("")
COMP_CWORD=$(( ${{#COMP_WORDS[@]}} - 1 ))
_{command}
printf '%s\\n' "${{COMPREPLY[@]}}"
"""
    done = subprocess.run(["bash", "-c", script], capture_output=True, text=True, timeout=20, cwd="/tmp",
                          env={"PATH": "/usr/bin:/bin", "HOME": "/tmp"})
    assert done.returncode == 0, done.stderr
    return sorted(w for w in done.stdout.split("\n") if w)


@pytest.mark.parametrize("line,offered", [
    ("governorctl sw", ["switchover"]),
    ("governorctl re", ["reinit", "reload", "remove", "restart", "resume"]),
    ("governorctl --ca", ["--cacert"]),
    ("governorctl switchover --c", ["--cancel", "--candidate"]),
    ("governorctl -c /etc/governor list --f", ["--format"]),
    ("governorctl list --format ", ["json", "table", "yaml"]),
    ("governorctl migrate --to-api ", ["2", "3"]),
    ("governorctl query --format ", ["csv", "json", "table"]),
    ("governorctl query -c ", []),
    ("governorctl restart --role ", ["any", "leader", "replica"]),
    ("governorctl restart --s", ["--scheduled"]),
])
def test_governorctl_completes_commands_options_and_values(line, offered):
    assert complete("governorctl", line) == offered


def test_governor_completes_its_options():
    assert complete("governor", "governor --val") == ["--validate-config"]
    assert complete("governor", "governor --f") == ["--fence"]


def test_the_completion_knows_every_option_of_every_command_and_no_other():
    with open(os.path.join(COMPLETION, "governorctl")) as fh:
        text = fh.read()
    block = re.search(r"local -A options=\((.*?)\n    \)", text, re.S).group(1)
    listed = dict(re.findall(r'\[([a-z-]+)\]="([^"]*)"', block))
    sub = next(a for a in parser()._actions if isinstance(a, argparse._SubParsersAction))
    actual = {name: " ".join(sorted(o for a in sp._actions for o in a.option_strings if o not in ("-h", "--help")))
              for name, sp in sub.choices.items()}
    assert {k: " ".join(sorted(v.split())) for k, v in listed.items()} == actual
    commands = re.search(r'local commands="([^"]*)"', text).group(1).split()
    assert sorted(commands) == sorted(sub.choices)
    globals_ = set(re.search(r'local globals="([^"]*)"', text).group(1).split())
    assert globals_ == {o for a in parser()._actions for o in a.option_strings}
    with open(os.path.join(COMPLETION, "governor")) as fh:
        offered = set(re.search(r'compgen -W "(--[^"]*)"', fh.read()).group(1).split())
    assert offered == {o for a in cli.parser()._actions for o in a.option_strings}


def _options_with_choices():
    sub = next(a for a in parser()._actions if isinstance(a, argparse._SubParsersAction))
    for name, sp in sorted(sub.choices.items()):
        for action in sp._actions:
            if action.choices and action.option_strings:
                yield name, action.option_strings[-1], sorted(str(c) for c in action.choices)
    for action in parser()._actions:
        if action.choices and action.option_strings:
            yield "", action.option_strings[-1], sorted(str(c) for c in action.choices)


@pytest.mark.parametrize("command,option,choices", list(_options_with_choices()))
def test_the_completion_offers_exactly_each_options_choices(command, option, choices):
    line = f"governorctl {command} {option} " if command else f"governorctl {option} "
    assert complete("governorctl", line) == choices
