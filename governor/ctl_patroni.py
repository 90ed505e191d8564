"""Coming from Patroni (README, "Coming from Patroni"):

`governorctl migrate --from-patroni PATRONI_YML`: governor's files from Patroni's
(patroni_config.py), with the cluster's dynamic configuration read from etcd where it can be.
Prints every key not carried over; writes nothing and exits 2 when one that changes safety
cannot be translated, or when the result is not a configuration governor accepts.

`governorctl migrate --takeover check|prepare|finish`: the live takeover around it. prepare
checks the Patroni cluster (paused, a leader, every member running, etcd v3) and turns on
governor's maintenance mode, so that no governor started meanwhile promotes anything; the
operator stops Patroni (paused, it leaves PostgreSQL running) and starts governor on every
host, the leader's first (its governor moves the leader key onto its own lease in one
compare-and-swap, or takes it if it expired: the primary runs, nobody else may race); finish
checks that governor runs everywhere, rewrites Patroni's keys in governor's format (each with
compare-and-swap) and ends maintenance mode."""
from __future__ import annotations

import argparse
import json
import os
import sys
from typing import Optional

import yaml

from governor import config as config_mod
from governor import patroni_config, patroni_keys, safe_yaml
from governor.cluster import Cluster
from governor.ctl_common import EXIT_FAILED, EXIT_OK, EXIT_USAGE, refuse
from governor.ctl_generate import root_postgres
from governor.dcs import DCS, DCSError
from governor.dcs import make as make_dcs
from governor.settings import slot_name_for
from governor.sync import SyncState

HEADER = "# governor's configuration, translated from {source} by governorctl migrate --from-patroni\n"


def add_arguments(mg: argparse.ArgumentParser) -> None:
    mg.add_argument("--from-patroni", metavar="PATRONI_YML",
                    help="translate this Patroni configuration file into governor's (printed, or --output)")
    mg.add_argument("--output", metavar="FILE", help="with --from-patroni: write governor's file here (mode 0640, "
                                                      "group postgres; an existing file is not replaced)")
    mg.add_argument("--takeover", choices=("check", "prepare", "finish"),
                    help="take over the running Patroni cluster of this scope: check it, prepare (governor's "
                         "maintenance mode on), finish (Patroni's keys rewritten, maintenance mode off)")
    mg.add_argument("--no-etcd", action="store_true", help="with --from-patroni: do not read the cluster's dynamic "
                                                           "configuration from etcd (bootstrap.dcs is used)")


def from_patroni(args: argparse.Namespace) -> int:
    try:
        patroni = safe_yaml.load_file(args.from_patroni)
    except (OSError, ValueError, safe_yaml.YamlProblem) as exc:
        print(f"governorctl: {args.from_patroni}: {exc}", file=sys.stderr)
        return EXIT_USAGE
    translation = patroni_config.translate(patroni)
    dynamic, where = None, "bootstrap.dcs in the file"
    if not translation.refused and not args.no_etcd:
        dynamic, where = _dynamic_from_etcd(translation.files)
        translation = patroni_config.translate(patroni, dynamic)
    for note in translation.notes:
        print(f"  note: {note}", file=sys.stderr)
    if translation.refused:
        print(f"governorctl: {args.from_patroni}: governor cannot take this cluster over as configured:",
              file=sys.stderr)
        for problem in translation.refused:
            print(f"  - {problem}", file=sys.stderr)
        return EXIT_USAGE
    try:
        config_mod.validate(translation.files, {}, f"{args.from_patroni} (translated)")
    except config_mod.ConfigError as exc:
        print(f"governorctl: the translation of {args.from_patroni} is not a configuration governor accepts:\n{exc}",
              file=sys.stderr)
        return EXIT_USAGE
    text = HEADER.format(source=os.path.abspath(args.from_patroni)) + \
        f"# the cluster-wide settings came from {where}\n" + \
        yaml.safe_dump(translation.files, default_flow_style=False, sort_keys=False)
    if not args.output or args.output == "-":
        sys.stdout.write(text)
        return EXIT_OK
    try:
        fd = os.open(args.output, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o640)
    except OSError as exc:
        print(f"governorctl: {args.output}: {exc.strerror} (an existing file is not replaced)", file=sys.stderr)
        return EXIT_USAGE
    with os.fdopen(fd, "w") as fh:
        fh.write(text)
    root_postgres(args.output, 0o640)       # it holds passwords: as governorctl generate-config's files
    print(f"wrote {args.output} ({len(translation.notes)} note(s) above)", file=sys.stderr)
    return EXIT_OK


def _dynamic_from_etcd(files: dict) -> tuple:
    """Patroni's `config` key (the cluster's dynamic configuration), or None with why not."""
    try:
        etcd = config_mod.validate(files, {}, "translated").etcd
    except config_mod.ConfigError:
        return None, "bootstrap.dcs in the file (the translated etcd settings do not validate)"
    dcs = make_dcs(etcd, retry_timeout=5)
    try:
        found = dcs.read_key("config")
        text: Optional[str] = found[0] if found else None
    except DCSError as exc:
        print(f"  note: etcd: {exc}: the cluster's configuration there was not read", file=sys.stderr)
        return None, "bootstrap.dcs in the file (etcd could not be read)"
    finally:
        dcs.close()
    try:
        data = json.loads(text) if text else None
    except ValueError:
        data = None
    if not isinstance(data, dict):
        return None, "bootstrap.dcs in the file (etcd holds no readable configuration for the scope)"
    return data, f"the cluster's configuration in etcd ({dcs.describe()})"


def _json(found: object) -> object:
    try:
        return json.loads(found[0]) if found and found[0] else None     # type: ignore[index]
    except ValueError:
        return None


def takeover(args: argparse.Namespace, dcs: DCS, cluster: Cluster) -> int:
    if dcs.cfg.api != 3:
        return refuse("the cluster's keys are in etcd's v2 API: a live takeover needs v3 (move Patroni to its "
                      "etcd3 section first; or stop Patroni and start governor with etcd.api: 2)")
    try:
        me = config_mod.load(args.config).postgresql.name if not args.dcs_url else None
        found = {key: dcs.read_key(key) for key in ("config", "history", "status", "sync", "failsafe", "failover")}
    except (config_mod.ConfigError, DCSError) as exc:
        print(f"governorctl: {exc}", file=sys.stderr)
        return EXIT_FAILED
    config, status = _json(found["config"]), _json(found["status"])
    # Patroni's members by their slot names (retain_slots: members only, also those whose key
    # expired since Patroni stopped); a member's own record, while it has one
    retained = status.get("retain_slots") if isinstance(status, dict) else None
    slots = {str(s) for s in retained} if isinstance(retained, list) else set()
    names = sorted(m.name for m in cluster.members)
    if args.takeover == "finish":
        return _finish(dcs, cluster, found, config, names, slots)
    problems = []
    if not isinstance(config, dict):
        problems.append(f"etcd holds no Patroni configuration for scope {dcs.cfg.scope} (is etcd.scope Patroni's?)")
    elif config.get("pause") is not True and not cluster.paused:
        problems.append("Patroni is not paused: patronictl pause --wait")
    leader = cluster.member(cluster.leader.name) if cluster.leader else None
    if leader is None or leader.role not in ("primary", "master") or leader.state != "running":
        problems.append("no running primary holds the leader key: the takeover starts from a healthy cluster")
    if found["failover"]:
        problems.append("a switchover or failover is pending in Patroni (its failover key): let it happen or cancel "
                        "it (patronictl flush SCOPE switchover) first")
    for m in cluster.members:
        if m.state != "running":
            problems.append(f"{m.name} is {m.state}, not running")
    if me and me not in names:
        problems.append(f"this member's name {me!r} is not one of the cluster's ({', '.join(names)}): translate "
                        "this host's own Patroni file")
    print(f"Patroni cluster {dcs.cfg.scope}: leader {cluster.leader.name if cluster.leader else '-'}, members "
          f"{', '.join(f'{m.name} ({m.role}, {m.state}, {_runs(m)})' for m in cluster.members)}")
    if problems:
        print(f"not ready for the takeover ({len(problems)} problem(s)):")
        for problem in problems:
            print(f"  - {problem}")
        return EXIT_FAILED
    if args.takeover == "check":
        print("ready: governorctl migrate --takeover prepare")
        return EXIT_OK
    try:
        dcs.set_paused(True)
    except DCSError as exc:
        print(f"governorctl: {exc}", file=sys.stderr)
        return EXIT_FAILED
    print("governor's maintenance mode is on (Patroni ignores it). Next, on every host: systemctl stop patroni "
          "(paused, it leaves PostgreSQL running); then systemctl enable --now governor, on the leader's host "
          f"({cluster.leader.name if cluster.leader else '?'}) first and within ttl; then governorctl migrate "
          "--takeover finish")
    return EXIT_OK


def _runs(m: object) -> str:
    return "governor" if getattr(m, "pg_majors", ()) else "Patroni"


def _finish(dcs: DCS, cluster: Cluster, found: dict, config: object, names: list, slots: set) -> int:
    problems = []
    if not cluster.paused:
        problems.append("governor's maintenance mode is off: the takeover was not prepared (governorctl migrate "
                        "--takeover prepare), or is finished")
    by_name = {m.name: m for m in cluster.members}
    for name in names:
        m = by_name[name]
        if not m.pg_majors:
            problems.append(f"{name} does not run governor yet (stop Patroni there, start governor)")
        elif m.state != "running":
            problems.append(f"{name} is {m.state}, not running")
    for slot in sorted(slots - {slot_name_for(n) for n in names}):
        problems.append(f"Patroni's member with slot {slot} runs neither Patroni nor governor now: start governor "
                        "there (a member gone for good: remove it from retain_slots in Patroni's status key)")
    leader = by_name.get(cluster.leader.name) if cluster.leader else None
    if leader is None or leader.role != "primary" or not leader.pg_majors:
        problems.append("the leader key is not held by a governor running the primary")
    if problems:
        print(f"the takeover cannot finish yet ({len(problems)} problem(s)):")
        for problem in problems:
            print(f"  - {problem}")
        return EXIT_FAILED
    done = []
    try:
        if isinstance(config, dict) and found["config"]:
            new, left = patroni_keys.dynamic_config(config)
            if not dcs.write_key("config", json.dumps(new, sort_keys=True, separators=(",", ":")),
                                 found["config"][1]):
                return refuse("the configuration in etcd changed meanwhile: run this again")
            done.append(f"config rewritten in governor's format (left out: {'; '.join(left) or 'nothing'})")
        old_history = _json(found["history"])
        if found["history"] and isinstance(old_history, list) and any(isinstance(r, list) for r in old_history):
            entries = patroni_keys.history(old_history) + [r for r in old_history if isinstance(r, dict)]
            if not dcs.write_key("history", json.dumps(entries, separators=(",", ":")), found["history"][1]):
                return refuse("the history in etcd changed meanwhile: run this again")
            done.append(f"history rewritten ({len(entries)} promotion(s))")
        for key, parses in (("status", lambda text: False),
                            ("sync", lambda text: SyncState.from_json(text) is not None),
                            ("failsafe", lambda text: cluster.failsafe is not None)):
            if found[key] and not parses(found[key][0]) and dcs.delete_key(key, found[key][1]):
                done.append(f"Patroni's {key} key removed")
        dcs.set_paused(False)
    except DCSError as exc:
        print(f"governorctl: {exc}", file=sys.stderr)
        return EXIT_FAILED
    for line in done:
        print(line)
    print(f"maintenance mode off: governor manages {dcs.cfg.scope} ({', '.join(names)}); Patroni can be removed")
    return EXIT_OK
