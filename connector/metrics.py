"""Every Prometheus metric of the connector, defined once (SPEC 7).

Processes increment these; the web process exposes them at ``/metrics``.  Labels: ``connection``
(a configured id, or ``unknown`` before a request is authenticated), ``direction``
(``segment_to_voucherify`` | ``voucherify_to_segment``), ``region`` (the target's region or
dedicated-cluster host), ``reason``/``outcome``/``status`` from closed sets.  Label values are
bounded sets (connection ids from configuration, fixed reasons and outcomes, HTTP status codes),
never free text or customer data.  Multiprocess aggregation (``PROMETHEUS_MULTIPROC_DIR``) is
set up by the process entry points (:mod:`connector.multiprocess`), not here: this module must
be imported after that set-up.

The counters an operator alerts on are :class:`FleetCounter`: besides this process's counter
(``connector_deliveries_total``, per process, or per machine with the shared directory) each
increment is added to the fleet's totals in Redis (:mod:`connector.fleet`), which every web's
``/metrics`` shows as ``connector_fleet_deliveries_total``, whichever process or machine counted.
Histograms and process-local counters (the scheduler's, metadata keys per process) stay per process.
"""

from __future__ import annotations

from typing import Any

from prometheus_client import Counter, Histogram

from connector import fleet


class FleetCounter:
    """A counter of this process whose increments also go to the fleet's totals in Redis.

    Used as prometheus_client's: ``COUNTER.labels(*values).inc(n)``.  Its fleet family is named
    after it: ``connector_X_total`` -> ``connector_fleet_X_total``, same labels (``connection``
    first: the fleet's totals are kept per connection)."""

    def __init__(self, name: str, documentation: str, labelnames: list[str]) -> None:
        self.process = Counter(name, documentation, labelnames)
        self.labelnames = tuple(labelnames)
        base = name.removeprefix("connector_").removesuffix("_total")
        self.fleet = fleet.define(
            f"connector_fleet_{base}", f"{documentation} -- every process of the fleet", self.labelnames
        )

    def labels(self, *values: str, **named: str) -> FleetChild:
        if named:
            values = tuple(named[label] for label in self.labelnames)
        texts = tuple(str(v) for v in values)
        return FleetChild(self.process.labels(*texts), self.fleet.name, texts)


class FleetChild:
    __slots__ = ("process", "slot")

    def __init__(self, process: Any, family: str, values: tuple[str, ...]) -> None:
        self.process = process
        self.slot = fleet.slot(family, values)

    def inc(self, amount: float = 1) -> None:
        self.process.inc(amount)
        # Counts of events and calls: whole numbers (HINCRBY).
        fleet.add_slot(self.slot, int(amount))


def status_label(status: int | None) -> str:
    """An HTTP status as a label of a bounded set: ``error`` without an answer, ``other`` for a
    status no server should send."""
    if status is None:
        return "error"
    return str(status) if 100 <= status <= 599 else "other"


# --- ingest (web) ------------------------------------------------------------------------------
# Incremented once per request with counts (``inc(n)``), never once per event.
EVENTS_RECEIVED = FleetCounter(
    "connector_events_received_total",
    "Events accepted by the ingest (durably enqueued)",
    ["connection", "direction", "region", "source"],
)
EVENTS_REJECTED = FleetCounter(
    "connector_events_rejected_total",
    "Events refused by the ingest, by reason (a whole refused request counts once, with its code)",
    ["connection", "direction", "reason"],
)

# --- workers ----------------------------------------------------------------------------------
EVENTS_SKIPPED = FleetCounter(
    "connector_events_skipped_total",
    "Events acknowledged without an outbound call (by design, duplicates, stale)",
    ["connection", "direction", "reason"],
)
DELIVERIES = FleetCounter(
    "connector_deliveries_total",
    "Outbound delivery attempts by outcome (delivered, retry, dead_letter) and HTTP status",
    ["connection", "direction", "region", "outcome", "status"],
)
RETRIES_SCHEDULED = FleetCounter(
    "connector_retries_scheduled_total",
    "Deliveries parked for a retry after a failure",
    ["connection", "direction"],
)
DEAD_LETTERS = FleetCounter(
    "connector_dead_letters_total", "Events dead-lettered, by reason", ["connection", "direction", "reason"]
)
RATE_LIMIT_WAITS = FleetCounter(
    "connector_rate_limit_waits_total",
    "Deliveries parked because a request budget was spent or the target asked to slow down",
    ["connection", "target"],
)
RATE_LIMIT_SLOWDOWNS = FleetCounter(
    "connector_rate_limit_slowdowns_total",
    "Adaptive slow-downs after a 429 or a low X-Rate-Limit-Remaining",
    ["connection", "target"],
)
PARKED = FleetCounter(
    "connector_parked_total",
    "Deliveries parked in the delayed store, by reason",
    ["connection", "direction", "reason"],
)
METADATA_DROPPED = Counter(  # per process: its key label is bounded per process only
    "connector_metadata_keys_dropped_total",
    "Customer metadata keys left out because the project's metadata schema does not define them "
    '(or not with that type): metadata_schema = "defined".  key: the name, at most 100 per '
    "connection and process, then _other",
    ["connection", "key", "reason"],
)
DROPPED = FleetCounter(
    "connector_dropped_total",
    "Work dropped because its connection is no longer configured",
    ["connection", "kind"],
)
CALLS = FleetCounter(
    "connector_calls_total",
    "Outbound delivery requests by target and HTTP status (error: no answer; 429: slowed down)",
    ["connection", "target", "status"],
)
DELIVERY_LATENCY = Histogram(
    "connector_delivery_latency_seconds",
    "From ingest to acknowledgement by the target",
    ["direction"],
    buckets=(0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300, 900, 3600, 14400),
)
REQUEST_LATENCY = Histogram(
    "connector_request_latency_seconds",
    "Duration of one outbound HTTP request",
    ["target"],
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 15),
)
BATCH_SIZE = Histogram(  # Segment is the one batch target today: its name stays for dashboards
    "connector_segment_batch_events",
    "Events per Segment /v1/batch request",
    buckets=(1, 2, 5, 10, 25, 50, 100, 250, 500, 1000, 2500),
)

# --- fewer calls (SPEC 10: hold, unchanged skip, bulk read-back) --------------------------------
UPSERTS_SKIPPED = FleetCounter(
    "connector_upserts_skipped_total",
    "Customer upserts not sent: their merged body equals the last one Voucherify accepted",
    ["connection"],
)
ASYNC_ACTIONS = FleetCounter(
    "connector_async_actions_total",
    "Voucherify bulk async actions read back, by outcome (done, failed, expired, accepted)",
    ["connection", "status"],
)
# connector_upserts_held{connection} (customers with held upserts) is read from Redis when
# /metrics is scraped, like the queue depths.

# --- scheduler / state ------------------------------------------------------------------------
SCHEDULER_PUBLISHED = Counter(
    "connector_scheduler_published_total", "Parked entries moved back onto a queue", ["queue"]
)
SCHEDULER_ERRORS = Counter("connector_scheduler_errors_total", "Scheduler loop errors", ["kind"])
OUTBOX_FLUSHES_PUBLISHED = Counter(
    "connector_outbox_flushes_published_total",
    "Segment outbox flush tasks published by the sweep",
    ["connection"],
)

# Queue depths, delayed entries and dead letters are read from Redis when /metrics is scraped
# (connector.depths / app.metrics), not kept as gauges by the processes.


_children: dict[tuple[int, tuple[str, ...]], Any] = {}


def child(metric: Any, *labels: str) -> Any:
    """``metric.labels(*labels)``, looked up once per process (label sets are small, bounded):
    the hot path of a busy worker labels the same few children thousands of times a second."""
    key = (id(metric), labels)
    found = _children.get(key)
    if found is None:
        found = _children[key] = metric.labels(*labels)
    return found
