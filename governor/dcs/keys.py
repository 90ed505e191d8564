"""The key layout under /service/<scope>/, shared by the etcd adapters: turning the keys of
one read into a Cluster snapshot."""
from __future__ import annotations

import json
from typing import Iterable, NamedTuple, Optional

from governor.cluster import Cluster, Leader, Member, Switchover
from governor.sync import SyncState


class Entry(NamedTuple):
    key: str                 # relative to the scope prefix, e.g. "leader", "members/node1"
    value: Optional[str]
    index: int               # modification index (v2) or mod_revision (v3)
    ttl: Optional[float] = None


def build_cluster(entries: Iterable[Entry], index: int) -> Cluster:
    initialize = None
    leader = None
    leader_lsn = None
    members = []
    history: tuple = ()
    switchover = None
    paused = False
    config: dict = {}
    config_index = 0
    sync = None
    for e in entries:
        if e.key == "initialize":
            initialize = e.value or ""
        elif e.key == "leader":
            leader = Leader(name=e.value or "", index=e.index, ttl=e.ttl)
        elif e.key == "optime/leader":
            try:
                leader_lsn = int(e.value or "")
            except ValueError:
                leader_lsn = None
        elif e.key == "pause":
            paused = e.value == "true"
        elif e.key == "failover":
            switchover = Switchover.from_json(e.value or "")
        elif e.key == "sync":
            sync = SyncState.from_json(e.value, e.index)
        elif e.key == "config":
            config, config_index = json_dict(e.value), e.index
        elif e.key == "history":
            history = history_list(e.value)
        elif e.key.startswith("members/"):
            members.append(Member.from_json(e.key[len("members/"):], e.value or ""))
    return Cluster(initialize=initialize, leader=leader, members=tuple(sorted(members, key=lambda m: m.name)),
                   leader_lsn=leader_lsn, index=index, history=history, switchover=switchover, paused=paused,
                   config=config, config_index=config_index, sync=sync)


def history_list(text: Optional[str]) -> tuple:
    try:
        data = json.loads(text or "[]")
    except ValueError:
        return ()
    return tuple(item for item in data if isinstance(item, dict)) if isinstance(data, list) else ()


def json_dict(text: Optional[str]) -> dict:
    try:
        data = json.loads(text or "{}")
    except ValueError:
        return {"": text}   # not JSON: reported as an invalid dynamic configuration
    return data if isinstance(data, dict) else {"": data}
