"""The fake Voucherify's quota model: Voucherify's limits per period, shared with the shop.

Every call of the project is of one kind: ``rest`` (``/v1/...`` except the bulk endpoint, so
also ``GET /v1/async-actions/{id}``, ``GET /v1/metadata-schemas``, ``GET /v1/customers``),
``bulk`` (``POST /v1/customers/bulk/async``) or ``webhook`` (``/segmentio/...``). Buckets:

===========================  ====================  ===================  ======================
bucket (limit key)           X-Rate-Limit-Type     counts               refuses when full
===========================  ====================  ===================  ======================
``api_calls_per_minute``     ``api_calls``         rest, bulk           rest, bulk
``api_calls_per_hour``       ``api_calls``         rest, bulk           rest, bulk
``api_calls_per_cycle``      ``api_calls_cycle``   rest                 rest, bulk
``bulk_calls_per_hour``      ``bulk_api_calls``    bulk                 bulk
``webhook_calls_per_day``    ``webhook_calls``     webhook              webhook
===========================  ====================  ===================  ======================

So a bulk call also spends the per-minute (or per-hour) API budget, but not the cycle's; a
spent cycle (or minute) blocks the whole API, bulk included; the ``/segmentio/*`` endpoints
only ever touch the daily webhook bucket. Windows are fixed: aligned to the clock (multiples of
their length since the Unix epoch, i.e. whole UTC minutes/hours/days; the cycle from
``cycle_start_day`` 00:00 UTC, a shorter month's last day standing in) or, with ``align:
"now"``, to the moment of configuration. A refused call is not counted. The shop's simulated
calls (``sandbox.plans``: ``shop``; ``shop_at``: spread evenly, or each window's all as it
starts) go through the same buckets at their own times, so the shop is refused too while a
bucket is spent; its refusals are counted apart from the connector's.

Headers (all times real, whatever the period lengths): ``X-Rate-Limit-Limit`` / ``-Remaining``
of the answer's own bucket (rest: the per-minute bucket, else per-hour, else cycle; bulk: the
bulk bucket, else the API one; webhook: the daily one), ``X-Rate-Limit-Retry`` = the epoch
second (rounded up) at which that window ends. A refusal (429) names the full bucket that frees
last: its ``X-Rate-Limit-Type``, ``X-Rate-Limit-Limit``, ``X-Rate-Limit-Remaining: 0``,
``X-Rate-Limit-Retry`` and ``Retry-After`` (whole seconds, at least 1).
"""

from __future__ import annotations

import calendar
import math
from collections import deque
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from sandbox.plans import SHOP_KEYS, SHOP_PERIODS, QuotaConfig

KINDS = ("rest", "bulk", "webhook")
WHO = ("connector", "shop")
TYPES = ("api_calls", "api_calls_cycle", "bulk_api_calls", "webhook_calls")
MAX_CATCH_UP = 50_000  # shop calls replayed at once; beyond that the backlog is skipped
HISTORY = 1_000  # past windows kept per bucket


@dataclass(frozen=True, slots=True)
class BucketSpec:
    key: str
    type: str
    period: str
    counts: tuple[str, ...]
    refuses: tuple[str, ...]


BUCKETS = (
    BucketSpec("api_calls_per_minute", "api_calls", "minute", ("rest", "bulk"), ("rest", "bulk")),
    BucketSpec("api_calls_per_hour", "api_calls", "hour", ("rest", "bulk"), ("rest", "bulk")),
    BucketSpec("api_calls_per_cycle", "api_calls_cycle", "cycle", ("rest",), ("rest", "bulk")),
    BucketSpec("bulk_calls_per_hour", "bulk_api_calls", "hour", ("bulk",), ("bulk",)),
    BucketSpec("webhook_calls_per_day", "webhook_calls", "day", ("webhook",), ("webhook",)),
)
HEADER_BUCKETS = {
    "rest": ("api_calls_per_minute", "api_calls_per_hour", "api_calls_per_cycle"),
    "bulk": ("bulk_calls_per_hour", "api_calls_per_minute", "api_calls_per_hour"),
    "webhook": ("webhook_calls_per_day",),
}
SHOP_KINDS = {"calls_per_minute": "rest", "bulk_calls_per_hour": "bulk"}


def kind_of(path: str) -> str:
    if path.startswith("/segmentio/"):
        return "webhook"
    return "bulk" if path == "/v1/customers/bulk/async" else "rest"


def cycle_window(now: float, start_day: int) -> tuple[float, float]:
    """The billing cycle holding ``now``: from ``start_day`` 00:00 UTC to the next month's."""

    def anchor(year: int, month: int) -> datetime:
        if month == 0:
            year, month = year - 1, 12
        elif month == 13:
            year, month = year + 1, 1
        day = min(start_day, calendar.monthrange(year, month)[1])
        return datetime(year, month, day, tzinfo=UTC)

    moment = datetime.fromtimestamp(now, UTC)
    start = anchor(moment.year, moment.month)
    if moment < start:
        start = anchor(moment.year, moment.month - 1)
    end = anchor(start.year, start.month + 1)
    return start.timestamp(), end.timestamp()


@dataclass(slots=True)
class Bucket:
    spec: BucketSpec
    limit: int | None = None
    start: float = 0.0
    end: float = 0.0  # 0: no window yet
    used: int = 0
    by: dict[str, int] = field(default_factory=lambda: dict.fromkeys(WHO, 0))
    refused_by: dict[str, int] = field(default_factory=lambda: dict.fromkeys(WHO, 0))
    history: deque[dict[str, Any]] = field(default_factory=lambda: deque(maxlen=HISTORY))

    def full(self) -> bool:
        return self.limit is not None and self.used >= self.limit

    def remaining(self) -> int | None:
        return None if self.limit is None else max(0, self.limit - self.used)

    def window(self) -> dict[str, Any]:
        return {
            "window_start": self.start,
            "reset": self.end,
            "limit": self.limit,
            "used": self.used,
            "used_by": dict(self.by),
            "refused_by": dict(self.refused_by),
        }


class Quota:
    """Buckets, the shop's load and the counters. Not thread-safe: the app's lock guards it."""

    def __init__(self, config: QuotaConfig, now: float) -> None:
        self.config = config
        self.buckets = {spec.key: Bucket(spec) for spec in BUCKETS}
        self.shop_next: dict[str, float | None] = dict.fromkeys(SHOP_KEYS)
        self.calls = {who: dict.fromkeys(KINDS, 0) for who in WHO}
        self.refusals = {who: dict.fromkeys(TYPES, 0) for who in WHO}
        self.shop_skipped = 0
        self.reconfigure(config, now, reset=True)

    # -- configuration -------------------------------------------------------------------------

    def reconfigure(self, config: QuotaConfig, now: float, *, reset: bool = False) -> None:
        """New limits keep this window's counts; a new period length or origin starts afresh."""
        old = self.config
        self.config = config
        limits = config.limits()
        moved = (
            reset or old.window_origin() != config.window_origin() or old.period_scale != config.period_scale
        )
        for bucket in self.buckets.values():
            bucket.limit = limits[bucket.spec.key]
            period = bucket.spec.period
            if (
                moved
                or old.length(period) != config.length(period)
                or (period == "cycle" and old.cycle_start_day != config.cycle_start_day)
            ):
                self._close(bucket)
        for key in SHOP_KEYS:
            rate = config.shop.get(key, 0.0)
            if not rate:
                self.shop_next[key] = None
            elif reset or rate != old.shop.get(key, 0.0) or self.shop_next[key] is None:
                self.shop_next[key] = now  # the shop's first call of the new rate is now
        if reset:
            self.calls = {who: dict.fromkeys(KINDS, 0) for who in WHO}
            self.refusals = {who: dict.fromkeys(TYPES, 0) for who in WHO}
            self.shop_skipped = 0
            for bucket in self.buckets.values():
                bucket.history.clear()

    def set_used(self, used: dict[str, Any], now: float) -> None:
        """Pretend this window already holds ``n`` calls (the shop's, made before the fake ran)."""
        self.catch_up(now)
        for key, value in used.items():
            if key not in self.buckets:
                raise ValueError(f"unknown bucket {key!r}; known: {', '.join(self.buckets)}")
            if isinstance(value, bool) or not isinstance(value, int) or value < 0:
                raise ValueError(f"used.{key} must be an integer >= 0")
        for key, value in used.items():
            bucket = self._roll(self.buckets[key], now)
            bucket.used = value
            bucket.by["shop"] = max(0, value - bucket.by["connector"])

    # -- windows -------------------------------------------------------------------------------

    def _window(self, period: str, now: float) -> tuple[float, float]:
        length = self.config.length(period)
        if length is None:
            return cycle_window(now, self.config.cycle_start_day)
        origin = self.config.window_origin()
        start = origin + math.floor((now - origin) / length) * length
        return start, start + length

    @staticmethod
    def _close(bucket: Bucket) -> None:
        if bucket.end and (bucket.used or any(bucket.refused_by.values())):
            bucket.history.append(bucket.window())  # windows nobody called are not kept
        bucket.end = 0.0  # rolled (emptied) on next use

    def _roll(self, bucket: Bucket, now: float) -> Bucket:
        if now >= bucket.end:
            self._close(bucket)
            bucket.start, bucket.end = self._window(bucket.spec.period, now)
            bucket.used = 0
            bucket.by = dict.fromkeys(WHO, 0)
            bucket.refused_by = dict.fromkeys(WHO, 0)
        return bucket

    # -- calls ---------------------------------------------------------------------------------

    def admit(self, kind: str, who: str, now: float) -> tuple[bool, dict[str, str]]:
        """Count one call (or refuse it); the answer's ``X-Rate-Limit-*`` headers."""
        if who == "connector":
            self.catch_up(now)
        full = [
            b
            for b in self.buckets.values()
            if kind in b.spec.refuses and b.limit is not None and self._roll(b, now).full()
        ]
        if full:
            worst = max(full, key=lambda b: (b.end, b.spec.type))
            self.refusals[who][worst.spec.type] += 1
            worst.refused_by[who] += 1
            return False, self._refusal_headers(worst, now)
        for bucket in self.buckets.values():
            if kind in bucket.spec.counts:
                self._roll(bucket, now)
                bucket.used += 1
                bucket.by[who] += 1
        self.calls[who][kind] += 1
        return True, self._headers(kind, now)

    def peek(self, kind: str, now: float) -> dict[str, str]:
        """The headers of an answer of this kind, spending nothing."""
        self.catch_up(now)
        return self._headers(kind, now)

    def _headers(self, kind: str, now: float) -> dict[str, str]:
        for key in HEADER_BUCKETS[kind]:
            bucket = self.buckets[key]
            if bucket.limit is not None:
                self._roll(bucket, now)
                return {
                    "X-Rate-Limit-Limit": str(bucket.limit),
                    "X-Rate-Limit-Remaining": str(bucket.remaining()),
                    "X-Rate-Limit-Retry": str(math.ceil(bucket.end)),
                }
        return {}

    def _refusal_headers(self, bucket: Bucket, now: float) -> dict[str, str]:
        return {
            "Retry-After": str(max(1, math.ceil(bucket.end - now))),
            "X-Rate-Limit-Type": bucket.spec.type,
            "X-Rate-Limit-Limit": str(bucket.limit),
            "X-Rate-Limit-Remaining": "0",
            "X-Rate-Limit-Retry": str(math.ceil(bucket.end)),
        }

    # -- the shop ------------------------------------------------------------------------------

    def catch_up(self, now: float) -> None:
        """Replay the shop's calls due by ``now``, each at its own time (evenly spread)."""
        for key, kind in SHOP_KINDS.items():
            due = self.shop_next[key]
            rate = self.config.shop.get(key, 0.0)
            if due is None or not rate:
                continue
            length = self.config.length(SHOP_PERIODS[key]) or 60.0
            if self.config.shop_at == "window_start":
                self.shop_next[key] = self._shop_at_starts(kind, SHOP_PERIODS[key], rate, due, now)
                continue
            interval = length / rate
            replayed = 0
            while due <= now and replayed < MAX_CATCH_UP:
                self.admit(kind, "shop", due)
                due += interval
                replayed += 1
            if due <= now:  # a stopped process woke up: skip what it slept through
                skipped = math.floor((now - due) / interval) + 1
                self.shop_skipped += skipped
                due += skipped * interval
            self.shop_next[key] = due

    def _shop_at_starts(self, kind: str, period: str, rate: float, due: float, now: float) -> float:
        """The shop's calls of each window due by ``now``, all as it starts; the next start."""
        while due <= now:
            for _ in range(min(MAX_CATCH_UP, round(rate))):
                self.admit(kind, "shop", due)
            due = self._window(period, due)[1]
        return due

    def burst(self, kind: str, calls: int, now: float) -> dict[str, int]:
        """``calls`` shop calls of ``kind`` at once (a checkout rush)."""
        self.catch_up(now)
        accepted = sum(1 for _ in range(calls) if self.admit(kind, "shop", now)[0])
        return {"accepted": accepted, "refused": calls - accepted}

    # -- the view ------------------------------------------------------------------------------

    def view(self, now: float, *, history: bool = False) -> dict[str, Any]:
        """The state; ``history``: each bucket's past windows too (those with calls or refusals)."""
        self.catch_up(now)
        buckets = {}
        for key, bucket in self.buckets.items():
            self._roll(bucket, now)
            buckets[key] = {
                "type": bucket.spec.type,
                "period": bucket.spec.period,
                "remaining": bucket.remaining(),
                **bucket.window(),
            }
            if history:
                buckets[key]["history"] = list(bucket.history)
        refusals = {who: {**counts, "total": sum(counts.values())} for who, counts in self.refusals.items()}
        return {
            **self.config.describe(),
            "now": now,
            "buckets": buckets,
            "calls": {who: dict(counts) for who, counts in self.calls.items()},
            "refusals": refusals,
            "shop_refused": refusals["shop"]["total"],
            "shop_skipped": self.shop_skipped,
        }
