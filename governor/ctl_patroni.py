"""`governorctl migrate --from-patroni PATRONI_YML`: governor's files from Patroni's
(patroni_config.py), with the cluster's dynamic configuration read from etcd where it can be.
Prints every key not carried over; writes nothing and exits 2 when one that changes safety
cannot be translated, or when the result is not a configuration governor accepts."""
from __future__ import annotations

import argparse
import json
import os
import sys
from typing import Optional

import yaml

from governor import config as config_mod
from governor import patroni_config, safe_yaml
from governor.ctl_common import EXIT_OK, EXIT_USAGE
from governor.dcs import DCSError
from governor.dcs import make as make_dcs

HEADER = "# governor's configuration, translated from {source} by governorctl migrate --from-patroni\n"


def add_arguments(mg: argparse.ArgumentParser) -> None:
    mg.add_argument("--from-patroni", metavar="PATRONI_YML",
                    help="translate this Patroni configuration file into governor's (printed, or --output)")
    mg.add_argument("--output", metavar="FILE", help="with --from-patroni: write governor's file here (mode 0600; "
                                                      "an existing file is not replaced)")
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
        fd = os.open(args.output, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except OSError as exc:
        print(f"governorctl: {args.output}: {exc.strerror} (an existing file is not replaced)", file=sys.stderr)
        return EXIT_USAGE
    with os.fdopen(fd, "w") as fh:
        fh.write(text)
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
        text: Optional[str] = dcs.read_key("config")
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
