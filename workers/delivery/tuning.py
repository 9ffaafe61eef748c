"""Delivery knobs, read from the environment so that tests and operators can turn them.

Every value has a production default; the end-to-end fault tests shrink the backoff, the retry
window and the scheduler interval to run in seconds.  Read once per task (cheap), never cached
across tasks, so that a test changing the environment sees the change at once.

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
| ``CONNECTOR_TASK_BUDGET_SECONDS`` | celery_app value | a task parks what is left after this |
| ``CONNECTOR_STALE_TTL_SECONDS`` | 604800 | how long the newest upsert time per customer is kept |
| ``CONNECTOR_LOW_REMAINING`` | 0.05 | X-Rate-Limit-Remaining at or below this share slows down |
| ``CONNECTOR_SLOWDOWN_SECONDS`` | 60 | how long a slow-down lasts |
| ``CONNECTOR_SEGMENT_MAX_EVENTS`` / ``_MAX_BYTES`` | 2500 / 500000 | one /v1/batch request |

Elsewhere: ``CONNECTOR_KEY_PREFIX`` (``connector:``, :mod:`connector.keys`);
``CONNECTOR_SCHEDULER_INTERVAL`` / ``_BATCH`` / ``_LEASE_SECONDS`` (0.5 / 200 / 30,
:mod:`workers.delivery.scheduler`); ``CONNECTOR_BACKLOG_RECONCILE_SECONDS`` (30, how often the
scheduler looks for backlog counters left high by a dead process, :mod:`connector.backlog`);
``CONNECTOR_BODY_TIMEOUT_SECONDS`` (10, the web's deadline for a request body, :mod:`app.body`).
"""

from __future__ import annotations

import os
from dataclasses import dataclass

from connector.contract import TASK_TIME_BUDGET_SECONDS


def _float(name: str, default: float) -> float:
    raw = os.environ.get(name)
    if raw is None or raw == "":
        return default
    try:
        return float(raw)
    except ValueError:
        return default


def _int(name: str, default: int) -> int:
    return int(_float(name, float(default)))


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
    segment_max_events: int = 2500
    segment_max_bytes: int = 500_000
    segment_max_event_bytes: int = 32_000

    @classmethod
    def from_env(cls) -> Tuning:
        window = os.environ.get("CONNECTOR_RETRY_WINDOW_SECONDS")
        return cls(
            retry_base=_float("CONNECTOR_RETRY_BASE_SECONDS", 2.0),
            retry_cap=_float("CONNECTOR_RETRY_CAP_SECONDS", 300.0),
            retry_window_override=float(window) if window else None,
            claim_ttl=_float("CONNECTOR_CLAIM_TTL_SECONDS", 60.0),
            ledger_extra=_float("CONNECTOR_LEDGER_EXTRA_SECONDS", 86400.0),
            connect_timeout=_float("CONNECTOR_CONNECT_TIMEOUT", 3.0),
            read_timeout=_float("CONNECTOR_READ_TIMEOUT", 10.0),
            concurrency=max(1, _int("CONNECTOR_DELIVERY_CONCURRENCY", 32)),
            inflight=max(1, _int("CONNECTOR_WORKER_INFLIGHT", 100)),
            task_budget=_float("CONNECTOR_TASK_BUDGET_SECONDS", float(TASK_TIME_BUDGET_SECONDS)),
            stale_ttl=_float("CONNECTOR_STALE_TTL_SECONDS", 7 * 86400.0),
            low_remaining=_float("CONNECTOR_LOW_REMAINING", 0.05),
            slowdown_seconds=_float("CONNECTOR_SLOWDOWN_SECONDS", 60.0),
            segment_max_events=_int("CONNECTOR_SEGMENT_MAX_EVENTS", 2500),
            segment_max_bytes=_int("CONNECTOR_SEGMENT_MAX_BYTES", 500_000),
            segment_max_event_bytes=_int("CONNECTOR_SEGMENT_MAX_EVENT_BYTES", 32_000),
        )

    def retry_window(self, configured_seconds: float) -> float:
        return self.retry_window_override if self.retry_window_override is not None else configured_seconds
