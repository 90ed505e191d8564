"""A replica of an upgraded leader builds its new data directory from its own files (hard links)
and the leader's seed (upgrade_seed.py) instead of cloning: PostgreSQL's documented method for
standbys after pg_upgrade --link, over governor's authenticated API. Only when this replica
stopped exactly where the leader's old cluster stopped (the same latest checkpoint); anything
else, or any failure, and the next pass clones (upgrade_plan.py)."""
from __future__ import annotations

import logging
import os
import shutil
from dataclasses import replace
from typing import TYPE_CHECKING

from governor import clock, majorpaths, peers, upgrade_seed
from governor.actions.base import ActionFailed
from governor.actions.upgrade import record_of, stop_replica
from governor.actions.upgrade_layout import make_config_dir, switch_binaries
from governor.ha import Decision, LocalState

if TYPE_CHECKING:
    from governor.ports import ActionHost

log = logging.getLogger("governor")
FETCH_TIMEOUT = 30.0


def upgrade_link(g: ActionHost, decision: Decision, local: LocalState) -> None:
    record = record_of(g)
    leader = decision.leader or record.leader
    data, new, mark, aside = stop_replica(g, record, local)
    if local.running:
        g.announce(replace(local, running=False, role=None), decision, None)
    began = clock.monotonic()
    try:
        built = _build(g, record.facts.get("checkpoint"), leader, data, new, mark)
    except (OSError, upgrade_seed.SeedError) as exc:
        g.mem.upgrade_link_failed = record.sysid
        if os.path.exists(mark):
            shutil.rmtree(new, ignore_errors=True)
            os.remove(mark)
        log.warning("upgrade: cannot link this member's files into the new cluster (%s): cloning %s instead", exc,
                    leader)
        return
    if g.pg.major_templates is not None:    # the new cluster in its own version's place, the old one kept
        make_config_dir(g, record)
        majorpaths.mark_moved(data, record.to)
    else:
        os.rename(data, aside)
        os.rename(new, data)
    os.remove(mark)
    switch_binaries(g, record.to)
    g.data_replaced()
    log.info("upgrade: the PostgreSQL %s data directory is made in %.1f s: %d files (%.1f MiB) linked from this "
             "member's own, %d (%.1f MiB) received from %s; the old one is kept at %s", record.to,
             clock.monotonic() - began, built.linked, built.linked_bytes / 2**20, built.fetched,
             built.fetched_bytes / 2**20, leader, aside)
    # Started as the leader's standby at once, as a clone is: its pg_control is the leader's new
    # cluster's before that first started ("shut down"), which the next pass would otherwise take
    # for a former primary and send through pg_rewind (which fails where restore_command is set
    # by governor: the seed's configuration is initdb's).
    address = g.leader_address(leader)
    if address is not None:
        g.start_postgres(standby_of=address)
        log.info("upgrade: streaming from %s on PostgreSQL %s", leader, record.to)


def _build(g: ActionHost, checkpoint: object, leader: str, data: str, new: str, mark: str) -> upgrade_seed.Built:
    here = g.disk.controldata()
    if here.state != "shut down in recovery" or not isinstance(checkpoint, str) or here.checkpoint != checkpoint:
        raise upgrade_seed.SeedError(f"this member stopped at checkpoint {here.checkpoint} ({here.state}), the "
                                     f"leader's old cluster at {checkpoint}")
    member = g.cluster.member(leader) if g.cluster is not None else None
    if member is None or not member.api_url:
        raise upgrade_seed.SeedError(f"{leader} publishes no API address")
    with peers.open_control(member.api_url, "/upgrade/seed", g.config.restapi, FETCH_TIMEOUT) as answer:
        manifest = upgrade_seed.parse_manifest(answer.read(upgrade_seed.MANIFEST_MAX + 1))
    if os.path.lexists(new):
        if not os.path.exists(mark):
            raise ActionFailed(f"{new} exists and governor did not make it: move it away")
        shutil.rmtree(new)
    os.makedirs(os.path.dirname(new), mode=0o755, exist_ok=True)   # /var/lib/postgresql/17
    open(mark, "w").close()
    with peers.open_control(member.api_url, "/upgrade/seed/files", g.config.restapi, FETCH_TIMEOUT) as answer:
        built = upgrade_seed.apply(manifest, data, new, answer.read)
    os.sync()       # the links and directories too: the new directory survives a crash of this host
    return built
