"""The narrow views of the daemon that other parts are given: each names only what its user
needs, so neither the API's control endpoints nor the sync manager depends on the daemon itself
(and the daemon can be replaced by anything that offers these)."""
from __future__ import annotations

import threading
from typing import Optional, Protocol

from governor.config import Config, PostgresConfig
from governor.dcs import DCS
from governor.memory import NodeMemory
from governor.postgres.controller import ProcessController
from governor.postgres.server import Server
from governor.status import StatusBoard


class SyncHost(Protocol):
    """What the leader's synchronous replication manager (syncrep.py) uses."""
    name: str
    config: Config
    dcs: DCS
    server: Server
    controller: ProcessController
    mem: NodeMemory

    def write_conf(self, standby_of: Optional[tuple]) -> bool: ...


class ControlHost(Protocol):
    """What the HTTP API's control endpoints (controls.py) use."""
    board: StatusBoard
    config: Config
    file_config: Config
    pg: PostgresConfig
    wake: threading.Event

    def submit_request(self, kind: str, timeout: float) -> tuple: ...

    def request_reload(self) -> None: ...
