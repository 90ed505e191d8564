"""The `failsafe` key's value: which members the leader must hear from to stay primary through an
etcd outage (governor/failsafe.py has the rules). A module of its own so that the cluster's view
(cluster.py), which holds one, and the rules, which read the cluster, do not import each other."""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any, Dict, Optional

MAX_MEMBERS = 64


@dataclass(frozen=True)
class FailsafeList:
    """The `failsafe` key: the leader that wrote it and every other member with its API address."""
    leader: str
    members: Dict[str, str] = field(default_factory=dict)   # name -> api_url

    def as_json(self) -> str:
        return json.dumps({"leader": self.leader, "members": dict(sorted(self.members.items()))},
                          separators=(",", ":"))

    @classmethod
    def from_json(cls, text: Any, valid_name: Any) -> Optional[FailsafeList]:
        """The list, or None when `text` is not one (unknown: see the module's rules)."""
        try:
            data = json.loads(text) if isinstance(text, str) and len(text) < 65536 else None
        except (ValueError, RecursionError):
            return None
        if not isinstance(data, dict) or not isinstance(data.get("members"), dict):
            return None
        leader, members = data.get("leader"), data["members"]
        if not isinstance(leader, str) or not valid_name(leader) or len(members) > MAX_MEMBERS:
            return None
        if not all(isinstance(k, str) and valid_name(k) and isinstance(v, str) and v.startswith(("http://", "https://"))
                   and len(v) < 300 for k, v in members.items()):
            return None
        return cls(leader, dict(members))

    def union(self, other: Optional[FailsafeList]) -> FailsafeList:
        """Both lists' members: what a leader must ask when it cannot know which one etcd holds."""
        if other is None:
            return self
        return FailsafeList(self.leader, {**other.members, **self.members})
