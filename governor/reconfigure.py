"""Changing the running configuration: a reload of the files (SIGHUP, POST /reload) and the
dynamic settings read from etcd. A new configuration is validated whole before anything changes;
what can change live is applied (PostgreSQL's settings rewritten and reloaded), the rest is kept
until a restart and named in the log."""
from __future__ import annotations

import logging
from dataclasses import fields, is_dataclass, replace
from typing import TYPE_CHECKING, Any, Dict, List, Optional, Tuple

from governor import config as config_mod
from governor import dynamic, publish, standby
from governor import log as log_mod
from governor.cluster import Cluster
from governor.config import Config
from governor.dcs import DCSError, short_error
from governor.dcs import make as make_dcs
from governor.postgres import datadir
from governor.postgres.catalogue import catalogue
from governor.postgres.controller import ControllerError

if TYPE_CHECKING:
    from governor.ports import NodeHost

log = logging.getLogger("governor")


def reload(g: NodeHost) -> None:
    """SIGHUP: re-read the configuration; apply what can change live, keep the rest. systemd hears
    READY=1 afterwards whatever happened, or the unit would stay "reloading"."""
    g.notify.reloading()
    try:
        _reload(g)
    finally:
        g.notify.ready(publish.status_line(g))


def _reload(g: NodeHost) -> None:
    try:
        new = config_mod.load(g.config.source)
    except config_mod.ConfigError as exc:
        log.error("reload: the new configuration is rejected, the running one stays in force:\n  %s",
                  "\n  ".join(exc.problems))
        return
    except Exception as exc:  # noqa: BLE001 - whatever the file holds, the running configuration stays
        log.error("reload: the new configuration could not be read (%s: %s), the running one stays in force",
                  type(exc).__name__, short_error(exc))
        return
    for warning in new.warnings:
        log.warning("reload: %s", warning)
    new, needs_restart = merge_live(g.file_config, new)
    if needs_restart:
        log.warning("reload: %s can only change with a restart of governor; keeping the running values",
                    ", ".join(needs_restart))
    g.file_config = new
    changed = apply_config(g, with_dynamic(g, new), "reload")
    log.info("reload: configuration reloaded%s", f" (changed: {', '.join(changed)})" if changed else
             " (nothing changed)")


def switch_etcd(g: NodeHost, new: Config) -> Config:
    """New etcd endpoints, API, TLS or credentials: only in maintenance mode, where no member
    acts on what it reads, is it safe to move to another store (e.g. from the v2 to the v3
    API). Otherwise the running connection stays until a restart."""
    old_etcd, new_etcd = g.config.etcd, new.etcd
    connection = ("hosts", "protocol", "cacert", "cert", "key", "username", "password", "api")
    if all(getattr(old_etcd, k) == getattr(new_etcd, k) for k in connection):
        return new
    if g.cluster is None or not g.cluster.paused:
        log.warning("reload: etcd endpoints, API, TLS or credentials change only in maintenance mode "
                    "(governorctl pause) or with a restart of governor; keeping the running connection")
        return replace(new, etcd=replace(new_etcd, **{k: getattr(old_etcd, k) for k in connection}))
    old_dcs = g.dcs
    g.dcs = make_dcs(new_etcd, new.retry_timeout)
    g.mem.published_lsn = None     # the new store has not heard our position yet
    g.dcs.observer = old_dcs.observer
    if g.controls is not None:
        g.controls.reset()
    old_dcs.close()
    log.warning("reload: now using %s (maintenance mode is on: check it with governorctl list, then "
                "governorctl resume)", g.dcs.describe())
    return new


def with_dynamic(g: NodeHost, file_config: Config) -> Config:
    """The file configuration with the cluster's valid dynamic settings over it."""
    data = g.cluster.config if g.cluster is not None else {}
    if data and not dynamic.validate(data, dynamic.timing(file_config),
                                     catalogue(file_config.postgresql.bin_dir)):
        return dynamic.apply(file_config, data)
    return file_config


def seed_standby(g: NodeHost, cluster: Optional[Cluster]) -> Optional[Cluster]:
    """A new scope (no `initialize`) and a `standby_cluster` section in the files: it becomes the
    dynamic setting before anything is decided, so the first member copies the primary cluster
    instead of running initdb. Once the scope exists, only the dynamic setting counts
    (promote-cluster removes it; the files' section is not written again)."""
    seed = g.config.standby_cluster
    if cluster is None or seed is None or cluster.initialize is not None or standby.KEY in cluster.config:
        return cluster
    if datadir.classify(g.pg.data_dir) != datadir.EMPTY:
        # A scope whose keys were lost, with data here: that data decides, not the files' seed.
        g.once("standby-seed", "the scope has no keys but this member has data: the files' standby_cluster "
                               "section is not written (governorctl demote-cluster sets it)", logging.WARNING)
        return cluster
    try:
        if g.dcs.set_config(dynamic.patch(cluster.config, {standby.KEY: seed}), cluster.config_index):
            log.info("new scope: standby_cluster from the configuration files written to etcd (this cluster is "
                     "a standby of %s:%s)", seed.get("host"), seed.get("port", 5432))
        return g.dcs.get_cluster()
    except DCSError as exc:
        # Not decided on without the setting (that would be initdb): as if etcd did not answer.
        g.once("dcs", f"writing standby_cluster to etcd failed: {exc}", logging.WARNING)
        return None


def apply_dynamic(g: NodeHost, cluster: Cluster) -> None:
    """Take over the dynamic settings in etcd when the `config` key changed."""
    if cluster.config_index == g.dynamic_index:
        return
    g.dynamic_index = cluster.config_index
    problems = dynamic.validate(cluster.config, dynamic.timing(g.file_config),
                                catalogue(g.file_config.postgresql.bin_dir))
    if problems:
        g.once("dynamic", "the dynamic configuration in etcd is invalid, keeping the current settings: "
                  + "; ".join(problems), logging.ERROR)
        return
    g.once("dynamic", None)
    changed = apply_config(g, dynamic.apply(g.file_config, cluster.config), "dynamic configuration")
    if changed:
        log.info("dynamic configuration applied (changed: %s)", ", ".join(changed))


def apply_config(g: NodeHost, new: Config, why: str) -> list:
    """Switch to `new`; rewrite and reload PostgreSQL's settings when they changed."""
    changed = changed_keys(g.config, new)
    new = switch_etcd(g, new)
    g.config, g.pg = new, new.postgresql
    g.fence.set_ttl(new.etcd.ttl)
    g.notify.fit_watchdog(new.etcd.ttl)
    g.server.cfg = new.postgresql
    g.dcs.cfg, g.dcs.retry_timeout = new.etcd, new.retry_timeout
    if g.api is not None:
        g.api.config = new
    logging.getLogger().setLevel(new.log_level)
    log_mod.reformat(new.log_format)
    if not changed:
        return changed
    try:
        if datadir.classify(g.pg.data_dir) == datadir.POSTGRES:
            datadir.write_pgpass(g.pg)
            if g.controller.is_running() and g.write_conf(g.mem.conf_target):
                g.controller.reload()
                log.info("%s: PostgreSQL configuration rewritten and reloaded", why)
                role = g.server_state.role if g.server_state is not None else None
                g.callbacks.fire(g.config.callbacks, "on_reload", role or "replica")
    except (OSError, ControllerError) as exc:
        log.error("%s: could not apply the PostgreSQL settings: %s", why, exc)
    return changed


# Settings a running governor cannot take over on SIGHUP: its identity and where things live
# and listen.
RESTART_ONLY = {
    "etcd": ("scope",),   # endpoints, API, TLS and credentials change on reload in maintenance mode
    "postgresql": ("name", "listen_host", "port", "connect_host", "data_dir", "bin_dir", "socket_dir",
                   "log_file", "pgpass", "systemd_unit", "config_dir"),
    "restapi": None,   # the whole section
    "metrics": None,
    "watchdog": None,
}


def _flatten(obj: Any, prefix: str = "") -> Dict[str, Any]:
    out: Dict[str, Any] = {}
    for f in fields(obj):
        value = getattr(obj, f.name)
        key = f"{prefix}{f.name}"
        if is_dataclass(value):
            out.update(_flatten(value, key + "."))
        else:
            out[key] = value
    return out


def changed_keys(old: Config, new: Config) -> List[str]:
    a, b = _flatten(old), _flatten(new)
    return sorted(k for k in a if k != "source" and a[k] != b.get(k))


def merge_live(old: Config, new: Config) -> Tuple[Config, List[str]]:
    """`new` with the restart-only settings of `old`; also the restart-only keys that differed."""
    kept: List[str] = []
    merged = new
    for section, names in RESTART_ONLY.items():
        old_part, new_part = getattr(old, section), getattr(new, section)
        if names is None:
            if old_part != new_part:
                kept.append(section)
                merged = replace(merged, **{section: old_part})
            continue
        keep = {n: getattr(old_part, n) for n in names if getattr(old_part, n) != getattr(new_part, n)}
        if keep:
            kept.extend(f"{section}.{n}" for n in keep)
            merged = replace(merged, **{section: replace(getattr(merged, section), **keep)})
    return merged, kept
