"""Process knobs: read from the environment once, at start-up, by :mod:`connector.config`.

Every value has a production default; the end-to-end fault tests shrink the backoff, the retry
window and the scheduler interval to run in seconds.  An unreadable value keeps its default
(these are tuning knobs, not configuration an operator must get right to start).

Delivery (:class:`Tuning`):

| variable | default | meaning |
|---|---|---|
| ``CONNECTOR_RETRY_BASE_SECONDS`` | 2 | first retry delay (decorrelated jitter starts here) |
| ``CONNECTOR_RETRY_CAP_SECONDS`` | 300 | longest backoff we choose ourselves (servers may ask more) |
| ``CONNECTOR_RETRY_WINDOW_SECONDS`` | unset | overrides every connection's retry window (tests) |
| ``CONNECTOR_CLAIM_TTL_SECONDS`` | 60 | how long an in-flight ledger claim lives (> one HTTP call) |
| ``CONNECTOR_LEDGER_EXTRA_SECONDS`` | 86400 | delivered keys live retry window + this |
| ``CONNECTOR_CONNECT_TIMEOUT`` / ``CONNECTOR_READ_TIMEOUT`` | 3 / 10 | HTTP timeouts, seconds |
| ``CONNECTOR_DELIVERY_CONCURRENCY`` | 32 | concurrent customers per task |
| ``CONNECTOR_WORKER_INFLIGHT`` | 100 | calls a worker process has in flight per target origin (send slots, shared by its tasks; also its HTTP pool size) |
| ``CONNECTOR_WORKER_EVENTS`` | 3000 | events a worker process works on at once (its memory bound); a task that would pass it waits before it starts; 0: no bound |
| ``CONNECTOR_TASK_BUDGET_SECONDS`` | 20 | a task parks what is left after this |
| ``CONNECTOR_STALE_TTL_SECONDS`` | 604800 | how long the newest upsert time per customer is kept |
| ``CONNECTOR_AUTH_PROBE_SECONDS`` | 300 | a connection paused on refused credentials is probed this often |
| ``CONNECTOR_SHUTDOWN_GRACE_SECONDS`` | 25 | a stopping worker's calls on the wire may finish this long, then it exits as if killed |
| ``CONNECTOR_QUOTA_PERIOD_SCALE`` | 1 | TEST ONLY: Voucherify's quota periods shortened (the fake's ``period_scale``) |
| ``CONNECTOR_SLOWDOWN_SECONDS`` | 60 | how long a slow-down lasts |
| ``CONNECTOR_SEGMENT_MAX_EVENTS`` / ``_MAX_BYTES`` / ``_MAX_EVENT_BYTES`` | 2500 / 500000 / 32768 | one /v1/batch request |
| ``CONNECTOR_METADATA_SCHEMA_REFRESH_SECONDS`` | 3600 | how old a cached metadata schema may get |
| ``CONNECTOR_ASYNC_ACTION_BOUND_SECONDS`` | 600 | a bulk not DONE this long after its 202: its customers are sent singly |
| ``CONNECTOR_METRICS_FLUSH_SECONDS`` | 5 | how often a process adds its fleet counters to Redis (:mod:`connector.fleet`) |

Scheduler (:class:`SchedulerConfig`): ``CONNECTOR_SCHEDULER_INTERVAL`` / ``_BATCH`` /
``_LEASE_SECONDS`` (0.5 / 200 / 30); ``CONNECTOR_BACKLOG_RECONCILE_SECONDS`` (30, how often it
looks for backlog counters left high by a dead process).

Broker (:class:`BrokerOptions`): ``CONNECTOR_VISIBILITY_TIMEOUT`` (120), ``CONNECTOR_PREFETCH`` (1),
``CONNECTOR_BROKER_MAX_CONNECTIONS`` (500).

Elsewhere in :mod:`connector.config`: ``CONNECTOR_KEY_PREFIX``, ``CONNECTOR_BODY_TIMEOUT_SECONDS``
(10, the web's deadline for a request body), ``WORKER_QUEUES``, ``LOG_FORMAT``, ``LOG_LEVEL``,
``PROMETHEUS_MULTIPROC_DIR``.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from typing import Any, Final, TypeVar

from connector.contract import SEGMENT_MAX_EVENT_BYTES, TASK_TIME_BUDGET_SECONDS

SEGMENT_MAX_EVENTS: Final = 2500
SEGMENT_MAX_BATCH_BYTES: Final = 500_000
T = TypeVar("T")


def knob(default: Any, env: str, *, minimum: float | None = None) -> Any:
    """A dataclass field read from the environment variable ``env`` by :func:`from_env`."""
    return field(default=default, metadata={"env": env, "minimum": minimum})


def env_float(env: Mapping[str, str], name: str, default: float) -> float:
    raw = env.get(name)
    if raw is None or raw == "":
        return default
    try:
        return float(raw)
    except ValueError:
        return default


def from_env(cls: type[T], env: Mapping[str, str]) -> T:
    """``cls`` with each :func:`knob` field read from the environment (an unreadable value keeps
    its default; a field whose default is None stays None unless its variable is set)."""
    values: dict[str, Any] = {}
    for spec in fields(cls):  # type: ignore[arg-type]
        name = spec.metadata.get("env")
        if name is None:
            continue
        default: Any = spec.default
        if default is None:
            values[spec.name] = env_float(env, name, 0.0) if env.get(name) else None
            continue
        number = env_float(env, name, float(default))
        minimum = spec.metadata.get("minimum")
        if minimum is not None:
            number = max(minimum, number)
        values[spec.name] = int(number) if isinstance(default, int) else number
    return cls(**values)


@dataclass(frozen=True)
class Tuning:
    retry_base: float = knob(2.0, "CONNECTOR_RETRY_BASE_SECONDS")
    retry_cap: float = knob(300.0, "CONNECTOR_RETRY_CAP_SECONDS")
    retry_window_override: float | None = knob(None, "CONNECTOR_RETRY_WINDOW_SECONDS")
    claim_ttl: float = knob(60.0, "CONNECTOR_CLAIM_TTL_SECONDS")
    ledger_extra: float = knob(86400.0, "CONNECTOR_LEDGER_EXTRA_SECONDS")
    connect_timeout: float = knob(3.0, "CONNECTOR_CONNECT_TIMEOUT")
    read_timeout: float = knob(10.0, "CONNECTOR_READ_TIMEOUT")
    concurrency: int = knob(32, "CONNECTOR_DELIVERY_CONCURRENCY", minimum=1)
    inflight: int = knob(100, "CONNECTOR_WORKER_INFLIGHT", minimum=1)
    # Events in work at once per worker process (workers.inwork): its peak memory, by design.
    worker_events: int = knob(3000, "CONNECTOR_WORKER_EVENTS", minimum=0)
    task_budget: float = knob(float(TASK_TIME_BUDGET_SECONDS), "CONNECTOR_TASK_BUDGET_SECONDS")
    stale_ttl: float = knob(7 * 86400.0, "CONNECTOR_STALE_TTL_SECONDS")
    slowdown_seconds: float = knob(60.0, "CONNECTOR_SLOWDOWN_SECONDS")
    segment_max_events: int = knob(SEGMENT_MAX_EVENTS, "CONNECTOR_SEGMENT_MAX_EVENTS")
    segment_max_bytes: int = knob(SEGMENT_MAX_BATCH_BYTES, "CONNECTOR_SEGMENT_MAX_BYTES")
    segment_max_event_bytes: int = knob(SEGMENT_MAX_EVENT_BYTES, "CONNECTOR_SEGMENT_MAX_EVENT_BYTES")
    metadata_schema_refresh: float = knob(3600.0, "CONNECTOR_METADATA_SCHEMA_REFRESH_SECONDS", minimum=1.0)
    # A bulk's async action not DONE this long after its 202: its customers are sent singly
    # (SPEC 10), while newer upserts of theirs wait for the original (workers.delivery.pending).
    async_action_bound: float = knob(600.0, "CONNECTOR_ASYNC_ACTION_BOUND_SECONDS", minimum=1.0)
    # A paused connection (credentials refused) is probed this often; its work parks this long.
    auth_probe: float = knob(300.0, "CONNECTOR_AUTH_PROBE_SECONDS", minimum=0.1)
    # A worker told to stop (SIGTERM) lets calls on the wire finish for at most this long, then
    # exits as if killed (Heroku sends SIGKILL 30 s after SIGTERM: stay under it).
    shutdown_grace: float = knob(25.0, "CONNECTOR_SHUTDOWN_GRACE_SECONDS", minimum=0.5)
    # Every process (web, workers, scheduler) writes its fleet counters' deltas this often.
    metrics_flush: float = knob(5.0, "CONNECTOR_METRICS_FLUSH_SECONDS", minimum=0.1)

    def retry_window(self, configured_seconds: float) -> float:
        return self.retry_window_override if self.retry_window_override is not None else configured_seconds


@dataclass
class SchedulerConfig:
    interval: float = knob(0.5, "CONNECTOR_SCHEDULER_INTERVAL")  # seconds between ticks when idle
    batch: int = knob(200, "CONNECTOR_SCHEDULER_BATCH")  # entries claimed per round trip
    lease: float = knob(30.0, "CONNECTOR_SCHEDULER_LEASE_SECONDS")  # a claimed entry is due again after this
    max_backoff: float = 5.0
    # Seconds between two looks at idle backlog counters.
    reconcile_interval: float = knob(30.0, "CONNECTOR_BACKLOG_RECONCILE_SECONDS")


@dataclass(frozen=True)
class BrokerOptions:
    # A message not acknowledged this long after delivery goes back to its queue (kombu's Redis
    # transport); must stay well above TASK_TIME_BUDGET_SECONDS.
    visibility_timeout: int = knob(120, "CONNECTOR_VISIBILITY_TIMEOUT")
    # Messages reserved per pool slot (one keeps a gevent worker's many slots busy).
    prefetch: int = knob(1, "CONNECTOR_PREFETCH")
    # kombu's Redis pool for a worker's acks and restores (a gevent worker acks from up to
    # --concurrency greenlets at once).
    max_connections: int = knob(500, "CONNECTOR_BROKER_MAX_CONNECTIONS")
    # REDIS_MIN_REPLICAS / REDIS_MIN_REPLICAS_TIMEOUT_MS (read and checked by connector.config):
    # a publish counts only once this many replicas acknowledged it (WAIT), else it is an error
    # (the ingest answers 503), so that a failover loses no accepted work.
    min_replicas: int = 0
    replica_wait_ms: int = 1000


@dataclass(frozen=True)
class TraceOptions:
    """Event traces (:mod:`connector.trace`), read by :mod:`connector.config` from
    ``TRACE_RETENTION_HOURS`` (default 24; 0 turns traces off, the overview stays) and
    ``TRACE_SAMPLE_ABOVE_PER_MINUTE`` (default 6000: above that many received events a minute on a
    connection, only a share of the delivered events keep their trace; 0: never sample)."""

    retention_hours: float = 24.0
    sample_above_per_minute: int = 6000
    # TRACE_MEMORY_MB (default 64; 0: no budget): what all traces of the deployment may occupy
    # in Redis, oldest given up first; skipped and refused events' traces a quarter of it.
    budget_bytes: int = 64 * 1024 * 1024
    minor_share: float = 0.25

    @property
    def retention_seconds(self) -> int:
        return int(self.retention_hours * 3600)
