"""The interface governor needs from a distributed configuration store, and nothing more.

Every method either succeeds, returns False for a lost race / failed compare-and-swap, or
raises DCSError when the store cannot be reached within the retry budget.
"""
from __future__ import annotations

import abc
import threading
from typing import Optional, Tuple

from governor.cluster import Cluster
from governor.dcs.errors import DCSError
from governor.sync import SyncState


class DCS(abc.ABC):
    # Called as observer(operation, seconds, ok) after every operation (the metrics exporter).
    observer = None
    # When set (monotonic), no operation retries past it, whatever its own budget: a leader kept
    # primary by failsafe reads etcd within what its members' promises leave (failsafe.timing).
    pass_deadline: Optional[float] = None

    @abc.abstractmethod
    def get_cluster(self) -> Cluster:
        """Read the whole cluster in one request."""

    @abc.abstractmethod
    def claim_initialize(self, value: str = "") -> bool:
        """Create the `initialize` key if it does not exist (the bootstrap race)."""

    @abc.abstractmethod
    def set_initialize(self, sysid: str) -> None:
        """Record the system identifier once bootstrap has produced it."""

    @abc.abstractmethod
    def cancel_initialize(self) -> None:
        """Give up a claimed bootstrap (delete `initialize` while it holds no system id)."""

    @abc.abstractmethod
    def acquire_leader(self, name: str) -> bool:
        """Take the leader lock if nobody holds it."""

    @abc.abstractmethod
    def renew_leader(self, name: str) -> bool:
        """Refresh the lock's TTL, only if `name` still holds it (compare-and-swap)."""

    @abc.abstractmethod
    def release_leader(self, name: str) -> bool:
        """Delete the lock, only if `name` holds it (compare-and-delete)."""

    @abc.abstractmethod
    def touch_member(self, name: str, data: dict) -> None:
        """Publish this member's state with the TTL."""

    @abc.abstractmethod
    def delete_member(self, name: str) -> None:
        """Remove this member's key (clean shutdown)."""

    @abc.abstractmethod
    def write_leader_lsn(self, lsn: int) -> None:
        """Publish the leader's WAL position."""

    @abc.abstractmethod
    def append_history(self, entry: dict, key: str = "history", keep: Optional[int] = None) -> None:
        """Add one record to a list key: promotions to `history`, control requests to `audit`
        (the newest `keep`); compare-and-swap on the old value."""

    @abc.abstractmethod
    def request_switchover(self, data: dict) -> bool:
        """Create the `failover` key unless a request is pending; False when one is."""

    @abc.abstractmethod
    def clear_switchover(self) -> None:
        """Delete the `failover` key."""

    @abc.abstractmethod
    def set_paused(self, paused: bool) -> None:
        """Turn maintenance mode on or off for the whole cluster (the `pause` key)."""

    @abc.abstractmethod
    def set_config(self, data: dict, index: int) -> bool:
        """Write the dynamic `config` key only if it is still at `index` (0: only if absent);
        False when someone changed it meanwhile."""

    @abc.abstractmethod
    def set_sync(self, state: SyncState, index: int) -> bool:
        """Write the `sync` key only if it is still at `index` (0: only if absent)."""

    @abc.abstractmethod
    def delete_sync(self, index: int) -> bool:
        """Delete the `sync` key only if it is still at `index`."""

    @abc.abstractmethod
    def set_failsafe(self, holder: str, value: Optional[str]) -> bool:
        """Write (None: delete) the `failsafe` member list while `holder` holds the lock."""

    @abc.abstractmethod
    def set_upgrade(self, data: dict, index: int) -> bool:
        """Write the major-upgrade record only if the key is still at `index` (0: absent)."""

    @abc.abstractmethod
    def replace_initialize(self, old: str, new: str) -> bool:
        """A major upgrade changed the system identifier: `initialize` becomes `new`, only if it
        still holds `old`."""

    @abc.abstractmethod
    def replace_history(self, entries: list) -> None:
        """The history of a new system (after a major upgrade): the old one's timelines are not its."""

    @abc.abstractmethod
    def remove_cluster(self) -> None:
        """Delete every key of this scope (governorctl remove)."""

    @abc.abstractmethod
    def keep_watching(self, wake: threading.Event) -> bool:
        """Start (once) watching the scope in the background: `wake` is set whenever a key
        another member acts on (keys.wakes) changes, or when a read is needed to know what
        changed. True when the watch runs; it lives until close()."""

    def read_key(self, name: str) -> Optional[Tuple[Optional[str], int]]:
        """(text, version) of key `name` under the scope as stored, None when absent: for another
        program's keys (a Patroni cluster's, before and during a takeover)."""
        raise DCSError(f"{type(self).__name__} cannot read keys as they are stored")

    def write_key(self, name: str, text: str, version: int) -> bool:
        """Replace key `name` only if it is still at `version` (0: only if absent)."""
        raise DCSError(f"{type(self).__name__} cannot write keys as they are stored")

    def delete_key(self, name: str, version: int) -> bool:
        """Delete key `name` only if it is still at `version`."""
        raise DCSError(f"{type(self).__name__} cannot delete keys as they are stored")

    def lock_expires(self, sent: float, ttl: float) -> float:
        """When (time.monotonic()) the lock taken or renewed by a request sent at `sent` expires
        at the latest: the lock fence must act before then."""
        return sent + ttl

    def close(self) -> None:  # noqa: B027 - optional hook, most adapters hold nothing to close
        """Release connections."""

    def describe(self) -> str:
        return type(self).__name__
