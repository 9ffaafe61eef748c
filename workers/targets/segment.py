"""Segment as a delivery target (Voucherify -> Segment, SPEC 4).

- Base URL and queue by region (:mod:`connector.regions`), or a dedicated ``api_url``.
- Credentials: HTTP Basic with the write key as the user.
- Budget: ``segment`` = ``requests_per_second`` per 1 s (Segment's egress limit); a 429 pauses
  and halves it for ``Retry-After`` (or a few seconds).
- Batching: track calls wait in the connection's outbox and leave in ``POST /v1/batch`` requests
  of at most 2,500 events and 500 KB, none over 32 KB (:data:`~connector.contract.SEGMENT_MAX_EVENT_BYTES`;
  one over it is dead-lettered ``too_large``).  Segment deduplicates on ``messageId``.
- No stale rule (track calls are events, not state), nothing to coalesce.
"""

from __future__ import annotations

import base64
from datetime import UTC, datetime
from typing import Any

import orjson

from connector.config import Connection, SegmentSettings
from connector.contract import SOURCE, DeliveryItem
from connector.envelope import FUTURE_SKEW_SECONDS
from connector.tuning import Tuning
from workers.delivery.budgets import Budget
from workers.delivery.target import Batch
from workers.targets.base import HttpTarget

NAME = "segment"
BATCH_PATH = "/v1/batch"
_ENVELOPE_OVERHEAD = len(b'{"batch":[],"sentAt":"2000-01-01T00:00:00.000000+00:00"}')
# Voucherify events are remembered (their Segment messageId, at the outbox) this much longer
# than the oldest webhook the web accepts plus the retry window.
DEDUPE_MARGIN_SECONDS = 3600.0


def auth_headers(segment: SegmentSettings) -> dict[str, str]:
    token = base64.b64encode(f"{segment.write_key.reveal()}:".encode()).decode("ascii")
    return {"Authorization": f"Basic {token}"}


def budgets_of(connection: Connection) -> tuple[Budget, ...]:
    assert connection.segment is not None
    return (Budget(limit=connection.segment.requests_per_second, window=1.0, name=NAME),)


def build_batch(raws: list[bytes], *, max_events: int, max_bytes: int, max_event_bytes: int) -> Batch:
    """The longest prefix of ``raws`` (JSON delivery items) that fits one /v1/batch request.

    An oversized event at the head is returned alone (to be dead-lettered); one further down ends
    the batch (it becomes the head of the next one).
    """
    items: list[DeliveryItem] = []
    encoded: list[bytes] = []
    size = _ENVELOPE_OVERHEAD
    for raw in raws[:max_events]:
        item: DeliveryItem = orjson.loads(raw)
        message = orjson.dumps(item["request"]["body"])
        if len(message) > max_event_bytes:
            if not items:
                return Batch([item], b"", oversized_head=item)
            break
        if size + len(message) + 1 > max_bytes:
            break
        items.append(item)
        encoded.append(message)
        size += len(message) + 1
    sent_at = datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")
    body = b'{"batch":[' + b",".join(encoded) + b'],"sentAt":"' + sent_at.encode() + b'"}'
    return Batch(items, body)


class SegmentTarget(HttpTarget):
    name = NAME
    direction = SOURCE
    batch_path = BATCH_PATH
    oversize_error = "track call over the 32 KB Segment limit"

    def __init__(self, connection: Connection, *, tuning: Tuning, **_: Any) -> None:
        segment = connection.segment
        if segment is None:
            raise ValueError(f"connection {connection.id!r} has no Segment settings")
        super().__init__(connection, queue=segment.queue, region=segment.region, base_url=segment.base_url)
        self.settings = segment
        self.tuning = tuning
        self.max_batch = tuning.segment_max_events

    budgets_of = staticmethod(budgets_of)

    @staticmethod
    def configured(connection: Connection) -> bool:
        return connection.segment is not None

    def auth_headers(self) -> dict[str, str]:
        return auth_headers(self.settings)

    def probe_call(self) -> tuple[str, str] | None:
        # Segment has one kind of call (/v1/batch) and no credentials check: a 401/403 is the
        # write key's, and the paused outbox's next batch is the probe (workers.delivery.pauses).
        return None

    def pack(self, raws: list[bytes]) -> Batch:
        return build_batch(
            raws,
            max_events=self.tuning.segment_max_events,
            max_bytes=self.tuning.segment_max_bytes,
            max_event_bytes=self.tuning.segment_max_event_bytes,
        )

    def dedupe_keep(self, window: float, ledger_keep: float) -> float:
        """How long a Voucherify event is remembered (its Segment messageId, at the outbox):
        longer than the oldest webhook the web accepts (``max_event_age_hours``, measured from a
        ``created_at`` that may run a little ahead of our clock) plus the retry window.  A
        shorter memory let a replay of an event still young enough to be accepted in twice."""
        accepted = self.connection.voucherify.max_event_age_seconds + FUTURE_SKEW_SECONDS
        return max(ledger_keep, accepted + window + DEDUPE_MARGIN_SECONDS)


__all__ = ["BATCH_PATH", "NAME", "SegmentTarget", "auth_headers", "budgets_of", "build_batch"]
