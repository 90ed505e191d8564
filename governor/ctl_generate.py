"""`governorctl generate-config`: a per-host local.yml from the few facts that differ between
hosts (name, address, the etcd endpoints), with passwords generated once per cluster and
taken over from the first host's file on the others."""
from __future__ import annotations

import argparse
import grp
import ipaddress
import os
import secrets
import sys
import tempfile
from typing import Dict, List, Optional

import yaml

from governor import config as config_mod
from governor import ctl_instance
from governor.checker import parse_host_port
from governor.ctl_common import EXIT_FAILED, EXIT_OK, EXIT_USAGE

API_USER = "governor"
HEADER = """\
# Written by `governorctl generate-config` for member {name} of cluster {scope}.
# It holds passwords: keep it mode 0640, owner root, group postgres. Every host of the cluster
# needs the same passwords: generate the other hosts' files with
#   governorctl generate-config --passwords-from <this file> ...
"""


def add_parser(sub: argparse._SubParsersAction) -> None:
    gen = sub.add_parser(
        "generate-config", help="write this host's /etc/governor/local.yml (see README, \"Three hosts\")",
        description="Write a per-host governor configuration (the cluster's scope: governorctl's --scope, default "
                    "main): PostgreSQL listens on all addresses and is "
                    "reached at --address, the API and exporter likewise, replication is allowed from "
                    "--network. Passwords are generated, or taken from --passwords-from (the file written on "
                    "the first host) so every host has the same. The result is validated before it is written.")
    gen.add_argument("--name", required=True, help="this member's name, unique in the cluster (e.g. db1)")
    gen.add_argument("--address", required=True, help="this host's address the other hosts and haproxy use")
    gen.add_argument("--etcd", required=True, help="etcd client endpoints, comma separated host:port")
    gen.add_argument("--network", help="networks allowed to replicate and log in, e.g. 10.0.0.0/24 "
                                       "(default: --address's /24, or /64 for IPv6)")
    gen.add_argument("--data-dir", help="default /var/lib/postgresql/governor")
    gen.add_argument("--passwords-from", metavar="FILE", help="a governor configuration to take the passwords from")
    gen.add_argument("--output", help="default /etc/governor/local.yml; - for standard output")
    gen.add_argument("--force", action="store_true", help="replace an existing output file")
    gen.add_argument("--instance", metavar="NAME",
                     help="another cluster on this host, run as governor@NAME: written to /etc/governor/NAME.d/"
                          "governor.yml, scope NAME (unless --scope), data in /var/lib/postgresql/governor-NAME, "
                          "and PostgreSQL, API and exporter ports no other configuration there uses")


def _network(address: str) -> Optional[str]:
    try:
        ip = ipaddress.ip_address(address)
    except ValueError:
        return None     # a host name: the network cannot be guessed
    prefix = 24 if ip.version == 4 else 64
    return str(ipaddress.ip_network(f"{ip}/{prefix}", strict=False))


SECRETS = {"replication": "postgresql.replication.password", "superuser": "postgresql.superuser.password",
           "restapi": "restapi.password"}


def _passwords(path: Optional[str]) -> Dict[str, str]:
    """The cluster's passwords: new ones, or those of the first host's file (every member needs the
    same: replicas log in to the leader, members and governorctl call each other's APIs)."""
    if not path:
        return {**{key: secrets.token_urlsafe(24) for key in SECRETS}, "restapi_user": API_USER}
    cfg = config_mod.load(path)
    found = {"replication": cfg.postgresql.replication.password, "superuser": cfg.postgresql.superuser.password,
             "restapi": cfg.restapi.password, "restapi_user": cfg.restapi.username}
    missing = [k for k in SECRETS if not found[k]]
    if missing:
        raise config_mod.ConfigError([f"{path}: no {SECRETS[missing[0]]} to take over"])
    return found  # type: ignore[return-value]


def _defaults(args: argparse.Namespace) -> None:
    """Fill in what --instance changes: scope, data directory, output."""
    instance = args.instance
    args.scope = args.scope or instance or "main"
    args.data_dir = args.data_dir or ("/var/lib/postgresql/governor" + (f"-{instance}" if instance else ""))
    args.output = args.output or (f"/etc/governor/{instance}.d/governor.yml" if instance else "/etc/governor/local.yml")


def build(args: argparse.Namespace) -> dict:
    problems: List[str] = []
    if args.instance is not None and ctl_instance.name_problem(args.instance):
        raise config_mod.ConfigError([ctl_instance.name_problem(args.instance)])
    endpoints = [e.strip() for e in args.etcd.split(",") if e.strip()]
    if not endpoints or any(parse_host_port(e, 2379) is None for e in endpoints):
        problems.append(f"--etcd: expected host:port[,host:port...], got {args.etcd!r}")
    network = args.network or _network(args.address)
    if network is None:
        problems.append(f"--network: required when --address is a host name ({args.address!r})")
    if problems:
        raise config_mod.ConfigError(problems)
    passwords = _passwords(args.passwords_from)
    host = f"[{args.address}]" if ":" in args.address else args.address
    data = {
        "etcd": {"scope": args.scope, "host": endpoints, "api": 3},
        "postgresql": {
            "name": args.name,
            "listen": "0.0.0.0:5432",
            "connect_address": f"{host}:5432",
            "data_dir": args.data_dir,
            "replication": {"network": network, "password": passwords["replication"]},
            "superuser": {"password": passwords["superuser"]},
        },
        # The API listens beyond this host: control requests need these (governorctl and the other
        # members read them from this file).
        "restapi": {"username": passwords["restapi_user"], "password": passwords["restapi"]},
    }
    if args.instance:
        root = os.path.dirname(os.path.dirname(os.path.abspath(args.output))) if args.output != "-" \
            else "/etc/governor"
        for section, values in ctl_instance.listen_settings(args.address, ctl_instance.free_ports(root)).items():
            data.setdefault(section, {}).update(values)
    return data


def generate(args: argparse.Namespace) -> int:
    _defaults(args)
    try:
        data = build(args)
    except config_mod.ConfigError as exc:
        for problem in exc.problems:
            print(f"governorctl generate-config: {problem}", file=sys.stderr)
        return EXIT_USAGE
    text = HEADER.format(name=args.name, scope=args.scope) + yaml.safe_dump(data, sort_keys=False)
    with tempfile.TemporaryDirectory() as tmp:
        probe = os.path.join(tmp, "local.yml")
        with open(probe, "w") as fh:
            fh.write(text)
        try:
            config_mod.load(probe)
        except config_mod.ConfigError as exc:
            print("governorctl generate-config: the result would not be valid:", file=sys.stderr)
            for problem in exc.problems:
                print(f"  {problem.replace(probe, 'local.yml')}", file=sys.stderr)
            return EXIT_USAGE
    if args.output == "-":
        sys.stdout.write(text)
        return EXIT_OK
    if os.path.exists(args.output) and not args.force:
        print(f"governorctl generate-config: {args.output} exists; --force replaces it", file=sys.stderr)
        return EXIT_USAGE
    try:
        if args.instance:
            _instance_dir(os.path.dirname(os.path.abspath(args.output)))
        _write_private(args.output, text)
    except OSError as exc:
        print(f"governorctl generate-config: cannot write {args.output}: {exc}", file=sys.stderr)
        return EXIT_FAILED
    print(f"wrote {args.output} (member {args.name}, scope {args.scope}); check it with "
          f"governor --validate-config {os.path.dirname(args.output) or '.'}")
    if args.instance:
        print(f"PostgreSQL on port {data['postgresql']['listen'].rsplit(':', 1)[1]}, the API on "
              f"{data['restapi']['listen'].rsplit(':', 1)[1]}, the exporter on "
              f"{data['metrics']['listen'].rsplit(':', 1)[1]} (open them between the hosts); then "
              f"systemctl enable --now governor@{args.instance}")
    return EXIT_OK


def _instance_dir(path: str) -> None:
    """/etc/governor/NAME.d as /etc/governor itself: 0750, group postgres."""
    if not os.path.isdir(path):
        os.mkdir(path, 0o750)
        root_postgres(path, 0o750)


def root_postgres(path: str, mode: int) -> None:
    """`mode`, and owner root and group postgres when we may set them (as the package's files)."""
    os.chmod(path, mode)
    if os.geteuid() == 0:
        try:
            os.chown(path, 0, grp.getgrnam("postgres").gr_gid)
        except KeyError:
            pass


def _write_private(path: str, text: str) -> None:
    """Mode 0640, group postgres when we may set it: never readable by others, even briefly."""
    tmp = f"{path}.tmp"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o640)
    try:
        with os.fdopen(fd, "w") as fh:
            fh.write(text)
        root_postgres(tmp, 0o640)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
