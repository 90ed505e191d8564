"""governorctl: look at a governor cluster from etcd.

This first version knows `list`; switchover, failover, pause and the rest come with the HTTP API.
"""
from __future__ import annotations

import argparse
import json
import sys
from typing import List, Optional

from governor import __version__
from governor import config as config_mod
from governor.cluster import Cluster
from governor.dcs import DCSError
from governor.dcs.etcd2 import Etcd2

EXIT_OK, EXIT_FAILED, EXIT_USAGE = 0, 1, 2


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="governorctl", description="Inspect and operate a governor cluster.")
    p.add_argument("-c", "--config", default="/etc/governor",
                   help="governor configuration file or directory to read etcd settings from "
                        "(default: /etc/governor)")
    p.add_argument("--dcs-url", help="etcd endpoint(s), comma separated host:port, instead of the config")
    p.add_argument("--scope", help="cluster scope, instead of the config")
    p.add_argument("--version", action="version", version=f"governorctl {__version__}")
    sub = p.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True
    lst = sub.add_parser("list", help="show the members: role, state, timeline, lag")
    lst.add_argument("--format", choices=("table", "json"), default="table")
    return p


def _dcs(args: argparse.Namespace) -> Etcd2:
    if args.dcs_url:
        if not args.scope:
            raise config_mod.ConfigError(["--scope is required with --dcs-url"])
        hosts = []
        for item in args.dcs_url.split(","):
            parsed = config_mod.parse_host_port(item.split("://")[-1], 2379)
            if parsed is None:
                raise config_mod.ConfigError([f"--dcs-url: expected host:port, got {item!r}"])
            hosts.append(parsed)
        protocol = "https" if args.dcs_url.startswith("https://") else "http"
        return Etcd2(config_mod.EtcdConfig(scope=args.scope, ttl=30, hosts=tuple(hosts), protocol=protocol),
                     retry_timeout=5)
    cfg = config_mod.load(args.config)
    etcd = cfg.etcd
    if args.scope:
        etcd = config_mod.EtcdConfig(**{**etcd.__dict__, "scope": args.scope})
    return Etcd2(etcd, retry_timeout=min(cfg.retry_timeout, 5))


def rows(cluster: Cluster) -> List[dict]:
    leader = cluster.leader.name if cluster.leader else None
    out = []
    for m in cluster.members:
        lag = None
        if m.name != leader and cluster.leader_lsn is not None and m.lsn is not None:
            lag = max(0, cluster.leader_lsn - m.lsn)
        host = m.conn_url.split("://", 1)[-1].split("/", 1)[0] if m.conn_url else ""
        out.append({"member": m.name, "host": host, "role": "leader" if m.name == leader else m.role,
                    "state": m.state, "timeline": m.timeline, "lag_bytes": lag, "tags": m.tags})
    return out


def format_table(scope: str, cluster: Cluster) -> str:
    data = rows(cluster)
    header = ["Member", "Host", "Role", "State", "TL", "Lag in MB", "Tags"]
    table = [header]
    for r in data:
        lag = "" if r["lag_bytes"] is None else f"{r['lag_bytes'] / 1048576:.1f}"
        tags = ",".join(k for k, v in sorted(r["tags"].items()) if v)
        table.append([r["member"], r["host"], r["role"], r["state"], str(r["timeline"] or ""), lag, tags])
    widths = [max(len(row[i]) for row in table) for i in range(len(header))]
    lines = [f"Cluster: {scope} (initialized: {cluster.initialize or 'no'})"]
    sep = "+" + "+".join("-" * (w + 2) for w in widths) + "+"
    lines.append(sep)
    for i, row in enumerate(table):
        lines.append("| " + " | ".join(cell.ljust(w) for cell, w in zip(row, widths)) + " |")
        if i == 0:
            lines.append(sep)
    lines.append(sep)
    if not cluster.leader:
        lines.append("No member holds the leader lock.")
    return "\n".join(lines)


def main(argv: Optional[List[str]] = None) -> int:
    args = parser().parse_args(argv)
    try:
        dcs = _dcs(args)
        cluster = dcs.get_cluster()
    except config_mod.ConfigError as exc:
        print(f"governorctl: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except DCSError as exc:
        print(f"governorctl: {exc}", file=sys.stderr)
        return EXIT_FAILED
    if args.command == "list":
        if args.format == "json":
            print(json.dumps({"scope": dcs.cfg.scope, "leader": cluster.leader.name if cluster.leader else None,
                              "members": rows(cluster)}, indent=2))
        else:
            print(format_table(dcs.cfg.scope, cluster))
    return EXIT_OK


if __name__ == "__main__":
    sys.exit(main())
