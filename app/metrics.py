"""``GET /metrics``: Prometheus text for the whole machine, and the ingest's own counters.

The fleet-wide counters (``connector_fleet_*_total``, :mod:`connector.fleet`) are read from
Redis at scrape time: every process of every machine adds its counts there, so any web process
answers the same fleet totals, with or without a shared directory.  They are what the shipped
alert rules and dashboard use.

The processes' own metrics (``connector_deliveries_total``, the latency histograms...): with
``PROMETHEUS_MULTIPROC_DIR`` (see :mod:`connector.multiprocess`) the answer merges the metric
files of every gunicorn worker, Celery worker and scheduler sharing the directory.  Without it,
they are this gunicorn worker's own registry only (said once at start-up).

Queue depths are not counters kept by a process: they are read from Redis at scrape time
(:mod:`connector.depths`), so every scrape sees the current broker queues, parked work and
dead letters, whichever process answers.

Without ``METRICS_TOKEN`` the endpoint is open, so it names no connection: every series with a
``connection`` label is summed over its connections (:class:`Totals`).  Connection ids are the
doors of the webhook receivers, and the per-connection series would tell anyone which exist,
with their dead letters, backlog, quota and pause state.  With the token, the per-connection
series as they are.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable, Iterator
from typing import Any

import redis
from flask import Blueprint, Response, current_app, has_app_context, request
from prometheus_client import REGISTRY, CollectorRegistry, generate_latest
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.exposition import CONTENT_TYPE_LATEST
from prometheus_client.registry import Collector
from prometheus_client.samples import Sample

from app.auth import require_token
from connector import depths, fleet, forecast, heartbeat, metrics, overview
from connector.config import Connection, Settings
from connector.contract import DESTINATION, SOURCE
from connector.keys import Keys
from connector.regulations import SUPPRESSED

log = logging.getLogger("connector.web")

metrics_bp = Blueprint("metrics", __name__)


# --- ingest counters (called by the views, once per request) ----------------------------------


def region_of(connection: Connection, direction: str) -> str:
    if direction == SOURCE and connection.segment is not None:
        return connection.segment.region or connection.segment.queue.split(".", 1)[-1]
    return connection.voucherify.region or connection.voucherify.queue.split(".", 1)[-1]


def _overview(connection_id: str, kind: str, reason: str | None, count: int) -> None:
    """The delivery overview's ingest counts (:mod:`connector.overview`), buffered per process."""
    if connection_id == "unknown" or count <= 0 or not has_app_context():
        return
    recorder = current_app.extensions.get("connector.trace")
    if recorder is not None:
        recorder.count(connection_id, kind, reason, n=count)
        recorder.autoflush(current_app.extensions["connector.redis"])


def count_received(connection: Connection, direction: str, source: str, count: int) -> None:
    if count > 0:
        metrics.EVENTS_RECEIVED.labels(
            connection.id, direction, region_of(connection, direction), source
        ).inc(count)
        _overview(connection.id, overview.RECEIVED, None, count)


def count_rejected(connection_id: str, direction: str, codes: Iterable[str]) -> None:
    by_code: dict[str, int] = {}
    for code in codes:
        by_code[code] = by_code.get(code, 0) + 1
    for code, count in by_code.items():
        metrics.EVENTS_REJECTED.labels(connection_id, direction, code).inc(count)
        _overview(connection_id, overview.REJECTED, code, count)


def count_refused_request(connection_id: str, direction: str, code: str, events: int = 1) -> None:
    metrics.EVENTS_REJECTED.labels(connection_id, direction, code).inc(max(1, events))
    _overview(connection_id, overview.REJECTED, code, max(1, events))


# --- scrape-time gauges ---------------------------------------------------------------------


class DepthCollector(Collector):
    """Gauges read from Redis when scraped."""

    def __init__(self, client: redis.Redis, settings: Settings) -> None:
        self.client = client
        self.settings = settings

    def collect(self) -> Iterator[Metric]:
        up = GaugeMetricFamily("connector_redis_up", "1 when Redis answered this scrape")
        try:
            snap = depths.snapshot(self.client, self.settings)
        except redis.RedisError as exc:
            log.warning("metrics: Redis unavailable for queue depths", extra={"error": str(exc)[:200]})
            up.add_metric([], 0)
            yield up
            return
        up.add_metric([], 1)
        yield up
        queue = GaugeMetricFamily(
            "connector_queue_depth", "Messages waiting in a broker queue", labels=["queue"]
        )
        for name, depth in snap.queues.items():
            queue.add_metric([name], depth)
        yield queue
        yield GaugeMetricFamily(
            "connector_queue_unacked", "Broker messages taken by a worker, not yet acknowledged", snap.unacked
        )
        delayed = GaugeMetricFamily(
            "connector_delayed_entries",
            "Entries parked in the delayed store (retries, throttled work); state=due: overdue now",
            labels=["state"],
        )
        delayed.add_metric(["all"], snap.delayed)
        delayed.add_metric(["due"], snap.delayed_due)
        yield delayed
        dead = GaugeMetricFamily(
            "connector_dead_letter_entries", "Dead letters kept, per connection", labels=["connection"]
        )
        backlog = GaugeMetricFamily(
            "connector_backlog_events",
            "Accepted, unfinished work per connection (backpressure)",
            labels=["connection"],
        )
        limit = GaugeMetricFamily(
            "connector_backlog_limit",
            "The backlog bound per connection (backlog_limit): over it the ingest answers 429",
            labels=["connection"],
        )
        paused = GaugeMetricFamily(
            "connector_connection_paused",
            "1 while a connection's delivery to a system is paused (reason=auth: its credentials "
            "were refused; system=voucherify|segment: pauses are per target system)",
            labels=["connection", "reason", "system"],
        )
        for state in snap.connections:
            dead.add_metric([state.id], state.dead_letters)
            backlog.add_metric([state.id], state.backlog)
            limit.add_metric([state.id], state.backlog_limit)
            for system, pause in (state.pauses or {"voucherify": state.paused}).items():
                reason = (pause or {}).get("reason") or "auth"
                paused.add_metric([state.id, reason, system], 1 if pause else 0)
        for connection_id, count in snap.dead_letters_unconfigured.items():
            dead.add_metric([connection_id], count)
        yield dead
        yield backlog
        yield limit
        yield paused
        yield self._held()
        yield from self._workers_and_redis()

    def _workers_and_redis(self) -> Iterator[Metric]:
        """Workers alive per queue (heartbeats) and whether Redis keeps what it holds: the
        "workers absent" and "Redis without persistence" alerts (monitoring/alerts.yml)."""
        try:
            alive = heartbeat.alive_per_queue(self.client, Keys(self.settings.key_prefix))
            persistence = self.client.info("persistence")
            memory = self.client.info("memory")
        except redis.RedisError as exc:
            log.warning("metrics: Redis unavailable for workers/persistence", extra={"error": str(exc)[:200]})
            return
        workers = GaugeMetricFamily(
            "connector_workers_alive",
            f"Celery workers consuming a queue that sent a heartbeat in the last {heartbeat.ALIVE_WITHIN_SECONDS:.0f} s",
            labels=["queue"],
        )
        for queue in sorted(set(depths.queue_names(self.settings)) | set(alive)):
            workers.add_metric([queue], alive.get(queue, 0))
        yield workers
        yield GaugeMetricFamily(
            "connector_redis_aof_enabled",
            "1 when Redis writes an append-only file (persistence SPEC 5 asks for); 0: a restart loses queued work",
            int(str(persistence.get("aof_enabled", "0")) == "1"),
        )
        yield GaugeMetricFamily(
            "connector_redis_noeviction",
            "1 when Redis' maxmemory-policy is noeviction (never drops queued work or ledger keys)",
            int(str(memory.get("maxmemory_policy", "")) == "noeviction"),
        )

    def _held(self) -> Metric:
        held = GaugeMetricFamily(
            "connector_upserts_held",
            "Customers whose upserts wait in the hold window (SPEC 10), per connection",
            labels=["connection"],
        )
        keys = Keys(self.settings.key_prefix)
        try:
            pipe = self.client.pipeline(transaction=False)
            for connection in self.settings.connections:
                pipe.zcard(keys.holds(connection.id))
            counts = pipe.execute()
        except redis.RedisError:
            return held
        for connection, count in zip(self.settings.connections, counts, strict=True):
            held.add_metric([connection.id], int(count))
        return held


class FleetCollector(Collector):
    """The fleet-wide counters, read from Redis when scraped (absent when Redis does not answer:
    ``connector_redis_up`` says so)."""

    def __init__(self, client: redis.Redis, keys: Keys) -> None:
        self.client = client
        self.keys = keys

    def collect(self) -> Iterator[Metric]:
        try:
            families = fleet.read(self.client, self.keys)
        except redis.RedisError as exc:
            log.warning("metrics: Redis unavailable for the fleet counters", extra={"error": str(exc)[:200]})
            return
        yield from families


class QuotaCollector(Collector):
    """The quota forecast (:mod:`connector.forecast`) as gauges, read from Redis when scraped."""

    def __init__(self, client: redis.Redis, settings: Settings) -> None:
        self.client = client
        self.settings = settings

    def collect(self) -> Iterator[Metric]:
        try:
            found = forecast.forecasts(self.client, self.settings)
        except redis.RedisError as exc:
            log.warning("metrics: Redis unavailable for the quota forecast", extra={"error": str(exc)[:200]})
            return
        labels = ["connection", "budget"]
        used = GaugeMetricFamily(
            "connector_quota_used", "Calls the connector made in the budget's current window", labels=labels
        )
        limit = GaugeMetricFamily(
            "connector_quota_limit",
            "The connector's part of the budget (its share of the plan)",
            labels=labels,
        )
        reserve = GaugeMetricFamily(
            "connector_quota_reserve",
            "The part of the plan's limit left to the shop (checkout)",
            labels=labels,
        )
        per_event = GaugeMetricFamily(
            "connector_calls_per_event",
            "Voucherify calls per event over the last hour",
            labels=["connection"],
        )
        drain = GaugeMetricFamily(
            "connector_backlog_drain_seconds",
            "When the backlog is gone at this rate (absent while it grows)",
            labels=["connection"],
        )
        growth = GaugeMetricFamily(
            "connector_backlog_growth_per_hour",
            "Events an hour the backlog grows by (absent while it drains): raise the plan or the share",
            labels=["connection"],
        )
        exhausted = GaugeMetricFamily(
            "connector_cycle_budget_exhausted_timestamp_seconds",
            "When the cycle budget runs out at the last hour's rate (absent: it lasts the cycle)",
            labels=["connection"],
        )
        for fc in found:
            for budget in fc.budgets:
                used.add_metric([fc.connection, budget.name], budget.used)
                if budget.limit is not None:
                    limit.add_metric([fc.connection, budget.name], budget.limit)
                if budget.reserve is not None:
                    reserve.add_metric([fc.connection, budget.name], budget.reserve)
            if fc.calls_per_event is not None:
                per_event.add_metric([fc.connection], fc.calls_per_event)
            if fc.drain_seconds is not None:
                drain.add_metric([fc.connection], fc.drain_seconds)
            if fc.growth_per_hour is not None:
                growth.add_metric([fc.connection], fc.growth_per_hour)
            if fc.cycle_exhausted_at is not None:
                exhausted.add_metric([fc.connection], fc.cycle_exhausted_at)
        yield from (used, limit, reserve, per_event, drain, growth, exhausted)


class _Default(Collector):
    """This process's own registry (single-process fallback)."""

    def collect(self) -> Iterator[Metric]:
        yield from REGISTRY.collect()


CONNECTION_LABEL = "connection"
# Series that do not add up across connections: the worst (or earliest) one stands for all.
_COMBINE: dict[str, Callable[[float, float], float]] = {
    "connector_calls_per_event": max,
    "connector_backlog_drain_seconds": max,
    "connector_cycle_budget_exhausted_timestamp_seconds": min,
}


def _add(a: float, b: float) -> float:
    return a + b


class Totals(Collector):
    """``source``'s metrics with the ``connection`` label summed away (see the module doc)."""

    def __init__(self, source: Collector) -> None:
        self.source = source

    def collect(self) -> Iterator[Metric]:
        for family in self.source.collect():
            if not any(CONNECTION_LABEL in sample.labels for sample in family.samples):
                yield family
                continue
            merged: dict[tuple[str, tuple[tuple[str, str], ...]], float] = {}
            for sample in family.samples:
                labels = tuple(sorted((k, v) for k, v in sample.labels.items() if k != CONNECTION_LABEL))
                key = (sample.name, labels)
                if key not in merged:
                    merged[key] = sample.value
                    continue
                # A counter's creation time is the earliest one, never a sum.
                combine = min if sample.name.endswith("_created") else _COMBINE.get(family.name, _add)
                merged[key] = combine(merged[key], sample.value)
            total = Metric(family.name, family.documentation, family.type, family.unit)
            total.samples = [Sample(name, dict(labels), value) for (name, labels), value in merged.items()]
            yield total


def announce_mode(directory: str | None) -> None:
    if directory is not None:
        log.info("metrics: multiprocess mode", extra={"directory": directory})
    else:
        log.warning(
            "metrics: PROMETHEUS_MULTIPROC_DIR is not set; /metrics shows only the gunicorn worker "
            "that answers, except the connector_fleet_* counters: the whole fleet's, from Redis "
            "(set it to a shared, empty directory to aggregate this machine's processes)"
        )


def _registry() -> CollectorRegistry:
    from prometheus_client import multiprocess as prom_multiprocess

    settings: Settings = current_app.extensions["connector.settings"]
    registry = CollectorRegistry(auto_describe=False)
    if settings.metrics_dir is not None:
        prom_multiprocess.MultiProcessCollector(registry, path=settings.metrics_dir)
    else:
        registry.register(_Default())
    registry.register(DepthCollector(current_app.extensions["connector.redis"], settings))
    registry.register(FleetCollector(current_app.extensions["connector.redis"], Keys(settings.key_prefix)))
    registry.register(QuotaCollector(current_app.extensions["connector.redis"], settings))
    return registry


@metrics_bp.get("/metrics")
def scrape() -> Response:
    # Open by default (Prometheus' convention, and nothing secret in it); METRICS_TOKEN closes it
    # (Bearer, or the Basic password: Prometheus' `authorization` or `basic_auth` settings).
    # Open without a token, but then naming no connection (totals only, see the module doc).
    settings: Settings = current_app.extensions["connector.settings"]
    if settings.metrics_token is not None:
        require_token(request, settings.metrics_token, "connector metrics")
    # This process's own counts first: what it just counted is in the answer (the others' come
    # with their next flush, a few seconds at most).
    fleet.flush()
    registry = _registry()
    # The real sandbox (make run on loopback, see app.status) names its one made-up connection.
    if settings.metrics_token is None and not settings.sandbox:
        totals = CollectorRegistry(auto_describe=False)
        totals.register(Totals(registry))
        registry = totals
    return Response(generate_latest(registry), content_type=CONTENT_TYPE_LATEST)


def count_suppressed(connection_id: str, door: str, message_ids: list[Any]) -> None:
    """Events of suppressed users dropped at the ingest (SPEC 14): received, then skipped
    ``suppressed`` -- counted and traced as the workers count and trace their skips."""
    if not message_ids or not has_app_context():
        return
    metrics.EVENTS_SKIPPED.labels(connection_id, DESTINATION, SUPPRESSED).inc(len(message_ids))
    recorder = current_app.extensions.get("connector.trace")
    if recorder is None:
        return
    for message_id in message_ids:
        recorder.received(message_id, connection=connection_id, direction=DESTINATION, door=door, at=None)
        recorder.outcome([message_id], connection=connection_id, outcome=overview.SKIPPED, reason=SUPPRESSED)
    recorder.autoflush(current_app.extensions["connector.redis"])
