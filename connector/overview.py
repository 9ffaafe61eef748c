"""The delivery overview (SPEC 12): per connection, what happened to its events over the last hour
and the last day, and a few sample event ids per reason that open their trace.

Counters are Redis hashes per connection and time bucket -- one per minute (kept ~2 hours, read
for "last hour") and one per hour (kept ~25 hours, read for "last day") -- so memory is bounded by
the number of connections and reasons, never by traffic.  They are written by
:class:`connector.trace.Recorder` (in the same pipeline as the trace records) and read here.

Fields (``reason`` and ``code`` from the closed sets of the metrics)::

    received                events accepted by the ingest
    rejected:<code>         events refused by the ingest
    skipped:<reason>        events finished without a call (duplicate, stale, a mapping skip...)
    delivered               calls acknowledged by the target
    failed                  failed attempts that will be retried
    dead_letter:<reason>    events dead-lettered
    waiting_quota           calls that had to wait for a request budget (quota)
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Mapping
from typing import Any, Final

import redis

from connector.keys import Keys

RECEIVED: Final = "received"
REJECTED: Final = "rejected"
SKIPPED: Final = "skipped"
DELIVERED: Final = "delivered"
FAILED: Final = "failed"
DEAD_LETTER: Final = "dead_letter"
WAITING_QUOTA: Final = "waiting_quota"
# Fields that carry a reason after a colon.
BY_REASON: Final = (REJECTED, SKIPPED, DEAD_LETTER)

MINUTE_KEEP_SECONDS: Final = 2 * 3600 + 120
HOUR_KEEP_SECONDS: Final = 25 * 3600 + 120
SAMPLES_PER_FIELD: Final = 5
HOUR_MINUTES: Final = 60
DAY_HOURS: Final = 24


def field(kind: str, reason: str | None = None) -> str:
    return f"{kind}:{reason}" if reason and kind in BY_REASON else kind


def minute_of(now: float) -> int:
    return int(now // 60)


def hour_of(now: float) -> int:
    return int(now // 3600)


def _empty() -> dict[str, Any]:
    return {
        RECEIVED: 0,
        REJECTED: {},
        SKIPPED: {},
        DELIVERED: 0,
        FAILED: 0,
        DEAD_LETTER: {},
        WAITING_QUOTA: 0,
    }


def summarize(hashes: Iterable[Mapping[Any, Any]]) -> dict[str, Any]:
    """The counters of several buckets added up, reasons grouped under their kind."""
    total = _empty()
    for counters in hashes:
        for raw_name, raw_value in counters.items():
            name = raw_name.decode() if isinstance(raw_name, bytes) else str(raw_name)
            value = int(raw_value)
            kind, _, reason = name.partition(":")
            if kind in BY_REASON:
                bucket: dict[str, int] = total[kind]
                bucket[reason or "unknown"] = bucket.get(reason or "unknown", 0) + value
            elif kind in total:
                total[kind] += value
    return total


def read(
    client: redis.Redis, keys: Keys, connection_ids: Iterable[str], now: float | None = None
) -> dict[str, dict[str, Any]]:
    """``{connection: {"last_hour": ..., "last_day": ..., "samples": {field: [ids]}}}`` in one
    round trip (60 minute buckets and 24 hour buckets per connection, and the sample lists)."""
    now = time.time() if now is None else now
    ids = list(connection_ids)
    minute, hour = minute_of(now), hour_of(now)
    pipe = client.pipeline(transaction=False)
    for cid in ids:
        for m in range(minute - HOUR_MINUTES + 1, minute + 1):
            pipe.hgetall(keys.overview_minute(cid, m))
        for h in range(hour - DAY_HOURS + 1, hour + 1):
            pipe.hgetall(keys.overview_hour(cid, h))
    answers = pipe.execute()
    # The sample lists: one per field seen in the day's counters.
    result: dict[str, dict[str, Any]] = {}
    fields_seen: dict[str, list[str]] = {}
    step = HOUR_MINUTES + DAY_HOURS
    for index, cid in enumerate(ids):
        chunk = answers[index * step : (index + 1) * step]
        day_hashes = chunk[HOUR_MINUTES:]
        result[cid] = {
            "last_hour": summarize(chunk[:HOUR_MINUTES]),
            "last_day": summarize(day_hashes),
            "samples": {},
        }
        seen = {(n.decode() if isinstance(n, bytes) else str(n)) for counters in day_hashes for n in counters}
        fields_seen[cid] = sorted(n for n in seen if n not in (RECEIVED, WAITING_QUOTA))
    pipe = client.pipeline(transaction=False)
    order: list[tuple[str, str]] = []
    for cid, names in fields_seen.items():
        for name in names:
            pipe.lrange(keys.overview_samples(cid, name), 0, SAMPLES_PER_FIELD - 1)
            order.append((cid, name))
    for (cid, name), samples in zip(order, pipe.execute() if order else [], strict=True):
        if samples:
            result[cid]["samples"][name] = [s.decode() if isinstance(s, bytes) else str(s) for s in samples]
    return result
