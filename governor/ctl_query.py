"""governorctl query: run SQL on one member's PostgreSQL, read-only unless asked.

The member's address comes from etcd; the superuser name and password from governor's
configuration (given to libpq directly: never on a command line), or from libpq's own
PGPASSWORD / ~/.pgpass when there is none.
"""
from __future__ import annotations

import argparse
import csv
import json
import sys
from typing import Any, List, Sequence

import psycopg2

from governor import config as config_mod
from governor.cluster import Cluster
from governor.ctl_common import EXIT_FAILED, EXIT_OK, member_address

MAX_ROWS = 10000


def add_parser(sub: argparse._SubParsersAction) -> None:
    q = sub.add_parser("query", help="run SQL on a member (default: the leader), in a read-only transaction",
                       description="Runs the SQL on the member's PostgreSQL as the configured superuser. By "
                                   "default in a read-only transaction that is rolled back: a guard against an "
                                   "accidental write, not a security boundary (whoever can read the "
                                   "configuration can connect with psql). --write runs it as it is, "
                                   "committing each statement; on a replica PostgreSQL refuses writes anyway.")
    q.add_argument("member", nargs="?", metavar="MEMBER")
    q.add_argument("-c", "--command", dest="sql", required=True, metavar="SQL", help="the SQL to run")
    q.add_argument("--dbname", default="postgres")
    q.add_argument("--user", help="role to connect as (default: postgresql.superuser.username)")
    q.add_argument("--write", action="store_true", help="allow writes (autocommit)")
    q.add_argument("--format", choices=("table", "json", "csv"), default="table")
    q.add_argument("--timeout", type=float, default=30, help="statement_timeout in seconds (default 30)")


def query(args: argparse.Namespace, cluster: Cluster) -> int:
    name, address = member_address(args.member, cluster)
    user, password = _credentials(args)
    options = f"-c statement_timeout={max(1, int(args.timeout * 1000))}"
    if not args.write:
        options += " -c default_transaction_read_only=on"
    try:
        conn = psycopg2.connect(host=address[0], port=address[1], dbname=args.dbname, user=user,
                                password=password, connect_timeout=5, options=options,
                                application_name="governorctl")
    except psycopg2.Error as exc:
        print(f"governorctl: cannot connect to {name} at {address[0]}:{address[1]}: {_first_line(exc)}",
              file=sys.stderr)
        return EXIT_FAILED
    try:
        conn.autocommit = True
        with conn.cursor() as cur:
            if not args.write:
                # Read only from the first statement on: SET TRANSACTION READ WRITE is refused
                # after a query has run in the transaction.
                cur.execute("BEGIN TRANSACTION READ ONLY")
                cur.execute("SELECT 1")
            cur.execute(args.sql)
            columns = [d.name for d in cur.description] if cur.description else None
            rows = cur.fetchmany(MAX_ROWS + 1) if columns is not None else []
            status = cur.statusmessage
            if not args.write:
                cur.execute("ROLLBACK")
    except psycopg2.Error as exc:
        print(f"governorctl: {name}: {_first_line(exc)}", file=sys.stderr)
        return EXIT_FAILED
    finally:
        conn.close()
    if columns is None:
        print(status)
    else:
        _print(args.format, columns, rows[:MAX_ROWS])
        if len(rows) > MAX_ROWS:
            print(f"governorctl: only the first {MAX_ROWS} rows are shown; use psql for more", file=sys.stderr)
    return EXIT_OK


def _credentials(args: argparse.Namespace) -> tuple:
    """(user, password): the configured superuser when a configuration is readable."""
    if args.dcs_url:
        return args.user or "postgres", None
    superuser = config_mod.load(args.config).postgresql.superuser
    user = args.user or superuser.username
    return user, superuser.password if user == superuser.username else None


def _first_line(exc: Exception) -> str:
    return (str(exc).strip().splitlines() or [type(exc).__name__])[0]


def _text(value: Any) -> str:
    return "" if value is None else str(value)


def _print(fmt: str, columns: List[str], rows: Sequence[Sequence[Any]]) -> None:
    if fmt == "json":
        print(json.dumps([dict(zip(columns, row)) for row in rows], indent=2, default=str))
    elif fmt == "csv":
        writer = csv.writer(sys.stdout, lineterminator="\n")
        writer.writerow(columns)
        writer.writerows([[_text(v) for v in row] for row in rows])
    else:
        print(format_table(columns, rows))


def format_table(columns: List[str], rows: Sequence[Sequence[Any]]) -> str:
    """Aligned like psql's: a header, a rule, the rows, the row count."""
    cells = [[_text(v).replace("\n", "\\n") for v in row] for row in rows]
    widths = [max([len(c)] + [len(r[i]) for r in cells]) for i, c in enumerate(columns)]
    lines = [" | ".join(c.ljust(w) for c, w in zip(columns, widths)).rstrip(),
             "-+-".join("-" * w for w in widths)]
    lines += [" | ".join(v.ljust(w) for v, w in zip(r, widths)).rstrip() for r in cells]
    lines.append(f"({len(rows)} row{'' if len(rows) == 1 else 's'})")
    return "\n".join(lines)
