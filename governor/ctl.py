"""governorctl: look at a governor cluster from etcd, and operate it.

Reads the cluster from etcd; acts either through etcd (failover, pause, edit-config, remove) or
through the members' authenticated control endpoints (switchover, restart, reinit).
Exit codes: 0 done, 1 refused or failed, 2 usage or configuration error.
"""
from __future__ import annotations

import argparse
import base64
import datetime
import json
import os
import sys
import time
import urllib.error
import urllib.request
from typing import Callable, List, Optional

import yaml

from governor import __version__, dynamic, safe_yaml
from governor import config as config_mod
from governor.cluster import Cluster
from governor.dcs import DCS, DCSError
from governor.dcs import make as make_dcs
from governor.postgres.catalogue import catalogue
from governor.sync import describe as describe_sync

EXIT_OK, EXIT_FAILED, EXIT_USAGE = 0, 1, 2


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="governorctl", description="Inspect and operate a governor cluster.")
    p.add_argument("-c", "--config", default="/etc/governor",
                   help="governor configuration file or directory to read etcd settings from "
                        "(default: /etc/governor)")
    p.add_argument("--dcs-url", help="etcd endpoint(s), comma separated host:port, instead of the config")
    p.add_argument("--scope", help="cluster scope, instead of the config")
    p.add_argument("--dcs-api", type=int, choices=(2, 3), default=2,
                   help="etcd API with --dcs-url: 2 or 3 (default 2; with a config, etcd.api)")
    p.add_argument("--version", action="version", version=f"governorctl {__version__}")
    sub = p.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True
    lst = sub.add_parser("list", help="show the members: role, state, timeline, lag")
    lst.add_argument("--format", choices=("table", "json", "yaml"), default="table")
    lst.add_argument("--watch", type=float, metavar="N", help="refresh every N seconds until interrupted")
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
    sub.add_parser("pause", help="maintenance mode: governor keeps the lock but takes no automatic action")
    sub.add_parser("resume", help="end maintenance mode")
    rs = sub.add_parser("restart", help="restart PostgreSQL on members, replicas first, the leader last",
                        description="Restarts PostgreSQL one member at a time, waiting for each to run again "
                                    "before the next; the leader last and in place (it keeps the lock, writes "
                                    "pause for the restart). To avoid that pause, switch over first and restart "
                                    "the old leader as a replica.")
    rs.add_argument("members", nargs="*", metavar="MEMBER", help="members to restart (default: all)")
    rs.add_argument("--pending", action="store_true",
                    help="only members whose PostgreSQL has a setting waiting for a restart")
    rs.add_argument("--force", action="store_true", help="do not ask before restarting the leader")
    ri = sub.add_parser("reinit", help="re-clone a replica from the leader (its data directory is removed)",
                        description="Removes the replica's data directory and clones the leader afresh with "
                                    "pg_basebackup. Asks you to type the member name unless --force.")
    ri.add_argument("member", metavar="MEMBER")
    ri.add_argument("--force", action="store_true", help="do not ask for confirmation")
    ri.add_argument("--wait", type=float, default=300, help="seconds to wait for it to stream (default 300)")
    sub.add_parser("show-config", help="print the dynamic configuration kept in etcd")
    ec = sub.add_parser("edit-config", help="change the dynamic configuration (validated, compare-and-swap)",
                        description="Cluster-wide settings every member applies: ttl, loop_wait, retry_timeout, "
                                    "maximum_lag_on_failover and postgresql.parameters.NAME. They take "
                                    "precedence over the members' files. A PostgreSQL setting that needs a "
                                    "restart shows up as pending in `list`; `restart --pending` applies it.")
    ec.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                    help="e.g. --set loop_wait=5 --set postgresql.parameters.work_mem=16MB; VALUE is YAML, "
                         "'null' removes the key; repeatable")
    ec.add_argument("--file", metavar="FILE", help="a YAML mapping merged in the same way ('-' for stdin)")
    mg = sub.add_parser("migrate", help="copy a paused cluster's keys to another etcd API or store",
                        description="Moving a running cluster from the etcd v2 API to v3 (or to another etcd) "
                                    "without restarting PostgreSQL: governorctl pause; governorctl migrate "
                                    "--to-api 3; set etcd.api: 3 on every member and reload governor (systemctl "
                                    "reload governor); governorctl resume (with the new configuration). Copies "
                                    "initialize, config, history and sets pause in the target; each member's "
                                    "lock and member key are created by the member itself.")
    mg.add_argument("--to-api", type=int, choices=(2, 3), required=True, help="the target API")
    mg.add_argument("--to-dcs-url", help="target etcd endpoint(s), comma separated (default: the same)")
    rm = sub.add_parser("remove", help="delete every etcd key of a stopped cluster (asks you to type its scope)")
    rm.add_argument("remove_scope", metavar="SCOPE", help="the cluster scope, repeated as a safeguard")
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


def _api_auth(args: argparse.Namespace) -> tuple:
    """restapi credentials from the configuration, when one is readable."""
    if args.dcs_url:
        return (os.environ.get("GOVERNOR_API_USERNAME"), os.environ.get("GOVERNOR_API_PASSWORD"))
    cfg = config_mod.load(args.config)
    return (cfg.restapi.username, cfg.restapi.password)


def rows(cluster: Cluster) -> List[dict]:
    leader = cluster.leader.name if cluster.leader else None
    out = []
    for m in cluster.members:
        lag = None
        if m.name != leader and cluster.leader_lsn is not None and m.lsn is not None:
            lag = max(0, cluster.leader_lsn - m.lsn)
        host = m.conn_url.split("://", 1)[-1].split("/", 1)[0] if m.conn_url else ""
        sync = cluster.sync
        synchronous = bool(sync and sync.synchronous and m.name in sync.members and m.name != leader)
        role = "leader" if m.name == leader else ("sync replica" if synchronous and m.role == "replica" else m.role)
        out.append({"member": m.name, "host": host, "role": role, "sync_standby": synchronous,
                    "state": m.state, "timeline": m.timeline, "lag_bytes": lag, "tags": m.tags,
                    "pending_restart": m.pending_restart})
    return out


def format_table(scope: str, cluster: Cluster) -> str:
    data = rows(cluster)
    header = ["Member", "Host", "Role", "State", "TL", "Lag in MB", "Tags"]
    pending = any(r["pending_restart"] for r in data)
    if pending:
        header.append("Pending restart")
    table = [header]
    for r in data:
        lag = "" if r["lag_bytes"] is None else f"{r['lag_bytes'] / 1048576:.1f}"
        tags = ",".join(k for k, v in sorted(r["tags"].items()) if v)
        row = [r["member"], r["host"], r["role"], r["state"], str(r["timeline"] or ""), lag, tags]
        table.append(row + (["*" if r["pending_restart"] else ""] if pending else []))
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
    if cluster.paused:
        lines.append("Maintenance mode: on (governorctl resume to end it)")
    if cluster.sync is not None:
        lines.append(f"Replication: {describe_sync(cluster.sync)}")
    return "\n".join(lines)


def _http_json(url: str, method: str = "GET", body: Optional[dict] = None, auth: Optional[tuple] = None,
               timeout: float = 5) -> tuple:
    """(status code, JSON body or {}) of one API request."""
    data = json.dumps(body).encode() if body is not None else None
    request = urllib.request.Request(url, data=data, method=method,
                                     headers={"Content-Type": "application/json"} if data else {})
    if auth and auth[0]:
        token = base64.b64encode(f"{auth[0]}:{auth[1] or ''}".encode()).decode()
        request.add_header("Authorization", f"Basic {token}")
    try:
        with urllib.request.urlopen(request, timeout=timeout) as resp:
            code, raw = resp.status, resp.read()
    except urllib.error.HTTPError as exc:
        code, raw = exc.code, exc.read()
    try:
        return code, json.loads(raw) if raw else {}
    except ValueError:
        return code, {}


def switchover(args: argparse.Namespace, dcs: DCS, cluster: Cluster, auth: tuple) -> int:
    if args.cancel:
        return cancel_switchover(dcs, cluster, auth)
    if not args.candidate:
        print("governorctl: switchover: --candidate is required", file=sys.stderr)
        return EXIT_USAGE
    scheduled = None
    if args.scheduled:
        scheduled = parse_time(args.scheduled)
        if scheduled is None:
            print(f"governorctl: --scheduled: expected an ISO-8601 time such as 2026-11-26T03:00:00+00:00, "
                  f"got {args.scheduled!r}", file=sys.stderr)
            return EXIT_USAGE
        if scheduled < time.time():
            return _refuse(f"{args.scheduled} has already passed")
    if cluster.leader is None:
        return _refuse("no member holds the leader lock; a switchover needs a leader")
    leader = cluster.leader.name
    if args.leader and args.leader != leader:
        return _refuse(f"{args.leader} is not the leader; {leader} is")
    candidate = cluster.member(args.candidate)
    if candidate is None or args.candidate == leader:
        return _refuse(f"{args.candidate} is not a replica of this cluster "
                       f"(members: {', '.join(m.name for m in cluster.members)})")
    max_lag = config_mod.parse_size(args.max_lag)
    if max_lag is None:
        print(f"governorctl: --max-lag: expected a size such as 1MB, got {args.max_lag!r}", file=sys.stderr)
        return EXIT_USAGE
    if not args.force and scheduled is None:   # a scheduled one is checked by the leader when due
        if not candidate.api_url:
            return _refuse(f"{args.candidate} publishes no API address to check its health")
        try:
            code, status = _http_json(f"{candidate.api_url}/status", timeout=3)
        except OSError as exc:
            return _refuse(f"{args.candidate} does not answer on {candidate.api_url}: {exc}")
        if code != 200 or not status.get("running") or status.get("role") != "replica":
            return _refuse(f"{args.candidate} is not a running replica (role {status.get('role')}, "
                           f"state {status.get('state')})")
        if not status.get("streaming"):
            return _refuse(f"{args.candidate} is not streaming from the leader")
        lag = status.get("lag_bytes")
        if lag is None or lag > max_lag:
            return _refuse(f"{args.candidate} lags {lag} bytes behind the leader, more than --max-lag {max_lag}")
    leader_member = cluster.member(leader)
    if leader_member is None or not leader_member.api_url:
        return _refuse(f"the leader {leader} publishes no API address")
    try:
        body = {"leader": leader, "candidate": args.candidate}
        if scheduled is not None:
            body["scheduled_at"] = scheduled
        code, answer = _http_json(f"{leader_member.api_url}/switchover", "POST", body, auth)
    except OSError as exc:
        return _refuse(f"the leader's API at {leader_member.api_url} does not answer: {exc}")
    if code == 401:
        return _refuse("the leader's API refused the credentials (restapi.username/password in the config)")
    if code != 202:
        return _refuse(answer.get("error") or f"the leader answered HTTP {code}")
    if scheduled is not None:
        print(f"switchover from {leader} to {args.candidate} scheduled for "
              f"{time.strftime('%Y-%m-%dT%H:%M:%S%z', time.localtime(scheduled))}; "
              "`governorctl switchover --cancel` cancels it")
        return EXIT_OK
    print(f"switchover from {leader} to {args.candidate} requested; waiting ...")
    return _wait_for_leader(dcs, args.candidate, args.wait, "switchover")


def parse_time(text: str) -> Optional[float]:
    """ISO-8601 date and time -> Unix time; without a zone it is local time."""
    try:
        moment = datetime.datetime.fromisoformat(text.strip().replace("Z", "+00:00"))
    except ValueError:
        return None
    return moment.timestamp()


def cancel_switchover(dcs: DCS, cluster: Cluster, auth: tuple) -> int:
    if cluster.switchover is None:
        return _refuse("no switchover is pending")
    leader = cluster.leader_member
    if leader is not None and leader.api_url:
        try:
            code, answer = _http_json(f"{leader.api_url}/switchover", "DELETE", {}, auth)
        except OSError as exc:
            return _refuse(f"the leader's API at {leader.api_url} does not answer: {exc}")
        if code == 401:
            return _refuse("the leader's API refused the credentials (restapi.username/password in the config)")
        if code != 200:
            return _refuse(answer.get("error") or f"the leader answered HTTP {code}")
    elif not _dcs_call(dcs.clear_switchover):
        return EXIT_FAILED
    print(f"switchover to {cluster.switchover.candidate} cancelled")
    return EXIT_OK


def failover(args: argparse.Namespace, dcs: DCS, cluster: Cluster) -> int:
    if cluster.leader is not None:
        return _refuse(f"{cluster.leader.name} holds the leader lock; use switchover")
    candidate = cluster.member(args.candidate)
    if candidate is None:
        return _refuse(f"{args.candidate} is not a member of this cluster "
                       f"(members: {', '.join(m.name for m in cluster.members) or 'none'})")
    status: dict = {}
    if candidate.api_url:
        try:
            _code, status = _http_json(f"{candidate.api_url}/status", timeout=3)
        except OSError:
            status = {}
    if not args.force:
        if not status.get("running") or status.get("role") != "replica":
            return _refuse(f"{args.candidate} is not a running replica as far as its API tells; --force to try")
        lag = status.get("lag_bytes")
        if lag:
            return _refuse(f"{args.candidate} is {lag} bytes behind the last leader position: promoting it "
                           "loses those transactions; --force to accept that")
    try:
        if not dcs.request_switchover({"leader": None, "candidate": args.candidate, "requested_at": time.time()}):
            return _refuse("another switchover or failover is pending")
    except DCSError as exc:
        print(f"governorctl: {exc}", file=sys.stderr)
        return EXIT_FAILED
    print(f"failover to {args.candidate} requested; waiting ...")
    return _wait_for_leader(dcs, args.candidate, args.wait, "failover")


def _wait_for_leader(dcs: DCS, candidate: str, wait: float, what: str) -> int:
    started = time.monotonic()
    while time.monotonic() - started < wait:
        time.sleep(0.2)
        try:
            now = dcs.get_cluster()
        except DCSError:
            continue
        if now.leader and now.leader.name == candidate:
            print(f"{what} done: {candidate} is the leader ({time.monotonic() - started:.1f}s)")
            return EXIT_OK
    print(f"governorctl: {candidate} did not take the lock within {wait:.0f}s; see governor's log",
          file=sys.stderr)
    return EXIT_FAILED


def _dcs_call(operation: Callable[[], object]) -> bool:
    """Run one etcd operation; on failure print why and return False."""
    try:
        operation()
        return True
    except DCSError as exc:
        print(f"governorctl: {exc}", file=sys.stderr)
        return False


def _refuse(message: str) -> int:
    print(f"governorctl: refused: {message}; nothing changed", file=sys.stderr)
    return EXIT_FAILED


def restart(args: argparse.Namespace, cluster: Cluster, auth: tuple) -> int:
    names = args.members or [m.name for m in cluster.members]
    unknown = [n for n in names if cluster.member(n) is None]
    if unknown:
        return _refuse(f"not members of this cluster: {', '.join(unknown)}")
    leader = cluster.leader.name if cluster.leader else None
    targets = [cluster.member(n) for n in dict.fromkeys(names)]
    if args.pending:
        targets = [m for m in targets if m.pending_restart]
        if not targets:
            print("no member has a restart pending")
            return EXIT_OK
    targets.sort(key=lambda m: m.name == leader)   # replicas first, the leader last
    if any(m.name == leader for m in targets) and not args.force and \
            not _confirm(f"Restart the leader {leader} in place? Writes stop while it restarts. [y/N] ", "y"):
        return _refuse("not confirmed")
    for member in targets:
        if not member.api_url:
            return _refuse(f"{member.name} publishes no API address")
        print(f"restarting {member.name} ...", flush=True)
        try:
            code, answer = _http_json(f"{member.api_url}/restart", "POST", {"pending": args.pending}, auth,
                                      timeout=300)
        except OSError as exc:
            return _refuse(f"{member.name}'s API at {member.api_url} does not answer: {exc}")
        if code == 401:
            return _refuse(f"{member.name}'s API refused the credentials")
        if code != 200:
            print(f"governorctl: restart of {member.name} failed: {answer.get('error') or f'HTTP {code}'}; "
                  "stopping the rolling restart here", file=sys.stderr)
            return EXIT_FAILED
        print(f"{member.name}: {answer.get('message', 'restarted')}")
    return EXIT_OK


def reinit(args: argparse.Namespace, cluster: Cluster, auth: tuple) -> int:
    member = cluster.member(args.member)
    if member is None:
        return _refuse(f"{args.member} is not a member of this cluster")
    if cluster.leader and cluster.leader.name == args.member:
        return _refuse(f"{args.member} is the leader; switch over first")
    if not member.api_url:
        return _refuse(f"{args.member} publishes no API address")
    if not args.force and not _confirm(
            f"This removes {args.member}'s data directory and clones the leader again.\n"
            f"Type the member name to confirm: ", args.member):
        return _refuse("not confirmed")
    try:
        code, answer = _http_json(f"{member.api_url}/reinitialize", "POST", {}, auth, timeout=90)
    except OSError as exc:
        return _refuse(f"{args.member}'s API at {member.api_url} does not answer: {exc}")
    if code == 401:
        return _refuse(f"{args.member}'s API refused the credentials")
    if code not in (200, 202):
        return _refuse(answer.get("error") or f"{args.member} answered HTTP {code}")
    print(f"{args.member}: {answer.get('message')}; waiting for it to stream ...", flush=True)
    started = time.monotonic()
    while time.monotonic() - started < args.wait:
        time.sleep(1)
        try:
            _code, status = _http_json(f"{member.api_url}/status", timeout=3)
        except OSError:
            continue
        if status.get("role") == "replica" and status.get("running") and status.get("streaming"):
            print(f"reinit done: {args.member} streams from {status.get('upstream')} "
                  f"({time.monotonic() - started:.0f}s)")
            return EXIT_OK
    print(f"governorctl: {args.member} is not streaming after {args.wait:.0f}s; see its log", file=sys.stderr)
    return EXIT_FAILED


def _confirm(prompt: str, expected: str) -> bool:
    try:
        answer = input(prompt)
    except EOFError:
        return False
    return answer.strip().lower() == expected.lower() if expected == "y" else answer.strip() == expected


def edit_config(args: argparse.Namespace, dcs: DCS, cluster: Cluster) -> int:
    changes: dict = {}
    try:
        if args.file:
            data = sys.stdin.buffer.read(safe_yaml.MAX_BYTES + 1) if args.file == "-" \
                else safe_yaml.read_bytes(args.file)
            if len(data) > safe_yaml.MAX_BYTES:
                raise safe_yaml.YamlProblem("larger than 1 MB")
            loaded = safe_yaml.loads(safe_yaml.decode(data)) or {}
            if not isinstance(loaded, dict):
                print(f"governorctl: {args.file}: expected a YAML mapping", file=sys.stderr)
                return EXIT_USAGE
            changes = dynamic.combine(changes, loaded)
        for item in args.set:
            key, sep, value = item.partition("=")
            if not sep or not key.strip():
                print(f"governorctl: --set: expected KEY=VALUE, got {item!r}", file=sys.stderr)
                return EXIT_USAGE
            changes = dynamic.combine(changes, dynamic.nested(key.strip(), safe_yaml.loads(value)))
    except safe_yaml.YamlProblem as exc:
        print(f"governorctl: {args.file or '--set'}: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except OSError as exc:
        print(f"governorctl: {exc}", file=sys.stderr)
        return EXIT_USAGE
    if not changes:
        print("governorctl: edit-config: nothing to change (use --set or --file)", file=sys.stderr)
        return EXIT_USAGE
    new = dynamic.patch(cluster.config, changes)
    problems = dynamic.validate(new, *_timing_and_catalogue(args))
    if problems:
        print("governorctl: refused, nothing written:\n  " + "\n  ".join(problems), file=sys.stderr)
        return EXIT_FAILED
    diff = dynamic.diff(cluster.config, new)
    if not diff:
        print("no change")
        return EXIT_OK
    try:
        if not dcs.set_config(new, cluster.config_index):
            return _refuse("the dynamic configuration was changed by someone else meanwhile; "
                           "look at `governorctl show-config` and try again")
    except DCSError as exc:
        print(f"governorctl: {exc}", file=sys.stderr)
        return EXIT_FAILED
    for key, old, value in diff:
        print(f"{key}: {'(unset)' if old is None else old} -> {'(unset)' if value is None else value}")
    return EXIT_OK


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


def remove(args: argparse.Namespace, dcs: DCS, cluster: Cluster) -> int:
    scope = dcs.cfg.scope
    if args.remove_scope != scope:
        return _refuse(f"SCOPE {args.remove_scope!r} is not the configured scope {scope!r}")
    if cluster.initialize is None and not cluster.members and cluster.leader is None:
        print(f"nothing to remove: etcd holds no keys for {scope}")
        return EXIT_OK
    if cluster.leader is not None or cluster.members:
        alive = [m.name for m in cluster.members]
        return _refuse(f"{scope} is alive (leader: {cluster.leader.name if cluster.leader else 'none'}, members: "
                       f"{', '.join(alive) or 'none'}); stop governor on every member first, then wait for "
                       "their keys to expire (ttl)")
    if not _confirm(f"This deletes every key of cluster {scope} from etcd (its data directories stay).\n"
                    f"Type the scope name to confirm: ", scope):
        return _refuse("not confirmed")
    if not _dcs_call(dcs.remove_cluster):
        return EXIT_FAILED
    print(f"removed cluster {scope} from etcd")
    return EXIT_OK


def migrate(args: argparse.Namespace, dcs: DCS, cluster: Cluster) -> int:
    if not cluster.paused:
        return _refuse("the cluster is not in maintenance mode; run governorctl pause first")
    if not cluster.initialized:
        return _refuse("the cluster has no system identifier in etcd yet; nothing to migrate")
    hosts = dcs.cfg.hosts
    if args.to_dcs_url:
        try:
            hosts = _parse_hosts(args.to_dcs_url, "--to-dcs-url")
        except config_mod.ConfigError as exc:
            print(f"governorctl: {exc}", file=sys.stderr)
            return EXIT_USAGE
    target_cfg = config_mod.EtcdConfig(**{**dcs.cfg.__dict__, "hosts": tuple(hosts), "api": args.to_api})
    if target_cfg == dcs.cfg:
        return _refuse("the target is the store the cluster is in")
    target = make_dcs(target_cfg, retry_timeout=5)
    try:
        there = target.get_cluster()
        if there.initialize not in (None, cluster.initialize):
            return _refuse(f"the target already holds another cluster {dcs.cfg.scope} (system identifier "
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


def format_history(cluster: Cluster) -> str:
    header = ["TL", "LSN", "Time", "New leader", "Reason"]
    table = [header] + [[str(h.get("timeline", "")), _lsn(h.get("lsn")), str(h.get("time", "")),
                         str(h.get("leader", "")), str(h.get("reason", ""))[:70]] for h in cluster.history]
    widths = [max(len(row[i]) for row in table) for i in range(len(header))]
    lines = ["  ".join(cell.ljust(w) for cell, w in zip(row, widths)).rstrip() for row in table]
    return "\n".join(lines) if cluster.history else "No promotion recorded."


def _lsn(value: object) -> str:
    """Bytes as PostgreSQL's X/X notation."""
    if not isinstance(value, int):
        return ""
    return f"{value >> 32:X}/{value & 0xFFFFFFFF:X}"


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
    if args.command == "switchover":
        return switchover(args, dcs, cluster, _api_auth(args))
    if args.command == "failover":
        return failover(args, dcs, cluster)
    if args.command == "restart":
        return restart(args, cluster, _api_auth(args))
    if args.command == "reinit":
        return reinit(args, cluster, _api_auth(args))
    if args.command == "edit-config":
        return edit_config(args, dcs, cluster)
    if args.command == "show-config":
        print(yaml.safe_dump(cluster.config, sort_keys=True).rstrip() if cluster.config
              else "# no dynamic settings: every member uses its configuration files")
        return EXIT_OK
    if args.command == "remove":
        return remove(args, dcs, cluster)
    if args.command == "migrate":
        return migrate(args, dcs, cluster)
    if args.command == "history":
        if args.format == "json":
            print(json.dumps(list(cluster.history), indent=2))
        else:
            print(format_history(cluster))
        return EXIT_OK
    if args.command in ("pause", "resume"):
        if not _dcs_call(lambda: dcs.set_paused(args.command == "pause")):
            return EXIT_FAILED
        print("maintenance mode on: no automatic failover, restart or promotion until `governorctl resume`"
              if args.command == "pause" else "maintenance mode off: automatic actions resume")
        return EXIT_OK
    if args.command == "list":
        while True:
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


def print_list(fmt: str, scope: str, cluster: Cluster) -> None:
    data = {"scope": scope, "leader": cluster.leader.name if cluster.leader else None,
            "paused": cluster.paused, "sync": cluster.sync.as_dict() if cluster.sync else None,
            "members": rows(cluster)}
    if fmt == "json":
        print(json.dumps(data, indent=2))
    elif fmt == "yaml":
        print(yaml.safe_dump(data, sort_keys=False), end="")
    else:
        print(format_table(scope, cluster))


if __name__ == "__main__":
    sys.exit(main())
