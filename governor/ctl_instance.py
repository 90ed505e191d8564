"""`governorctl generate-config --instance NAME`: a second (third, ...) cluster on a host, run as
governor@NAME from /etc/governor/NAME.d/, with its own scope, data directory and ports."""
from __future__ import annotations

import glob
import os
import socket
from typing import Iterable, Set, Tuple

from governor import config as config_mod
from governor.checker import parse_host_port
from governor.settings import NAME_RE

# Where governor's own defaults put the first cluster; an instance takes the next free ones.
FIRST_PORTS = {"postgresql": 5432, "restapi": 8008, "metrics": 9547}


def name_problem(name: str) -> str:
    if not NAME_RE.fullmatch(name) or len(name) > 63:
        return f"--instance: expected a name of letters, digits, '_', '.' and '-' (it names a directory), got {name!r}"
    return ""


def used_ports(root: str) -> Set[int]:
    """Ports the configurations under `root` (/etc/governor: its *.yml, and each NAME.d/) listen
    on, with governor's defaults where a file does not say; unreadable files are passed over."""
    sources = [root] if glob.glob(os.path.join(root, "*.yml")) + glob.glob(os.path.join(root, "*.yaml")) else []
    sources += sorted(d for d in glob.glob(os.path.join(root, "*.d")) if os.path.isdir(d))
    ports: Set[int] = set()
    for source in sources:
        try:
            raw, _origin = config_mod.read_raw(source)
        except (config_mod.ConfigError, OSError):
            continue
        for section, default in FIRST_PORTS.items():
            part = raw.get(section) if isinstance(raw.get(section), dict) else {}
            listen = part.get("listen")
            parsed = parse_host_port(listen, default) if isinstance(listen, str) else None
            ports.add(parsed[1] if parsed else default)
    return ports


def port_in_use(port: int) -> bool:
    """Something on this host listens on the port (another PostgreSQL, pgbouncer, ...)."""
    with socket.socket() as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind(("0.0.0.0", port))
        except OSError:
            return True
    return False


def free_ports(root: str) -> Tuple[int, int, int]:
    """PostgreSQL, API and exporter ports for a new instance: the first above governor's defaults
    that no configuration under `root` names and nothing on this host listens on."""
    taken = used_ports(root)
    chosen = []
    for first in FIRST_PORTS.values():
        port = first
        while port in taken or port_in_use(port):
            port += 1
        taken.add(port)
        chosen.append(port)
    return chosen[0], chosen[1], chosen[2]


def listen_settings(address: str, ports: Iterable[int]) -> dict:
    """The sections that put an instance on its own ports, reached at `address`."""
    pg, api, metrics = ports
    host = f"[{address}]" if ":" in address else address
    return {"postgresql": {"listen": f"0.0.0.0:{pg}", "connect_address": f"{host}:{pg}"},
            "restapi": {"listen": f"0.0.0.0:{api}", "connect_address": f"{host}:{api}"},
            "metrics": {"listen": f"0.0.0.0:{metrics}"}}
