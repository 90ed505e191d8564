"""The views of the daemon that the executors (ActionHost) and the loop's own steps (NodeHost) are
typed against, so that nothing imports governor.daemon but the command line that starts it. The
API's control endpoints and the sync manager declare their own, narrower ones (controls.ControlHost,
syncrep.SyncHost)."""
from __future__ import annotations

import threading
from typing import TYPE_CHECKING, Optional, Protocol

from governor.config import Config, PostgresConfig
from governor.dcs import DCS
from governor.memory import NodeMemory
from governor.postgres.controller import ProcessController
from governor.postgres.server import Server, ServerState
from governor.status import Archiver, StatusBoard

if TYPE_CHECKING:
    from governor.api import ApiServer
    from governor.callbacks import Runner
    from governor.cluster import Cluster
    from governor.controls import Controls
    from governor.ha import Decision, LocalState
    from governor.leaderlock import LeaderLock
    from governor.lockfence import LockFence
    from governor.metrics import Metrics
    from governor.peers import Peers
    from governor.postgres.disk import DataDirectory
    from governor.syncrep import SyncManager
    from governor.systemd import Notifier
    from governor.wakeups import OnChange
    from governor.watchdog import Watchdog
    from governor.watchdogfeed import WatchdogFeeder


class ActionHost(Protocol):
    """What the executors (governor/actions/) use: the node's I/O handles, its configuration and
    memory, and the few shared steps that keep the lock, the fences and the files consistent."""
    name: str
    pg: PostgresConfig
    config: Config
    cluster: Optional[Cluster]
    mem: NodeMemory
    dcs: DCS
    server: Server
    server_state: Optional[ServerState]
    controller: ProcessController
    disk: DataDirectory
    peers: Peers
    fence: LockFence
    lock: LeaderLock
    watchdog: Watchdog
    syncrep: SyncManager
    notify: Notifier
    metrics: Optional[Metrics]
    callbacks: Runner
    once: OnChange
    stopping: threading.Event

    def slot_sync_database(self) -> Optional[str]: ...

    def leader_address(self, leader: Optional[str]) -> Optional[tuple]: ...

    def upstream(self, decision: Decision) -> Optional[tuple]: ...

    def write_conf(self, standby_of: Optional[tuple]) -> bool: ...

    def prepare_files(self, standby_of: Optional[tuple]) -> None: ...

    def start_postgres(self, standby_of: Optional[tuple]) -> None: ...

    def announce(self, local: LocalState, decision: Decision, state: Optional[ServerState]) -> None: ...

    def data_replaced(self) -> None: ...


class NodeHost(ActionHost, Protocol):
    """What the loop's own steps use (observe.py, publish.py, reconfigure.py, shutdown.py, vouch.py):
    the executors' view, plus the node's status, its servers and what the last pass read."""
    file_config: Config
    board: StatusBoard
    archiver: Optional[Archiver]
    pg_version: Optional[int]
    replicas: tuple
    supervisor: Optional[int]
    api: Optional[ApiServer]
    controls: Optional[Controls]
    dynamic_index: int
    watching: Optional[DCS]
    wake: threading.Event
    feeder: WatchdogFeeder
