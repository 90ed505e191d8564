"""Where a major upgrade puts the new cluster, and switching a member to it: the same path as the
old one (which is set aside), or with `{major}` in the settings (majorpaths.py) its own version's
place, Debian's configuration directory made for it (postgres/clusterconf.py)."""
from __future__ import annotations

import logging
import os
from dataclasses import replace
from typing import TYPE_CHECKING

from governor import bindir, majorpaths
from governor.actions.base import ActionFailed
from governor.cluster import UpgradeRecord
from governor.postgres import clusterconf
from governor.postgres.controllers import make_controller
from governor.postgres.server import Server
from governor.supervisor import under_systemd

if TYPE_CHECKING:
    from governor.ports import ActionHost

log = logging.getLogger("governor")


def paths(g: ActionHost, record: UpgradeRecord) -> tuple:
    """(the data directory, where the new cluster is made, governor's mark beside it, where the
    old cluster is kept). With `{major}` in the settings (majorpaths.py) the new cluster is made
    in its own version's place and the old one stays in its own."""
    data = g.pg.data_dir
    if g.pg.major_templates is not None:
        new = majorpaths.for_major(g.pg, record.to).data_dir
        return data, new, new + majorpaths.ATTEMPT, majorpaths.for_major(g.pg, record.source).data_dir
    return data, f"{data}.upgrading", f"{data}.upgrading.governor", f"{data}.pg{record.source}"


def make_config_dir(g: ActionHost, record: UpgradeRecord) -> None:
    """With `{major}` in config_dir: the target's configuration directory made from the source's
    (Debian's layout), and the source's cluster set to start only by hand."""
    if g.pg.major_templates is None or not g.pg.major_templates.config_dir:
        return
    source = majorpaths.for_major(g.pg, record.source).config_dir
    target = majorpaths.for_major(g.pg, record.to).config_dir
    if source and target and source != target:
        if os.path.isdir(source):
            clusterconf.copy_for_major(source, target, record.source, record.to)
            clusterconf.set_start(source)
        elif not os.path.isdir(target):
            raise ActionFailed(f"neither {source} nor {target} exists: the configuration directory is gone")


def switch_binaries(g: ActionHost, major: int) -> None:
    """From now on this member runs PostgreSQL `major`'s binaries (the files choose them from
    PG_VERSION at the next start of governor: nothing to edit), and with `{major}` in the
    settings, its data directory, configuration directory and unit."""
    bin_dir = bindir.installed(major)
    if bin_dir is None:
        raise ActionFailed(f"no binaries of PostgreSQL {major} on this host")
    moved = majorpaths.for_major(g.pg, major)
    if bin_dir == g.pg.bin_dir and moved == g.pg:
        return
    host = g  # the node: its files' configuration changes with it
    host.file_config = replace(host.file_config, postgresql=replace(
        majorpaths.for_major(host.file_config.postgresql, major), bin_dir=bin_dir))
    host.config = replace(host.config, postgresql=replace(moved, bin_dir=bin_dir))
    host.pg = host.config.postgresql
    host.fence.data_dir = host.pg.data_dir      # the lock fence stops the postmaster running there
    api = getattr(host, "api", None)            # the node's; it serves the seed beside the data directory
    if api is not None:
        api.config = host.config
    g.server.close()
    g.server = Server(g.pg)
    g.controller = make_controller(g.pg, bind=not under_systemd())
    log.info("now using the PostgreSQL %s binaries in %s", major, bin_dir)
