"""governorctl show-config and edit-config: the dynamic configuration kept in etcd.

Every change is validated like the members validate it, shown as a diff, and written with a
compare-and-swap on the version that was read, so two operators cannot overwrite each other.
"""
from __future__ import annotations

import argparse
import os
import shlex
import shutil
import subprocess
import sys
import tempfile
from typing import Any, Dict, List, Tuple

import yaml

from governor import config as config_mod
from governor import dynamic, safe_yaml
from governor.cluster import Cluster
from governor.ctl_common import EXIT_FAILED, EXIT_OK, EXIT_USAGE, Stop, audit_own_write, confirm, refuse
from governor.dcs import DCS, DCSError
from governor.postgres.catalogue import catalogue

HEADER = """\
# The dynamic configuration of cluster {scope}, kept in etcd: every member applies it, and it
# takes precedence over the members' files. Keys: ttl, loop_wait, retry_timeout,
# maximum_lag_on_failover, synchronous_*, failsafe_mode, postgresql.parameters.NAME, and
# standby_cluster (better changed with promote-cluster / demote-cluster).
# Save and quit the editor: governorctl shows the change and asks before writing it.
# An unchanged file changes nothing; an empty one removes every dynamic setting.
"""


def add_parsers(sub: argparse._SubParsersAction) -> None:
    sub.add_parser("show-config", help="print the dynamic configuration kept in etcd")
    ec = sub.add_parser("edit-config", help="change the dynamic configuration (validated, compare-and-swap)",
                        description="Cluster-wide settings every member applies: ttl, loop_wait, retry_timeout, "
                                    "maximum_lag_on_failover and postgresql.parameters.NAME. They take "
                                    "precedence over the members' files. Without --set or --file it opens "
                                    "$VISUAL or $EDITOR (else editor, vi) on the YAML, then shows the change "
                                    "and asks before writing it. A PostgreSQL setting that needs a restart "
                                    "shows up as pending in `list`; `restart --pending` applies it.")
    ec.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                    help="e.g. --set loop_wait=5 --set postgresql.parameters.work_mem=16MB; VALUE is YAML, "
                         "'null' removes the key; repeatable")
    ec.add_argument("--file", metavar="FILE", help="a YAML mapping merged in the same way ('-' for stdin)")
    ec.add_argument("--force", action="store_true", help="with the editor: write without asking")


def show_config(cluster: Cluster) -> int:
    print(yaml.safe_dump(cluster.config, sort_keys=True).rstrip() if cluster.config
          else "# no dynamic settings: every member uses its configuration files")
    return EXIT_OK


def edit_config(args: argparse.Namespace, dcs: DCS, cluster: Cluster) -> int:
    interactive = not (args.set or args.file)
    edited = _edit_in_editor(dcs.cfg.scope, cluster.config) if interactive else None
    new = dynamic.patch({}, edited[0]) if edited else dynamic.patch(cluster.config, _changes(args))
    problems = dynamic.validate(new, *_timing_and_catalogue(args))
    if problems:
        print("governorctl: refused, nothing written:\n  " + "\n  ".join(problems)
              + (f"\n(your edit is kept in {edited[1]})" if edited else ""), file=sys.stderr)
        return EXIT_FAILED
    if edited:
        os.unlink(edited[1])
    diff = dynamic.diff(cluster.config, new)
    if not diff:
        print("no change")
        return EXIT_OK
    lines = [f"{key}: {'(unset)' if old is None else old} -> {'(unset)' if value is None else value}"
             for key, old, value in diff]
    if interactive and not args.force:
        print("\n".join(lines))
        if not confirm("Apply these changes? [y/N] ", "y"):
            return refuse("not confirmed")
    try:
        if not dcs.set_config(new, cluster.config_index):
            return refuse("the dynamic configuration was changed by someone else meanwhile; "
                          "look at `governorctl show-config` and try again")
        audit_own_write(dcs, "edit-config", {key: value for key, _old, value in diff})
    except DCSError as exc:
        print(f"governorctl: {exc}", file=sys.stderr)
        return EXIT_FAILED
    print("\n".join(lines) if not interactive or args.force else "applied")
    return EXIT_OK


def _changes(args: argparse.Namespace) -> Dict[str, Any]:
    """What --file and --set ask for, merged; Stop(usage) on anything unreadable."""
    changes: Dict[str, Any] = {}
    try:
        if args.file:
            data = sys.stdin.buffer.read(safe_yaml.MAX_BYTES + 1) if args.file == "-" \
                else safe_yaml.read_bytes(args.file)
            if len(data) > safe_yaml.MAX_BYTES:
                raise safe_yaml.YamlProblem("larger than 1 MB")
            changes = dynamic.combine(changes, _mapping(safe_yaml.loads(safe_yaml.decode(data))))
        for item in args.set:
            key, sep, value = item.partition("=")
            if not sep or not key.strip():
                print(f"governorctl: --set: expected KEY=VALUE, got {item!r}", file=sys.stderr)
                raise Stop(EXIT_USAGE)
            changes = dynamic.combine(changes, dynamic.nested(key.strip(), safe_yaml.loads(value)))
    except (safe_yaml.YamlProblem, OSError) as exc:
        print(f"governorctl: {args.file or '--set'}: {exc}", file=sys.stderr)
        raise Stop(EXIT_USAGE) from None
    if not changes:
        print("governorctl: edit-config: nothing to change", file=sys.stderr)
        raise Stop(EXIT_USAGE)
    return changes


def _mapping(loaded: Any) -> Dict[str, Any]:
    if loaded is None:
        return {}
    if not isinstance(loaded, dict):
        raise safe_yaml.YamlProblem("expected a YAML mapping of settings")
    return loaded


def editor_command() -> List[str]:
    """$VISUAL, $EDITOR, else Debian's `editor` alternative, else vi."""
    for variable in ("VISUAL", "EDITOR"):
        if os.environ.get(variable, "").strip():
            return shlex.split(os.environ[variable])
    for fallback in ("editor", "vi"):
        if shutil.which(fallback):
            return [fallback]
    print("governorctl: no editor: set EDITOR, or use --set / --file", file=sys.stderr)
    raise Stop(EXIT_USAGE)


def _edit_in_editor(scope: str, current: Dict[str, Any]) -> Tuple[Dict[str, Any], str]:
    """The configuration as the operator left it in the editor (the whole of it, not a patch),
    and the file, which the caller removes once it is used: one that cannot be used is kept, and
    named, so the edit is not lost."""
    command = editor_command()
    text = HEADER.format(scope=scope) + (yaml.safe_dump(current, sort_keys=True) if current else "")
    fd, path = tempfile.mkstemp(prefix=f"governor-{scope}-", suffix=".yaml")   # mode 0600
    with os.fdopen(fd, "w", encoding="utf-8") as out:
        out.write(text)
    try:
        finished = subprocess.run([*command, path], check=False)
    except OSError as exc:
        os.unlink(path)
        print(f"governorctl: cannot run the editor {command[0]}: {exc.strerror}", file=sys.stderr)
        raise Stop(EXIT_USAGE) from None
    if finished.returncode != 0:
        os.unlink(path)
        raise Stop(refuse(f"the editor {command[0]} exited with status {finished.returncode}"))
    try:
        return _mapping(safe_yaml.loads(safe_yaml.decode(safe_yaml.read_bytes(path)))), path
    except safe_yaml.YamlProblem as exc:
        print(f"governorctl: {path}: {exc}; nothing written (your edit is kept in that file)", file=sys.stderr)
        raise Stop(EXIT_USAGE) from None


def _timing_and_catalogue(args: argparse.Namespace) -> tuple:
    """The file configuration's timing, the base the ttl rule is checked against, and the
    PostgreSQL settings its server binary knows (None where no server is installed)."""
    if not args.dcs_url:
        try:
            cfg = config_mod.load(args.config)
            return dynamic.timing(cfg), catalogue(cfg.postgresql.bin_dir)
        except config_mod.ConfigError:
            pass
    return dynamic.DEFAULT_TIMING, None
