"""What the etcd v2 and v3 adapters share: the key layout under the scope, how values are
encoded, the switchover request's lifetime, and the writes that are the same in both once each
adapter supplies four primitives (read a key with its version, write one — unconditionally, or
only at a version, 0 meaning only if absent — and delete one the same two ways). Endpoint
rotation and the time budget are rotation.py's."""
from __future__ import annotations

import abc
import json
from typing import Any, Optional, Tuple

from governor import clock
from governor.dcs.base import DCS
from governor.dcs.errors import DCSError
from governor.dcs.keys import history_list
from governor.dcs.rotation import Rotating
from governor.sync import SyncState

# A switchover request not carried out within this time (after its scheduled time) expires by itself.
SWITCHOVER_TTL = 60
HISTORY_RACES = 5     # compare-and-swap attempts at appending to a history before giving up


def encode(data: Any) -> str:
    """A JSON value as governor writes it to etcd: compact, keys sorted (equal data, equal bytes)."""
    return json.dumps(data, sort_keys=True, separators=(",", ":"))


def switchover_ttl(data: dict, now: float) -> int:
    """Seconds a switchover request lives: a scheduled one until its time plus the grace period."""
    scheduled = data.get("scheduled_at")
    at = scheduled if isinstance(scheduled, (int, float)) and not isinstance(scheduled, bool) else 0
    return SWITCHOVER_TTL + max(0, int(at - now))


class KeyStore(Rotating, DCS):
    """An etcd adapter's shared half. Subclasses set `prefix` (/service/SCOPE, with or without
    the trailing slash) and API (2 or 3) and implement the primitives."""
    API = 0
    prefix: str

    @abc.abstractmethod
    def _get_value(self, what: str, key: str) -> Optional[Tuple[Optional[str], int]]:
        """(value, version) of `key`, None when it does not exist."""

    @abc.abstractmethod
    def _put_value(self, what: str, key: str, body: str, version: Optional[int] = None) -> bool:
        """Write `key`; with a version only if the key is still at it (0: only if absent).
        False when that comparison failed."""

    @abc.abstractmethod
    def _delete_value(self, what: str, key: str, version: Optional[int] = None) -> bool:
        """Delete `key` (gone already is fine); with a version only if the key is still at it."""

    def read_key(self, name: str) -> Optional[Tuple[Optional[str], int]]:
        return self._get_value(f"read {name}", self._key(name))

    def write_key(self, name: str, text: str, version: int) -> bool:
        return self._put_value(f"rewrite {name}", self._key(name), text, version)

    def delete_key(self, name: str, version: int) -> bool:
        return self._delete_value(f"remove {name}", self._key(name), version)

    def _key(self, name: str) -> str:
        return f"{self.prefix.rstrip('/')}/{name}"

    def describe(self) -> str:
        hosts = ", ".join(f"{h}:{p}" for h, p in self.cfg.hosts)
        return f"etcd v{self.API} at {self.cfg.protocol}://{hosts} scope {self.cfg.scope}"

    def write_leader_lsn(self, lsn: int) -> None:
        self._put_value("leader position update", self._key("optime/leader"), str(lsn))

    def set_paused(self, paused: bool) -> None:
        if paused:
            self._put_value("pause update", self._key("pause"), "true")
        else:
            self._delete_value("pause update", self._key("pause"))

    def clear_switchover(self) -> None:
        self._delete_value("switchover cleanup", self._key("failover"))

    def set_config(self, data: dict, index: int) -> bool:
        return self._put_value("dynamic configuration update", self._key("config"), encode(data), index)

    def set_sync(self, state: SyncState, index: int) -> bool:
        return self._put_value("sync state update", self._key("sync"), encode(state.as_dict()), index)

    def delete_sync(self, index: int) -> bool:
        return self._delete_value("sync state removal", self._key("sync"), index)

    def set_upgrade(self, data: dict, index: int) -> bool:
        return self._put_value("upgrade record update", self._key("upgrade"), encode(data), index)

    def replace_initialize(self, old: str, new: str) -> bool:
        found = self._get_value("initialize read", self._key("initialize"))
        if found is None or found[0] != old:
            return False
        return self._put_value("initialize update", self._key("initialize"), new, found[1])

    def replace_history(self, entries: list) -> None:
        self._put_value("history reset", self._key("history"), json.dumps(entries, separators=(",", ":")))

    def append_history(self, entry: dict, key: str = "history", keep: Optional[int] = None) -> None:
        path = self._key(key)
        for _ in range(HISTORY_RACES):
            found = self._get_value("history read", path)
            old, version = (history_list(found[0]), found[1]) if found else ((), 0)
            body = json.dumps((list(old) + [entry])[-(keep or 0):], separators=(",", ":"))
            if self._put_value("history update", path, body, version):
                return
        raise DCSError("history update kept losing compare-and-swap races")

    def _switchover_ttl(self, data: dict) -> int:
        return switchover_ttl(data, clock.wall())
