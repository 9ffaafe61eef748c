"""Thin Celery tasks: each resolves its connection and hands off to a plain function.

Nothing here maps or sends; see :mod:`workers.pipeline`.  Keeping tasks thin means the same
functions run in tests without a broker and in the CLI (``connector dlq replay``).
"""

from __future__ import annotations

from typing import Any, cast

from connector.celery_app import celery
from connector.contract import (
    TASK_DELIVER,
    TASK_REGULATE,
    TASK_SEGMENT_EVENTS,
    TASK_SEGMENT_FLUSH,
    TASK_VOUCHERIFY_WEBHOOK,
    DeliveryItem,
)
from workers import pipeline
from workers.runtime import runtime


@celery.task(name=TASK_SEGMENT_EVENTS)
def segment_events(
    connection_id: str,
    events: list[dict[str, Any]],
    shared: dict[str, Any] | None = None,
    stored_bytes: int = 0,
) -> None:
    """Segment events accepted by the ingest -> Voucherify calls (message format:
    connector.contract; the last two arguments are absent in older messages)."""
    rt = runtime()
    pipeline.process_segment_events(
        rt, rt.settings.connection(connection_id), connection_id, events, shared, stored_bytes
    )


@celery.task(name=TASK_VOUCHERIFY_WEBHOOK)
def voucherify_webhook(
    connection_id: str, payload: dict[str, Any], received_at: float, stored_bytes: int = 0
) -> None:
    """A verified Voucherify webhook -> a Segment track call (batched towards Segment)."""
    rt = runtime()
    pipeline.process_voucherify_webhook(
        rt, rt.settings.connection(connection_id), connection_id, payload, received_at, stored_bytes
    )


@celery.task(name=TASK_DELIVER)
def deliver(connection_id: str, direction: str, items: list[dict[str, Any]]) -> None:
    """Deliveries coming back from the retry/throttle store or a dead-letter replay."""
    rt = runtime()
    # JSON from the broker: delivery items (connector.contract.DeliveryItem).
    deliveries = cast(list[DeliveryItem], items)
    pipeline.process_deliveries(
        rt, rt.settings.connection(connection_id), connection_id, direction, deliveries
    )


@celery.task(name=TASK_SEGMENT_FLUSH)
def segment_flush(connection_id: str) -> None:
    """Send what the connection's Segment outbox holds, in /v1/batch requests."""
    rt = runtime()
    pipeline.flush_segment_outbox(rt, rt.settings.connection(connection_id), connection_id)


@celery.task(name=TASK_REGULATE)
def regulate(regulation_id: str, connection_id: str) -> None:
    """A regulation's deletion for one connection (SPEC 14)."""
    rt = runtime()
    pipeline.process_regulation(rt, rt.settings.connection(connection_id), connection_id, regulation_id)
