"""Stale-update protection for customer upserts (SPEC 5).

Per connection and customer, Redis keeps the event time (epoch ms) of the newest upsert that
Voucherify accepted.  Before sending an upsert we compare: strictly older -> not sent (skip
reason ``stale``); equal or newer -> sent.  After a 2xx the time is raised (never lowered) by a
compare-and-set script, so the record is right whatever order concurrent workers finish in.

Within a batch, per-customer order is kept by the pipeline; across tasks two upserts of one
customer may be in flight together for the length of one HTTP call -- the window this cannot
close without a per-customer lock, and the one the record repairs at the next identify.
An upsert without a usable time is never called stale (nothing to compare).

A recorded time is never later than the moment it is recorded (plus ``FUTURE_SKEW_SECONDS``):
the ingest clamps future event times already, and this holds for work accepted before that, or
replayed: one device with its clock in the year 2999 must not freeze a customer's updates.
"""

from __future__ import annotations

import time
from datetime import UTC, datetime

import redis

from connector.keys import Keys
from connector.lua import Lua

_RAISE = Lua(
    """
local cur = tonumber(redis.call('GET', KEYS[1]) or '-1') or -1
if tonumber(ARGV[1]) > cur then
  redis.call('SET', KEYS[1], ARGV[1], 'EX', ARGV[2])
  return 1
end
redis.call('EXPIRE', KEYS[1], ARGV[2])
return 0
"""
)


def event_time_ms(value: str | None) -> int | None:
    """ISO 8601 (``Z`` or offset; naive taken as UTC) -> epoch milliseconds, or None."""
    if not value or not isinstance(value, str):
        return None
    try:
        parsed = datetime.fromisoformat(value.strip().replace("z", "Z"))
        if parsed.tzinfo is None:
            parsed = parsed.replace(tzinfo=UTC)
        return int(parsed.timestamp() * 1000)
    except (ValueError, OverflowError):
        return None


FUTURE_SKEW_SECONDS = 60.0


class StaleGuard:
    def __init__(self, client: redis.Redis, keys: Keys, connection_id: str) -> None:
        self.client = client
        self.keys = keys
        self.connection_id = connection_id

    def is_stale(self, customer: str, event_ms: int) -> bool:
        raw = self.client.get(self.keys.stale(self.connection_id, customer))
        if raw is None:
            return False
        try:
            return event_ms < int(raw)
        except ValueError:
            return False

    def newest_many(self, customers: list[str]) -> list[int | None]:
        """The recorded newest upsert time of each customer (one round trip)."""
        if not customers:
            return []
        out: list[int | None] = []
        for raw in self.client.mget([self.keys.stale(self.connection_id, c) for c in customers]):
            try:
                out.append(int(raw) if raw is not None else None)
            except ValueError:
                out.append(None)
        return out

    def applied(self, customer: str, event_ms: int, ttl: float) -> None:
        latest = int((time.time() + FUTURE_SKEW_SECONDS) * 1000)
        _RAISE(
            self.client,
            [self.keys.stale(self.connection_id, customer)],
            [min(event_ms, latest), max(1, int(ttl))],
        )
