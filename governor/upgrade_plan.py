"""A major-version upgrade carried out by the cluster (`governorctl upgrade --to MAJOR`), as the
decision sees it. The leader's governor drives it and records each step in etcd's `upgrade`
key, so that it survives governorctl's disconnect and a governor restart:

  requested   the checks passed (upgrade.py); every other member holds: no failover until done
  stopped     the leader stopped PostgreSQL cleanly under its lock
  upgraded    pg_upgrade --link made the new cluster beside the old one ({data_dir}.upgrading)
  starting    written before the new cluster starts: from here on only forward (the point of no
              return is its start; a restart of governor in this step starts it again)
  started     the new version runs under the lock and takes writes; `initialize` holds its system
              identifier; each replica that stopped where the leader's old cluster stopped makes its
              new data directory from its own files and the leader's seed (upgrade_seed.py); any
              other (or one whose linking failed) sets its old data directory aside and clones
  done        every member runs the new version and streams (a member that was away clones the
              leader when it comes back, as in `started`)
  rollback    something failed before `starting` (or the operator aborted): the leader restores
              the old cluster and starts it again; then `rolled_back`. The others stop holding:
              should the leader be gone for good, one of them takes over as in any failover
              (they have every write: the leader stopped cleanly before anything else)

Pure: the executors are actions/upgrade.py."""
from __future__ import annotations

from typing import Optional

from governor.cluster import BEFORE_START, Cluster, UpgradeRecord  # noqa: F401 - the record's steps live with it
from governor.hatypes import POSTGRES, Action, Decision, LocalState


def decide(cluster: Cluster, local: LocalState) -> Optional[Decision]:
    """The upgrade's case for this member, or None when no upgrade is under way (or this
    member's part is the normal one)."""
    me = local.name
    holder = cluster.leader.name if cluster.leader else None
    if cluster.upgrade_unreadable:
        return Decision("upgrade_unknown", "the upgrade key in etcd does not parse: holding (no failover, no "
                        "upgrade step) until it is rewritten or removed (governorctl upgrade --abort)",
                        (Action.RENEW_LOCK,) if holder == me else ())
    r = cluster.upgrade
    if r is None or not r.active and r.step != "done":
        return None
    if r.leader == me:
        return _leader(cluster, local, r, holder) if r.active else None
    if r.step == "rollback":
        return None     # the old cluster goes on: a lost leader may be replaced as always
    if r.step not in ("started", "done"):
        if local.data == POSTGRES and not local.running and holder:
            return Decision("upgrade_hold", f"{r.leader} upgrades the cluster to PostgreSQL {r.to} ({r.step}): no "
                            "failover until it is done; starting as a replica meanwhile", (Action.START_AS_REPLICA,),
                            leader=holder)
        return Decision("upgrade_hold", f"{r.leader} upgrades the cluster to PostgreSQL {r.to} ({r.step}): no "
                        "failover until it is done")
    if local.data == POSTGRES and local.sysid == r.sysid and (local.data_major or 0) < r.to:
        leader = cluster.member(r.leader)
        if holder != r.leader or leader is None or leader.role != "primary" or leader.state != "running" \
                or not leader.conn_url:
            return Decision("upgrade_hold", f"waiting for {r.leader} to run PostgreSQL {r.to} as primary before "
                            "cloning it")
        if r.facts.get("seed") is True and local.upgrade_link_failed != r.sysid:
            return Decision("upgrade_link", f"{r.leader} runs PostgreSQL {r.to}: making this member's PostgreSQL "
                            f"{r.to} data directory from its own files (hard links) and {r.leader}'s new catalogs",
                            (Action.UPGRADE_LINK,), leader=r.leader)
        return Decision("upgrade_reclone", f"{r.leader} runs PostgreSQL {r.to}: setting this PostgreSQL {r.source} "
                        f"data directory aside and cloning {r.leader}", (Action.UPGRADE_SET_ASIDE, Action.CLONE),
                        leader=r.leader)
    return None


def _leader(cluster: Cluster, local: LocalState, r: UpgradeRecord, holder: Optional[str]) -> Optional[Decision]:
    if holder not in (local.name, None):
        return None       # another member holds the lock: the normal cases (follow it, or demote)
    lock = (Action.RENEW_LOCK,) if holder == local.name else (Action.ACQUIRE_LOCK,)
    if r.step == "rollback":
        return Decision("upgrade_rollback", f"upgrade to PostgreSQL {r.to} rolled back ({r.message or 'asked'}): "
                        f"restoring the PostgreSQL {r.source} cluster", lock + (Action.UPGRADE_ROLLBACK,))
    if r.step == "requested":
        return Decision("upgrade_stop", f"upgrading to PostgreSQL {r.to}: stopping PostgreSQL {r.source} cleanly "
                        "under the lock (failover held)", lock + (Action.UPGRADE_STOP,))
    if r.step == "stopped":
        return Decision("upgrade_pg_upgrade", f"upgrading to PostgreSQL {r.to}: pg_upgrade --link",
                        lock + (Action.UPGRADE_RUN,))
    if r.step in ("upgraded", "starting") or not (local.running and local.role == "primary"):
        return Decision("upgrade_start_new", f"upgrading to PostgreSQL {r.to}: starting the new cluster under the "
                        "lock", lock + (Action.UPGRADE_START,))
    others = [m for m in cluster.members if m.name != local.name]
    if all(m.role == "replica" and m.state == "running" and (m.pg_version or 0) // 10000 == r.to for m in others):
        return Decision("upgrade_done", f"every member runs PostgreSQL {r.to}: the upgrade is done",
                        lock + (Action.ENSURE_SLOTS, Action.MANAGE_SYNC, Action.UPGRADE_DONE))
    return None
