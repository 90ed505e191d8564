"""governorctl: look at a governor cluster from etcd, and operate it.

Reads the cluster from etcd; acts either through etcd (failover, pause, edit-config, remove) or
through the members' authenticated control endpoints (switchover, restart, reinit).
Exit codes: 0 done, 1 refused or failed, 2 usage or configuration error.
"""
from __future__ import annotations

import argparse
import json
import os
import ssl
import sys
import time
from typing import List, Optional

from governor import (
    __version__,
    ctl_config,
    ctl_generate,
    ctl_members,
    ctl_patroni,
    ctl_query,
    ctl_standby,
    ctl_upgrade,
)
from governor import config as config_mod
from governor.cluster import Cluster
from governor.ctl_common import (
    EXIT_FAILED,
    EXIT_OK,
    EXIT_USAGE,
    Stop,
    audit_own_write,
    confirm,
    dcs_call,
    http_json,
    member_address,
    refuse,
    use_tls,
)
from governor.ctl_switchover import failover, switchover
from governor.ctl_view import format_actions, format_history, format_table, print_list
from governor.dcs import DCS, DCSError
from governor.dcs import make as make_dcs
from governor.postgres import datadir


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="governorctl", description="Inspect and operate a governor cluster.")
    p.add_argument("-c", "--config", default="/etc/governor",
                   help="governor configuration file or directory to read etcd settings from "
                        "(default: /etc/governor)")
    p.add_argument("--dcs-url", help="etcd endpoint(s), comma separated host:port, instead of the config")
    p.add_argument("--scope", help="cluster scope, instead of the config")
    p.add_argument("--dcs-api", type=int, choices=(2, 3), default=0,
                   help="etcd API with --dcs-url: 2 or 3 (default: 3, refusing a scope held in the v2 "
                        "keyspace; with a config, etcd.api)")
    tls = p.add_argument_group("TLS to the members' APIs (restapi.certfile)")
    tls.add_argument("--cacert", metavar="FILE", help="verify the API's certificate with this CA (default: the "
                     "configuration's restapi.cafile, else the system's CAs)")
    tls.add_argument("--cert", metavar="FILE", help="present this client certificate (default: none)")
    tls.add_argument("--key", metavar="FILE", help="the client certificate's key (default: in --cert)")
    tls.add_argument("--insecure", action="store_true", help="do not verify the API's certificate")
    p.add_argument("--version", action="version", version=f"governorctl {__version__}")
    sub = p.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True
    lst = sub.add_parser("list", help="show the members: role, state, timeline, lag")
    lst.add_argument("--format", choices=("table", "json", "yaml"), default="table")
    lst.add_argument("--watch", type=float, metavar="N", help="refresh every N seconds until interrupted")
    top = sub.add_parser("topology", help="the members as a tree: who streams from whom (cascades drawn)")
    top.add_argument("--watch", type=float, metavar="N", help="refresh every N seconds until interrupted")
    sw = sub.add_parser("switchover", help="planned change of leader: the leader stops, the candidate takes over",
                        description="The leader shuts PostgreSQL down (its standbys receive all WAL), releases "
                                    "the lock, the candidate takes it and is promoted, the old leader rejoins "
                                    "as a replica. Refused, with nothing changed, when the candidate is not a "
                                    "healthy streaming replica within the lag limit.")
    sw.add_argument("--candidate", help="member to promote (required unless --cancel)")
    sw.add_argument("--leader", help="expected current leader (refuse if another member leads)")
    sw.add_argument("--scheduled", metavar="ISO-8601",
                    help="carry it out at this time, e.g. 2026-11-26T03:00:00+00:00 (no zone: local time)")
    sw.add_argument("--cancel", action="store_true", help="cancel a pending (scheduled) switchover")
    sw.add_argument("--max-lag", default="1MB", help="refuse a candidate further behind (default 1MB)")
    sw.add_argument("--force", action="store_true", help="skip the candidate health checks")
    sw.add_argument("--wait", type=float, default=60, help="seconds to wait for the new leader (default 60)")
    fo = sub.add_parser("failover", help="manual promotion of a candidate when no member holds the lock",
                        description="When the cluster has no leader (for example every replica lags beyond "
                                    "maximum_lag_on_failover), promote the candidate you choose. A lagging "
                                    "candidate loses the transactions it did not receive: that needs --force.")
    fo.add_argument("--candidate", required=True, help="member to promote")
    fo.add_argument("--force", action="store_true", help="promote even a lagging or unchecked candidate")
    fo.add_argument("--wait", type=float, default=60, help="seconds to wait for the new leader (default 60)")
    hist = sub.add_parser("history", help="every promotion recorded in etcd: timeline, position, time, reason")
    hist.add_argument("--format", choices=("table", "json"), default="table")
    hist.add_argument("--actions", action="store_true",
                      help="also who asked for what: the newest control requests (switchover, restart, PATCH "
                           "/config, ...) with user or certificate and address, and governorctl's own writes")
    for name, text in (("pause", "maintenance mode: governor keeps the lock but takes no automatic action"),
                       ("resume", "end maintenance mode")):
        mode = sub.add_parser(name, help=text)
        mode.add_argument("--wait", type=float, metavar="SECONDS", nargs="?", const=60.0,
                          help="until every member reports it (default 60 s)")
    ctl_members.add_parsers(sub)
    ctl_config.add_parsers(sub)
    ctl_standby.add_parsers(sub)
    mg = sub.add_parser("migrate", help="translate a Patroni configuration (--from-patroni), or copy a paused "
                                        "cluster's keys to another etcd API or store (--to-api)",
                        description="--from-patroni PATRONI_YML: governor's configuration from Patroni's, with "
                                    "every key not carried over named (see README, Coming from Patroni). "
                                    "--to-api: moving a running cluster from the etcd v2 API to v3 (or to another "
                                    "etcd) without restarting PostgreSQL: governorctl pause; governorctl migrate "
                                    "--to-api 3; set etcd.api: 3 on every member and reload governor (systemctl "
                                    "reload governor); governorctl resume (with the new configuration). Copies "
                                    "initialize, config, history and sets pause in the target; each member's "
                                    "lock and member key are created by the member itself.")
    mg.add_argument("--to-api", type=int, choices=(2, 3), help="the target API")
    mg.add_argument("--to-dcs-url", help="target etcd endpoint(s), comma separated (default: the same)")
    ctl_patroni.add_arguments(mg)
    rm = sub.add_parser("remove", help="delete every etcd key of a stopped cluster (asks you to type its scope)")
    rm.add_argument("remove_scope", metavar="SCOPE", help="the cluster scope, repeated as a safeguard")
    dsn = sub.add_parser("dsn", help="print a libpq connection string for a member (default: the leader); "
                                     "no password: libpq takes it from ~/.pgpass or PGPASSWORD")
    dsn.add_argument("member", nargs="?", metavar="MEMBER")
    dsn.add_argument("--dbname", default="postgres")
    dsn.add_argument("--user", default="postgres")
    ctl_query.add_parser(sub)
    ctl_generate.add_parser(sub)
    ctl_upgrade.add_parser(sub)
    return p


def _dcs(args: argparse.Namespace) -> DCS:
    if args.dcs_url:
        if not args.scope:
            raise config_mod.ConfigError(["--scope is required with --dcs-url"])
        hosts = _parse_hosts(args.dcs_url, "--dcs-url")
        protocol = "https" if args.dcs_url.startswith("https://") else "http"
        return make_dcs(config_mod.EtcdConfig(scope=args.scope, ttl=30, hosts=tuple(hosts), protocol=protocol,
                                              api=args.dcs_api), retry_timeout=5)
    cfg = config_mod.load(args.config)
    etcd = cfg.etcd
    if args.scope:
        etcd = config_mod.EtcdConfig(**{**etcd.__dict__, "scope": args.scope})
    return make_dcs(etcd, retry_timeout=min(cfg.retry_timeout, 5))


def _wait_for_mode(cluster: Cluster, paused: bool, wait: float) -> int:
    """Until every member's API reports the mode (its loop has seen the key)."""
    started, pending = time.monotonic(), {m.name: m.api_url for m in cluster.members}
    while time.monotonic() - started < wait:
        for name, url in list(pending.items()):
            try:
                _code, status = http_json(f"{url}/status", timeout=3) if url else (0, {})
            except OSError:
                continue
            if status.get("paused") is paused:
                del pending[name]
        if not pending:
            print(f"every member reports it ({time.monotonic() - started:.1f}s)")
            return EXIT_OK
        time.sleep(0.2)
    print(f"governorctl: not reported within {wait:.0f}s by: {', '.join(sorted(pending))}", file=sys.stderr)
    return EXIT_FAILED


def print_dsn(args: argparse.Namespace, cluster: Cluster) -> int:
    _name, address = member_address(args.member, cluster)
    print(" ".join(f"{k}={_conninfo_value(v)}" for k, v in (
        ("host", address[0]), ("port", address[1]), ("dbname", args.dbname), ("user", args.user))))
    return EXIT_OK


def _conninfo_value(value: object) -> str:
    """Bare when nothing needs quoting (what an operator would type), else libpq-quoted."""
    text = str(value)
    return text if text and all(c.isalnum() or c in "._-:" for c in text) else datadir.conninfo_quote(text)


def _tls(args: argparse.Namespace) -> None:
    cafile = args.cacert
    if cafile is None and not args.dcs_url:
        cafile = config_mod.load(args.config).restapi.cafile
    use_tls(cafile, args.cert, args.key, args.insecure)


def _api_auth(args: argparse.Namespace) -> tuple:
    """restapi credentials from the configuration, when one is readable."""
    if args.dcs_url:
        return (os.environ.get("GOVERNOR_API_USERNAME"), os.environ.get("GOVERNOR_API_PASSWORD"))
    cfg = config_mod.load(args.config)
    return (cfg.restapi.username, cfg.restapi.password)


def remove(args: argparse.Namespace, dcs: DCS, cluster: Cluster) -> int:
    scope = dcs.cfg.scope
    if args.remove_scope != scope:
        return refuse(f"SCOPE {args.remove_scope!r} is not the configured scope {scope!r}")
    if cluster.initialize is None and not cluster.members and cluster.leader is None:
        print(f"nothing to remove: etcd holds no keys for {scope}")
        return EXIT_OK
    if cluster.leader is not None or cluster.members:
        alive = [m.name for m in cluster.members]
        return refuse(f"{scope} is alive (leader: {cluster.leader.name if cluster.leader else 'none'}, members: "
                       f"{', '.join(alive) or 'none'}); stop governor on every member first, then wait for "
                       "their keys to expire (ttl)")
    if not confirm(f"This deletes every key of cluster {scope} from etcd (its data directories stay).\n"
                    f"Type the scope name to confirm: ", scope):
        return refuse("not confirmed")
    if not dcs_call(dcs.remove_cluster):
        return EXIT_FAILED
    print(f"removed cluster {scope} from etcd")
    return EXIT_OK


def migrate(args: argparse.Namespace, dcs: DCS, cluster: Cluster) -> int:
    if not cluster.paused:
        return refuse("the cluster is not in maintenance mode; run governorctl pause first")
    if not cluster.initialized:
        return refuse("the cluster has no system identifier in etcd yet; nothing to migrate")
    hosts = dcs.cfg.hosts
    if args.to_dcs_url:
        try:
            hosts = _parse_hosts(args.to_dcs_url, "--to-dcs-url")
        except config_mod.ConfigError as exc:
            print(f"governorctl: {exc}", file=sys.stderr)
            return EXIT_USAGE
    target_cfg = config_mod.EtcdConfig(**{**dcs.cfg.__dict__, "hosts": tuple(hosts), "api": args.to_api})
    if target_cfg == dcs.cfg:
        return refuse("the target is the store the cluster is in")
    target = make_dcs(target_cfg, retry_timeout=5)
    try:
        there = target.get_cluster()
        if there.initialize not in (None, cluster.initialize):
            return refuse(f"the target already holds another cluster {dcs.cfg.scope} (system identifier "
                           f"{there.initialize})")
        target.set_paused(True)
        if there.initialize is None:
            target.claim_initialize(cluster.initialize or "")
        if cluster.config and not there.config:
            target.set_config(cluster.config, 0)
        if not there.history:
            for entry in cluster.history:
                target.append_history(entry)
    except DCSError as exc:
        print(f"governorctl: {exc}", file=sys.stderr)
        return EXIT_FAILED
    print(f"copied {dcs.cfg.scope} to {target.describe()} (maintenance mode on there too).\n"
          f"Next: set etcd.api: {args.to_api}"
          + (f" and etcd.host: {args.to_dcs_url}" if args.to_dcs_url else "")
          + " on every member, reload governor (systemctl reload governor), check with governorctl list, "
            "then governorctl resume.")
    return EXIT_OK


def _parse_hosts(text: str, option: str) -> List[tuple]:
    """'host:port,host:port' (a scheme prefix is ignored); ConfigError naming the bad item."""
    hosts = []
    for item in text.split(","):
        parsed = config_mod.parse_host_port(item.split("://")[-1], 2379)
        if parsed is None:
            raise config_mod.ConfigError([f"{option}: expected host:port, got {item!r}"])
        hosts.append(parsed)
    return hosts


def main(argv: Optional[List[str]] = None) -> int:
    try:
        return _main(parser().parse_args(argv))
    except Stop as stop:
        return stop.code


def _main(args: argparse.Namespace) -> int:
    if args.command == "generate-config":
        return ctl_generate.generate(args)
    if args.command == "migrate" and args.from_patroni:
        return ctl_patroni.from_patroni(args)
    if args.command == "migrate" and not args.to_api and not args.takeover:
        print("governorctl migrate: give --to-api 2|3, --from-patroni PATRONI_YML or --takeover STEP",
              file=sys.stderr)
        return EXIT_USAGE
    try:
        _tls(args)
        dcs = _dcs(args)
        cluster = dcs.get_cluster()
    except (OSError, ssl.SSLError) as exc:
        print(f"governorctl: TLS: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except config_mod.ConfigError as exc:
        print(f"governorctl: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except DCSError as exc:
        print(f"governorctl: {exc}", file=sys.stderr)
        return EXIT_FAILED
    if args.command == "switchover":
        return switchover(args, dcs, cluster, _api_auth(args))
    if args.command == "failover":
        return failover(args, dcs, cluster)
    if args.command == "restart":
        return ctl_members.restart(args, cluster, _api_auth(args))
    if args.command == "reinit":
        return ctl_members.reinit(args, cluster, _api_auth(args))
    if args.command == "reload":
        return ctl_members.reload(args, cluster, _api_auth(args))
    if args.command == "edit-config":
        return ctl_config.edit_config(args, dcs, cluster)
    if args.command == "show-config":
        return ctl_config.show_config(cluster)
    if args.command == "promote-cluster":
        return ctl_standby.promote_cluster(args, dcs, cluster)
    if args.command == "demote-cluster":
        return ctl_standby.demote_cluster(args, dcs, cluster)
    if args.command == "remove":
        return remove(args, dcs, cluster)
    if args.command == "query":
        return ctl_query.query(args, cluster)
    if args.command == "upgrade":
        return ctl_upgrade.upgrade_cluster(args, dcs, cluster, _api_auth(args))
    if args.command == "dsn":
        return print_dsn(args, cluster)
    if args.command == "migrate" and args.takeover:
        return ctl_patroni.takeover(args, dcs, cluster)
    if args.command == "migrate":
        return migrate(args, dcs, cluster)
    if args.command == "history":
        if args.format == "json":
            print(json.dumps({"promotions": list(cluster.history), "actions": list(cluster.audit)}
                             if args.actions else list(cluster.history), indent=2))
        else:
            print(format_actions(cluster) if args.actions else format_history(cluster))
        return EXIT_OK
    if args.command in ("pause", "resume"):
        if not dcs_call(lambda: dcs.set_paused(args.command == "pause")):
            return EXIT_FAILED
        audit_own_write(dcs, args.command, {})
        print("maintenance mode on: no automatic failover, restart or promotion until `governorctl resume`"
              if args.command == "pause" else "maintenance mode off: automatic actions resume")
        return _wait_for_mode(cluster, args.command == "pause", args.wait) if args.wait else EXIT_OK
    if args.command in ("list", "topology"):
        while True:
            if args.command == "topology":
                print(format_table(dcs.cfg.scope, cluster, tree=True))
            else:
                print_list(args.format, dcs.cfg.scope, cluster)
            if not args.watch:
                break
            try:
                time.sleep(args.watch)
                cluster = dcs.get_cluster()
            except KeyboardInterrupt:
                break
            except DCSError as exc:
                print(f"governorctl: {exc}", file=sys.stderr)
                continue
            print()
    return EXIT_OK


if __name__ == "__main__":
    sys.exit(main())
