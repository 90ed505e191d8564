"""The other members and their servers, as a port: what a member asks them over the network during
a leader race and a failsafe round. The daemon uses this one (HTTP to their APIs, replication
connections to their PostgreSQL); the simulator answers from its own members instead."""
from __future__ import annotations

import base64
import concurrent.futures
import http.client
import json
import socket
import ssl
import urllib.error
import urllib.request
from typing import Dict, List, Optional, Tuple

from governor.cluster import Member, loads
from governor.postgres import remote
from governor.settings import PostgresConfig, RestApiConfig

PEER_ANSWER_MAX = 1024 * 1024
ANSWER_MAX = 4096     # a member's answer to POST /failsafe


def peer_status(api_url: str, name: str, cafile: Optional[str] = None, timeout: float = 1.0) -> Optional[Member]:
    """Member `name`'s own answer to GET /status, as a Member; None when it does not answer, or
    the answer is not a status, or it comes from another member (an api_url that leads
    elsewhere, such as a 127.0.0.1 published by a member on another host). A position that does
    not parse is unknown (None), like a missing one."""
    context = ssl.create_default_context(cafile=cafile) if api_url.startswith("https") else None
    try:
        with urllib.request.urlopen(f"{api_url}/status", timeout=timeout, context=context) as resp:
            raw = resp.read(PEER_ANSWER_MAX + 1)
        if len(raw) > PEER_ANSWER_MAX:
            return None
        data = loads(raw.decode("utf-8"))
    except (OSError, ValueError, http.client.HTTPException):
        return None
    return member_from_status(data, name)


def member_from_status(data: object, name: str) -> Optional[Member]:
    """A /status document as a Member; None when it is not one, or is another member's."""
    if not isinstance(data, dict) or data.get("name") != name:
        return None

    def position(key: str) -> Optional[int]:
        value = data.get(key)   # the API answers integers: a number as text is no number here
        return value if isinstance(value, int) and not isinstance(value, bool) and 0 <= value < 2**64 else None

    role, state, tags = data.get("role"), data.get("state"), data.get("tags")
    return Member(name=name, role=role if isinstance(role, str) else "unknown",
                  state="running" if data.get("running") is True else state if isinstance(state, str) else "unknown",
                  lsn=position("lsn"), timeline=position("timeline"), tags=tags if isinstance(tags, dict) else {},
                  pre_promote_refused=data.get("pre_promote_refused") is True,
                  recovering_standby=data.get("recovering_standby") is True)


# ------------------------------------------------------------------ failsafe: the leader's round

def ask_round(members: Dict[str, str], leader: str, sysid: Optional[str], api: RestApiConfig,
              timeout: float) -> list:
    """POST /failsafe to each member (name -> API URL), all within `timeout`: who did not vouch, with why."""
    body = json.dumps({"leader": leader, "sysid": sysid}).encode()
    headers = {"Content-Type": "application/json", **credentials(api)}
    return _round(members, body, headers, client_tls(api), timeout, leader)


def credentials(api: RestApiConfig) -> Dict[str, str]:
    """The headers that carry this member's control credentials to another's API."""
    if not api.username:
        return {}
    token = f"{api.username}:{api.password or ''}".encode()
    return {"Authorization": "Basic " + base64.b64encode(token).decode()}


def open_control(api_url: str, path: str, api: RestApiConfig, timeout: float) -> http.client.HTTPResponse:
    """GET `path` from another member's API with the control credentials; the open answer (the
    caller reads it); OSError when it cannot be had or is not a 200."""
    request = urllib.request.Request(f"{api_url}{path}", headers=credentials(api))
    context = client_tls(api) if api_url.startswith("https") else None
    return urllib.request.urlopen(request, timeout=timeout, context=context)


def client_tls(api: RestApiConfig) -> ssl.SSLContext:
    """How a member calls another's API over TLS: verifying it against restapi.cafile (the system's
    CAs without one), presenting its own certificate where control needs one (verify_client)."""
    context = ssl.create_default_context(cafile=api.cafile)
    if api.verify_client == "required" and api.certfile:
        context.load_cert_chain(api.certfile, api.keyfile)
    return context


def _round(members: Dict[str, str], body: bytes, headers: Dict[str, str], tls: ssl.SSLContext,
           timeout: float, leader: str) -> list:
    """Who did not vouch, with why; every request within `timeout` in all."""
    if not members:
        return []
    pool = concurrent.futures.ThreadPoolExecutor(max_workers=min(8, len(members)))
    try:
        futures = {pool.submit(_vouches, url, body, headers, tls, timeout, name, leader): name
                   for name, url in members.items()}
        done, late = concurrent.futures.wait(futures, timeout=timeout)
        refused = [f"{futures[f]}: no answer within {timeout:g}s" for f in late]
        refused += [f"{futures[f]}: {f.result()}" for f in done if f.result()]
        return refused
    finally:
        pool.shutdown(wait=False)


def _vouches(url: str, body: bytes, headers: Dict[str, str], tls: ssl.SSLContext, timeout: float, name: str,
             leader: str) -> Optional[str]:
    """None when member `name` vouched for `leader`; otherwise why not."""
    context = tls if url.startswith("https") else None
    request = urllib.request.Request(f"{url}/failsafe", data=body, headers=headers, method="POST")
    try:
        with urllib.request.urlopen(request, timeout=timeout, context=context) as resp:
            raw = resp.read(ANSWER_MAX + 1)
        answer = json.loads(raw.decode("utf-8")) if len(raw) <= ANSWER_MAX else None
    except urllib.error.HTTPError as exc:
        return f"answered {exc.code}{_why(exc)}"
    except (OSError, ValueError, http.client.HTTPException) as exc:
        return f"{type(exc).__name__}: {str(exc)[:100]}"
    if not isinstance(answer, dict) or answer.get("name") != name or answer.get("vouched_for") != leader:
        return "an answer that is not its promise"
    return None


def _why(refusal: urllib.error.HTTPError) -> str:
    """The member's own reason from a refusal's body, bounded and printable, for the log."""
    try:
        error = json.loads(refusal.read(ANSWER_MAX + 1).decode("utf-8")).get("error")
    except (OSError, ValueError, AttributeError, http.client.HTTPException):
        return ""
    if not isinstance(error, str):
        return ""
    return ": " + "".join(c if c.isprintable() else "?" for c in error[:200])


class Peers:
    def status(self, api_url: str, name: str, cafile: Optional[str]) -> Optional[Member]:
        """Member `name`'s answer to GET /status (None: no answer, or not its own)."""
        return peer_status(api_url, name, cafile)

    def ask_all(self, members: Dict[str, str], servers: List[Tuple[str, int]], pg: PostgresConfig, sysid: str,
                cafile: Optional[str]) -> Tuple[Dict[str, Optional[Member]], List[Optional[bool]]]:
        """Before a leader race, all at once: each member's (name -> API URL) /status, and each
        server's (host, port) word on whether it takes writes (in the order given)."""
        with concurrent.futures.ThreadPoolExecutor(max_workers=min(16, len(members) + len(servers) or 1)) as pool:
            statuses = {name: pool.submit(self.status, url, name, cafile) for name, url in members.items()}
            probes = [pool.submit(self.writable, pg, host, port, sysid) for host, port in servers]
            return {name: f.result() for name, f in statuses.items()}, [f.result() for f in probes]

    def writable(self, pg: PostgresConfig, host: str, port: int, sysid: str) -> Optional[bool]:
        """Whether the server at host:port takes writes for system `sysid` (None: it cannot say)."""
        return remote.answers_writable(pg, host, port, sysid)

    def identify(self, pg: PostgresConfig, host: str, port: int) -> Optional[Tuple[str, int]]:
        """(system identifier, timeline) of the server at host:port."""
        return remote.identify(pg, host, port)

    def reachable(self, host: str, port: int, timeout: float = 1.0) -> bool:
        """Whether a TCP connection to host:port opens within `timeout`."""
        try:
            with socket.create_connection((host, port), timeout=timeout):
                return True
        except OSError:
            return False

    def vouch(self, members: Dict[str, str], leader: str, sysid: Optional[str], api: RestApiConfig,
              timeout: float) -> List[str]:
        """Ask each member (name -> API URL) to vouch for `leader` (POST /failsafe); who did not, with why."""
        return ask_round(members, leader, sysid, api, timeout)
