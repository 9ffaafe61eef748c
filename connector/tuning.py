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
| ``CONNECTOR_TASK_BUDGET_SECONDS`` | 20 | a task parks what is left after this |
| ``CONNECTOR_STALE_TTL_SECONDS`` | 604800 | how long the newest upsert time per customer is kept |
| ``CONNECTOR_LOW_REMAINING`` | 0.05 | X-Rate-Limit-Remaining at or below this share slows down |
| ``CONNECTOR_SLOWDOWN_SECONDS`` | 60 | how long a slow-down lasts |
| ``CONNECTOR_SEGMENT_MAX_EVENTS`` / ``_MAX_BYTES`` / ``_MAX_EVENT_BYTES`` | 2500 / 500000 / 32768 | one /v1/batch request |
| ``CONNECTOR_METADATA_SCHEMA_REFRESH_SECONDS`` | 3600 | how old a cached metadata schema may get |

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
from dataclasses import dataclass
from typing import Final

from connector.contract import SEGMENT_MAX_EVENT_BYTES, TASK_TIME_BUDGET_SECONDS

SEGMENT_MAX_EVENTS: Final = 2500
SEGMENT_MAX_BATCH_BYTES: Final = 500_000


def env_float(env: Mapping[str, str], name: str, default: float) -> float:
    raw = env.get(name)
    if raw is None or raw == "":
        return default
    try:
        return float(raw)
    except ValueError:
        return default


def env_int(env: Mapping[str, str], name: str, default: int) -> int:
    return int(env_float(env, name, float(default)))


@dataclass(frozen=True)
class Tuning:
    retry_base: float = 2.0
    retry_cap: float = 300.0
    retry_window_override: float | None = None
    claim_ttl: float = 60.0
    ledger_extra: float = 86400.0
    connect_timeout: float = 3.0
    read_timeout: float = 10.0
    concurrency: int = 32
    inflight: int = 100
    task_budget: float = float(TASK_TIME_BUDGET_SECONDS)
    stale_ttl: float = 7 * 86400.0
    low_remaining: float = 0.05
    slowdown_seconds: float = 60.0
    segment_max_events: int = SEGMENT_MAX_EVENTS
    segment_max_bytes: int = SEGMENT_MAX_BATCH_BYTES
    segment_max_event_bytes: int = SEGMENT_MAX_EVENT_BYTES
    metadata_schema_refresh: float = 3600.0

    @classmethod
    def from_env(cls, env: Mapping[str, str]) -> Tuning:
        window = env.get("CONNECTOR_RETRY_WINDOW_SECONDS")
        return cls(
            retry_base=env_float(env, "CONNECTOR_RETRY_BASE_SECONDS", 2.0),
            retry_cap=env_float(env, "CONNECTOR_RETRY_CAP_SECONDS", 300.0),
            retry_window_override=env_float(env, "CONNECTOR_RETRY_WINDOW_SECONDS", 0.0) if window else None,
            claim_ttl=env_float(env, "CONNECTOR_CLAIM_TTL_SECONDS", 60.0),
            ledger_extra=env_float(env, "CONNECTOR_LEDGER_EXTRA_SECONDS", 86400.0),
            connect_timeout=env_float(env, "CONNECTOR_CONNECT_TIMEOUT", 3.0),
            read_timeout=env_float(env, "CONNECTOR_READ_TIMEOUT", 10.0),
            concurrency=max(1, env_int(env, "CONNECTOR_DELIVERY_CONCURRENCY", 32)),
            inflight=max(1, env_int(env, "CONNECTOR_WORKER_INFLIGHT", 100)),
            task_budget=env_float(env, "CONNECTOR_TASK_BUDGET_SECONDS", float(TASK_TIME_BUDGET_SECONDS)),
            stale_ttl=env_float(env, "CONNECTOR_STALE_TTL_SECONDS", 7 * 86400.0),
            low_remaining=env_float(env, "CONNECTOR_LOW_REMAINING", 0.05),
            slowdown_seconds=env_float(env, "CONNECTOR_SLOWDOWN_SECONDS", 60.0),
            segment_max_events=env_int(env, "CONNECTOR_SEGMENT_MAX_EVENTS", SEGMENT_MAX_EVENTS),
            segment_max_bytes=env_int(env, "CONNECTOR_SEGMENT_MAX_BYTES", SEGMENT_MAX_BATCH_BYTES),
            segment_max_event_bytes=env_int(
                env, "CONNECTOR_SEGMENT_MAX_EVENT_BYTES", SEGMENT_MAX_EVENT_BYTES
            ),
            metadata_schema_refresh=max(
                1.0, env_float(env, "CONNECTOR_METADATA_SCHEMA_REFRESH_SECONDS", 3600.0)
            ),
        )

    def retry_window(self, configured_seconds: float) -> float:
        return self.retry_window_override if self.retry_window_override is not None else configured_seconds


@dataclass
class SchedulerConfig:
    interval: float = 0.5  # seconds between ticks when idle
    batch: int = 200  # entries claimed per round trip
    lease: float = 30.0  # an unacked claimed entry is due again after this
    max_backoff: float = 5.0
    reconcile_interval: float = 30.0  # seconds between two looks at idle backlog counters

    @classmethod
    def from_env(cls, env: Mapping[str, str]) -> SchedulerConfig:
        return cls(
            interval=env_float(env, "CONNECTOR_SCHEDULER_INTERVAL", 0.5),
            batch=env_int(env, "CONNECTOR_SCHEDULER_BATCH", 200),
            lease=env_float(env, "CONNECTOR_SCHEDULER_LEASE_SECONDS", 30.0),
            reconcile_interval=env_float(env, "CONNECTOR_BACKLOG_RECONCILE_SECONDS", 30.0),
        )


@dataclass(frozen=True)
class BrokerOptions:
    # A message not acknowledged this long after delivery goes back to its queue (kombu's Redis
    # transport); must stay well above TASK_TIME_BUDGET_SECONDS.
    visibility_timeout: int = 120
    # Messages reserved per pool slot (one keeps a gevent worker's many slots busy).
    prefetch: int = 1
    # kombu's Redis pool for a worker's acks and restores (a gevent worker acks from up to
    # --concurrency greenlets at once).
    max_connections: int = 500

    @classmethod
    def from_env(cls, env: Mapping[str, str]) -> BrokerOptions:
        return cls(
            visibility_timeout=env_int(env, "CONNECTOR_VISIBILITY_TIMEOUT", 120),
            prefetch=env_int(env, "CONNECTOR_PREFETCH", 1),
            max_connections=env_int(env, "CONNECTOR_BROKER_MAX_CONNECTIONS", 500),
        )
