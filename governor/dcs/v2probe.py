"""etcd.api not set means the v3 API, which was not always the default (it was 2). Before a member
without `api:` claims anything in an empty v3 keyspace, this makes sure its scope does not live
in the v2 keyspace: reading the empty one instead would let a member with data claim the cluster
there while the v2 leader runs — two primaries."""
from __future__ import annotations

from typing import Tuple

import urllib3

from governor.dcs.errors import DCSError, short_error
from governor.settings import EtcdConfig


def refuse_scope_in_v2(cfg: EtcdConfig, http: urllib3.PoolManager, endpoint: Tuple[str, int], prefix: str,
                       timeout: float) -> None:
    """Return when etcd's v2 keyspace has no `initialize` key for the scope (or etcd serves no
    v2 API); raise DCSError, naming what to set, when it has one — or when the answer proves
    neither (unknown is refused like a scope found there)."""
    host, port = endpoint
    url = f"{cfg.protocol}://{f'[{host}]' if ':' in host else host}:{port}/v2/keys{prefix}initialize"
    headers = urllib3.make_headers(basic_auth=f"{cfg.username}:{cfg.password or ''}") if cfg.username else {}
    try:
        status = http.request("GET", url, headers=headers, timeout=urllib3.Timeout(connect=timeout, read=timeout),
                              preload_content=True).status
    except (urllib3.exceptions.HTTPError, OSError) as exc:
        raise DCSError(f"etcd.api is not set and etcd's v2 keyspace could not be checked for scope {cfg.scope} "
                       f"({short_error(exc)}): set etcd.api: 3 (or 2 for a cluster kept in v2)") from exc
    # 404: etcd's "key not found", or the plain "404 page not found" of an etcd serving no v2.
    if status == 404:
        return
    if status == 200:
        why = f"etcd's v2 keyspace holds scope {cfg.scope} (a cluster run with etcd.api 2, the former default)"
    else:
        why = f"etcd's v2 keyspace could not be checked for scope {cfg.scope} (HTTP {status})"
    raise DCSError(f"etcd.api is not set and {why}: set etcd.api: 2 to keep using it, or move it with governorctl "
                   "pause; governorctl migrate --to-api 3, then set etcd.api: 3 (README: Moving a running cluster "
                   "from the v2 to the v3 API)")
