"""Prometheus exporter: governor's own view of the node and the cluster.

Gauges are computed at scrape time from the NodeStatus the loop published last (no query per
scrape); counters and histograms are updated by the loop and the etcd adapter as things happen.
"""
from __future__ import annotations

import logging
import socketserver
import threading
import time
from typing import Callable, Iterable, Optional, Tuple
from wsgiref.simple_server import WSGIRequestHandler, make_server

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Histogram, generate_latest, make_wsgi_app
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, InfoMetricFamily, Metric
from prometheus_client.exposition import ThreadingWSGIServer
from prometheus_client.platform_collector import PlatformCollector
from prometheus_client.process_collector import ProcessCollector

from governor import __version__, standby
from governor.config import Config
from governor.status import NodeStatus

log = logging.getLogger(__name__)

ROLES = ("primary", "replica", "stopped", "uninitialized", "unknown")
LOOP_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60)
DCS_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10)


class Metrics:
    def __init__(self, config: Config, get_status: Callable[[], NodeStatus]):
        self.config = config
        self.registry = CollectorRegistry(auto_describe=True)
        ProcessCollector(registry=self.registry)
        PlatformCollector(registry=self.registry)
        self.registry.register(_StatusCollector(config, get_status))
        self.loop_duration = Histogram("governor_loop_duration_seconds", "Duration of one HA loop pass",
                                       buckets=LOOP_BUCKETS, registry=self.registry)
        self.dcs_duration = Histogram("governor_dcs_request_duration_seconds",
                                      "Duration of etcd operations, retries included", ["operation"],
                                      buckets=DCS_BUCKETS, registry=self.registry)
        self.dcs_errors = Counter("governor_dcs_errors_total", "etcd operations that failed", ["operation"],
                                  registry=self.registry)
        self.promotions = Counter("governor_promotions_total", "Times this member was promoted",
                                  registry=self.registry)
        self.failovers = Counter("governor_failovers_total",
                                 "Promotions of this member after the leader was lost (leader race)",
                                 registry=self.registry)
        self.demotions = Counter("governor_demotions_total", "Times this member demoted itself",
                                 registry=self.registry)
        self.unexpected_errors = Counter("governor_unexpected_errors_total",
                                         "Exceptions caught in a step of the loop (a bug or a hostile input)",
                                         ["step"], registry=self.registry)
        self.lock_fence = Counter("governor_lock_fence_total",
                                  "Times the lock fence demoted or stopped PostgreSQL because the leader lock "
                                  "could not be proven before its expiry", registry=self.registry)
        self.callback_failures = Counter("governor_callback_failures_total",
                                         "Callbacks that exited non-zero, were killed at callbacks.timeout or "
                                         "could not start", ["callback"], registry=self.registry)
        self._server: Optional[ThreadingWSGIServer] = None

    def observe_dcs(self, operation: str, seconds: float, ok: bool) -> None:
        self.dcs_duration.labels(operation).observe(seconds)
        if not ok:
            self.dcs_errors.labels(operation).inc()

    def exposition(self) -> Tuple[bytes, str]:
        """The scrape as the exporter serves it (the API serves it at /metrics as well)."""
        return generate_latest(self.registry), CONTENT_TYPE_LATEST

    def start(self) -> None:
        app = make_wsgi_app(self.registry)
        self._server = make_server(self.config.metrics.listen_host, self.config.metrics.port, app,
                                   _Server, handler_class=_QuietHandler)
        threading.Thread(target=self._server.serve_forever, name="metrics", daemon=True).start()
        log.info("Prometheus metrics on http://%s:%s/metrics", self.config.metrics.listen_host,
                 self.config.metrics.port)

    def stop(self) -> None:
        if self._server:
            self._server.shutdown()
            self._server.server_close()


class _Server(ThreadingWSGIServer):
    def server_bind(self) -> None:
        """Bind without the reverse DNS lookup (socket.getfqdn) of the standard server, which
        stalls start-up for as long as the resolver takes to give up."""
        socketserver.TCPServer.server_bind(self)
        self.server_name, self.server_port = self.server_address[:2]
        self.setup_environ()


class _QuietHandler(WSGIRequestHandler):
    def log_message(self, format: str, *args) -> None:  # noqa: A002 - signature from the base class
        log.debug("metrics %s - %s", self.address_string(), format % args)


class _StatusCollector:
    def __init__(self, config: Config, get_status: Callable[[], NodeStatus]):
        self.config = config
        self.get_status = get_status

    def describe(self) -> Iterable[Metric]:
        return []

    def collect(self) -> Iterable[Metric]:
        st = self.get_status()
        now = time.monotonic()
        info = InfoMetricFamily("governor_build", "governor version and identity of this member")
        info.add_metric([], {"version": __version__, "scope": st.scope, "member": st.name})
        yield info
        if st.etcd_cluster_id:
            etcd = InfoMetricFamily("governor_etcd_cluster", "The etcd cluster this member's endpoints answered from "
                                    "(members of one scope must agree)")
            etcd.add_metric([], {"cluster_id": st.etcd_cluster_id})
            yield etcd

        role = GaugeMetricFamily("governor_role", "1 for the role this member has now", labels=["role"])
        for name in ROLES:
            role.add_metric([name], 1.0 if st.role == name else 0.0)
        yield role

        def gauge(name: str, doc: str, value: Optional[float]) -> Optional[GaugeMetricFamily]:
            return GaugeMetricFamily(name, doc, value=value) if value is not None else None

        lock_left = (st.lock_deadline - now) if st.lock_valid(now) else 0.0
        for metric in (
            gauge("governor_lock_held", "1 when this member holds the leader lock", float(st.lock_valid(now))),
            gauge("governor_lock_expiry_seconds", "Seconds until the leader lock expires unless renewed",
                  max(0.0, lock_left)),
            gauge("governor_postgres_running", "1 when the postmaster is running", float(st.running)),
            gauge("governor_postgres_up", "1 when PostgreSQL answers queries",
                  float(st.running and st.role in ("primary", "replica"))),
            gauge("governor_dcs_reachable", "1 when etcd answered in the last loop", float(st.dcs_reachable)),
            gauge("governor_etcd_endpoints_split", "1 while this member's etcd endpoints belong to different etcd "
                  "clusters: it acts on neither", float(st.etcd_split)),
            gauge("governor_paused", "1 while automatic actions are paused", float(st.paused)),
            gauge("governor_pending_restart", "1 while a changed PostgreSQL setting waits for a restart",
                  float(st.pending_restart)),
            gauge("governor_standby_cluster", "1 while this cluster is a standby cluster (standby_cluster set): "
                  "it has no primary", float(standby.KEY in st.cluster.config) if st.cluster is not None else None),
            gauge("governor_failsafe_active", "1 while this primary stays primary on its members' promises "
                  "(failsafe_mode, etcd unusable), or this member keeps such a promise",
                  float(st.failsafe is not None)),
            gauge("governor_sync_standby", "1 when the leader's synchronous promise names this member",
                  float(st.sync_standby)),
            gauge("governor_sync_degraded", "Leader in synchronous mode: 1 while commits are acknowledged "
                  "without a synchronous standby", float(st.sync_degraded) if st.sync_degraded is not None else None),
            gauge("governor_timeline", "PostgreSQL timeline", float(st.timeline) if st.timeline else None),
            gauge("governor_postgres_start_timestamp_seconds", "Unix time the running PostgreSQL started",
                  st.started_at if st.running and st.started_at else None),
            gauge("governor_wal_current_lsn_bytes", "Primary: current WAL position",
                  float(st.lsn) if st.role == "primary" and st.lsn is not None else None),
            gauge("governor_wal_received_lsn_bytes", "Replica: last WAL position received",
                  float(st.lsn) if st.role == "replica" and st.lsn is not None else None),
            gauge("governor_wal_replayed_lsn_bytes", "Replica: last WAL position replayed",
                  float(st.replay_lsn) if st.replay_lsn is not None else None),
            gauge("governor_streaming", "Replica: 1 when its WAL receiver streams", float(st.streaming)),
            gauge("governor_last_loop_timestamp_seconds", "Unix time the last HA loop completed",
                  st.loop_finished_wall or None),
            gauge("governor_dynamic_settings_ignored", "Settings in the config key in etcd that only the files "
                  "may set (they run a program, load code or choose where files are written): ignored",
                  float(len(st.cluster.ignored_settings)) if st.cluster is not None else None),
            gauge("governor_members", "Members registered in etcd",
                  float(len(st.cluster.members)) if st.cluster is not None else None),
        ):
            if metric is not None:
                yield metric

        yield from _archiver_metrics(st)
        lag = GaugeMetricFamily("governor_replication_lag_bytes",
                                "Leader: bytes each replica's replay position is behind the current WAL position",
                                labels=["replica"])
        streaming = GaugeMetricFamily("governor_replica_streaming",
                                      "Leader: 1 for each replica connected and streaming", labels=["replica"])
        synchronous = GaugeMetricFamily("governor_replica_synchronous",
                                        "Leader: 1 for each replica PostgreSQL waits for (sync or quorum)",
                                        labels=["replica"])
        for r in st.replicas:
            if r.lag_bytes is not None:
                lag.add_metric([r.name], float(r.lag_bytes))
            streaming.add_metric([r.name], 1.0 if r.state == "streaming" else 0.0)
            synchronous.add_metric([r.name], 1.0 if r.sync_state in ("sync", "quorum") else 0.0)
        yield lag
        yield streaming
        yield synchronous


def _archiver_metrics(st: NodeStatus) -> Iterable[Metric]:
    """pg_stat_archiver, when archive_mode is on: counters since PostgreSQL's statistics were
    last reset (a crash resets them; rate() copes)."""
    a = st.archiver
    if a is None:
        return
    yield CounterMetricFamily("governor_archiver_archived", "WAL files archive_command archived",
                              value=a.archived_count)
    yield CounterMetricFamily("governor_archiver_failed", "Failed archive_command attempts", value=a.failed_count)
    yield GaugeMetricFamily("governor_archiver_failing", "1 when archive_command's last attempt failed",
                            value=float(a.failing))
    if a.pending is not None:
        yield GaugeMetricFamily("governor_archiver_pending_segments",
                                "WAL segments waiting for archive_command (.ready)", value=float(a.pending))
    if a.last_archived_time is not None:
        yield GaugeMetricFamily("governor_archiver_last_archived_timestamp_seconds",
                                "Unix time of the last WAL file archived", value=a.last_archived_time)
