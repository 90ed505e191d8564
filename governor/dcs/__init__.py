"""The distributed configuration store: the interface (base.py) and the adapter a configuration
asks for (etcd v2 or v3)."""
from __future__ import annotations

from governor.dcs.base import DCS  # noqa: F401 - re-exported
from governor.dcs.errors import TLS_REFUSAL, DCSError, short_error  # noqa: F401 - re-exported


def make(cfg, retry_timeout: float) -> DCS:
    """The adapter for an EtcdConfig: v2 (python-etcd) or v3 (JSON gateway; also when `api` is
    not set)."""
    if cfg.api != 2:
        from governor.dcs.etcd3 import Etcd3

        return Etcd3(cfg, retry_timeout=retry_timeout)
    from governor.dcs.etcd2 import Etcd2

    return Etcd2(cfg, retry_timeout=retry_timeout)


def from_config(config) -> DCS:
    return make(config.etcd, config.retry_timeout)
