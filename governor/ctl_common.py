"""What governorctl's commands share: exit codes, one API request, one etcd call, a refusal."""
from __future__ import annotations

import base64
import datetime
import getpass
import json
import os
import socket
import ssl
import sys
import time
import urllib.error
import urllib.request
from typing import TYPE_CHECKING, Callable, Optional, Tuple

from governor import audit
from governor.cluster import parse_conn_url
from governor.dcs import DCS, DCSError

if TYPE_CHECKING:
    from governor.cluster import Cluster

EXIT_OK, EXIT_FAILED, EXIT_USAGE = 0, 1, 2
_tls: Optional[ssl.SSLContext] = None     # for https API addresses: set by use_tls()


def use_tls(cafile: Optional[str], certfile: Optional[str], keyfile: Optional[str], insecure: bool) -> None:
    """How governorctl talks to an API over TLS: it verifies the certificate against `cafile`
    (the system's CAs without one) and the address asked, unless `insecure`; it presents
    `certfile` when the API asks for a client certificate."""
    global _tls
    context = ssl.create_default_context(cafile=cafile)
    if insecure:
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
    if certfile:
        context.load_cert_chain(certfile, keyfile)
    _tls = context


def http_json(url: str, method: str = "GET", body: Optional[dict] = None, auth: Optional[tuple] = None,
               timeout: float = 5) -> tuple:
    """(status code, JSON body or {}) of one API request."""
    data = json.dumps(body).encode() if body is not None else None
    request = urllib.request.Request(url, data=data, method=method,
                                     headers={"Content-Type": "application/json"} if data else {})
    if auth and auth[0]:
        token = base64.b64encode(f"{auth[0]}:{auth[1] or ''}".encode()).decode()
        request.add_header("Authorization", f"Basic {token}")
    try:
        with urllib.request.urlopen(request, timeout=timeout,
                                    context=_tls if url.startswith("https:") else None) as resp:
            code, raw = resp.status, resp.read()
    except urllib.error.HTTPError as exc:
        code, raw = exc.code, exc.read()
    except urllib.error.URLError as exc:
        if isinstance(exc.reason, ssl.SSLCertVerificationError):
            raise OSError(f"its TLS certificate is not trusted ({exc.reason.verify_message}): give the CA with "
                          "--cacert (or restapi.cafile), or --insecure") from exc
        raise
    try:
        return code, json.loads(raw) if raw else {}
    except ValueError:
        return code, {}


def dcs_call(operation: Callable[[], object]) -> bool:
    """Run one etcd operation; on failure print why and return False."""
    try:
        operation()
        return True
    except DCSError as exc:
        print(f"governorctl: {exc}", file=sys.stderr)
        return False


def refuse(message: str) -> int:
    print(f"governorctl: refused: {message}; nothing changed", file=sys.stderr)
    return EXIT_FAILED


class Stop(Exception):
    """A command ends here with this exit code; why was printed already."""

    def __init__(self, code: int):
        super().__init__(code)
        self.code = code


def scheduled_time(text: str) -> float:
    """--scheduled: an ISO-8601 date and time (without a zone: local time) -> Unix time.
    Stop (usage) when it is not one, Stop (refused) when it has passed."""
    try:
        moment = datetime.datetime.fromisoformat(text.strip().replace("Z", "+00:00")).timestamp()
    except (ValueError, OverflowError, OSError):
        print(f"governorctl: --scheduled: expected an ISO-8601 time such as 2026-11-26T03:00:00+00:00, "
              f"got {text!r}", file=sys.stderr)
        raise Stop(EXIT_USAGE) from None
    if moment < time.time():
        raise Stop(refuse(f"{text} has already passed"))
    return moment


def local_time(moment: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S%z", time.localtime(moment))


def confirm(prompt: str, expected: str) -> bool:
    try:
        answer = input(prompt)
    except EOFError:
        return False
    return answer.strip().lower() == expected.lower() if expected == "y" else answer.strip() == expected


def member_address(name: Optional[str], cluster: Cluster) -> Tuple[str, Tuple[str, int]]:
    """The member named (default: the leader) and its PostgreSQL address from etcd; Stop when
    there is none."""
    name = name or (cluster.leader.name if cluster.leader else None)
    if name is None:
        raise Stop(refuse("no member holds the leader lock; name a member"))
    member = cluster.member(name)
    address = parse_conn_url(member.conn_url) if member is not None and member.conn_url else None
    if address is None:
        raise Stop(refuse(f"{name} is not a member of this cluster, or publishes no PostgreSQL address"))
    return name, address


def audit_own_write(dcs: DCS, action: str, detail: object) -> None:
    """governorctl wrote to etcd itself (pause, resume, edit-config, ...): a record for the audit
    trail, with the OS user and host it runs as (its own word: etcd's credentials are the proof)."""
    try:
        user = getpass.getuser()
    except (KeyError, OSError):
        user = str(os.getuid())
    entry = {"time": round(time.time(), 3), "member": None, "action": f"governorctl {action}",
             "request": audit.summary(detail), "by": f"os user {user[:64]}", "from": socket.gethostname()[:253],
             "result": "written", "outcome": None}
    try:
        dcs.append_history(entry, key="audit", keep=audit.KEEP)
    except DCSError as exc:
        print(f"governorctl: done, but its record for `history --actions` was not written: {exc}", file=sys.stderr)
