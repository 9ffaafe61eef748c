"""Voucherify's published API limits per plan, and a connection's quota settings (SPEC 10).

Voucherify's quota belongs to the shop: the same project serves its checkout, and exceeding a
per-minute/hour or cycle limit blocks the whole project's API.  So every connection has budgets,
even when the operator configured none (the smallest current plan is assumed), and the connector
uses only ``share`` of each; the rest is the shop's reserve.

The table is data (``PLANS[plan][limit key] = calls per period``).  A key a plan does not list
does not apply to that plan (current plans have no hourly API limit; older plans no per-minute
one).  ``enterprise`` limits are custom: explicit keys only.

This module reads nothing and enforces nothing: :func:`read_quota` turns the
``[connection.voucherify]`` keys into a :class:`QuotaSettings`; the workers' Voucherify target
turns that into budgets.
"""

from __future__ import annotations

import calendar
import math
from dataclasses import dataclass
from datetime import UTC, datetime

from connector.reader import Reader

LIMIT_KEYS = (
    "api_calls_per_minute",
    "api_calls_per_hour",
    "api_calls_per_cycle",
    "bulk_calls_per_hour",
    "webhook_calls_per_day",
)
PLANS: dict[str, dict[str, int]] = {
    # Current plans: API calls per minute and per billing cycle; no bulk API.
    "business": {
        "api_calls_per_minute": 100,
        "api_calls_per_cycle": 100_000,
        "webhook_calls_per_day": 144_000,
    },
    "organization": {
        "api_calls_per_minute": 2_000,
        "api_calls_per_cycle": 300_000,
        "webhook_calls_per_day": 288_000,
    },
    "enterprise": {},
    # Older plans: API calls per hour; bulk calls per hour (not added to the cycle count).
    "free": {
        "api_calls_per_hour": 100,
        "bulk_calls_per_hour": 1,
        "api_calls_per_cycle": 500,
        "webhook_calls_per_day": 7_200,
    },
    "startup": {
        "api_calls_per_hour": 1_000,
        "bulk_calls_per_hour": 10,
        "api_calls_per_cycle": 10_000,
        "webhook_calls_per_day": 21_600,
    },
    "growth": {
        "api_calls_per_hour": 2_000,
        "bulk_calls_per_hour": 20,
        "api_calls_per_cycle": 30_000,
        "webhook_calls_per_day": 50_400,
    },
    "professional": {
        "api_calls_per_hour": 5_000,
        "bulk_calls_per_hour": 50,
        "api_calls_per_cycle": 100_000,
        "webhook_calls_per_day": 122_400,
    },
}
# Nothing configured: the smallest current plan, bulk off (SPEC 10).
ASSUMED_PLAN = "business"
DEFAULT_SHARE = 0.5
DEFAULT_COALESCE_WINDOW_SECONDS = 5.0
DEFAULT_UNCHANGED_MEMORY_DAYS = 7
QUOTA_KEYS = (
    "plan",
    *LIMIT_KEYS,
    "cycle_start_day",
    "share",
    "coalesce_window_seconds",
    "unchanged_memory_days",
    # The old name of api_calls_per_minute, still accepted.
    "rate_limit_per_minute",
)


@dataclass(frozen=True)
class QuotaSettings:
    """The project's limits (whole, before ``share``), and how much of them the connector uses.

    A limit of None does not apply (the plan has no such period).  ``bulk_calls_per_hour`` 0
    means never bulk.
    """

    plan: str | None = None
    api_calls_per_minute: int | None = None
    api_calls_per_hour: int | None = None
    api_calls_per_cycle: int | None = None
    bulk_calls_per_hour: int = 0
    webhook_calls_per_day: int | None = None
    cycle_start_day: int = 1
    share: float = DEFAULT_SHARE
    # True when neither a plan nor a limit was configured: the assumed plan applies (a warning
    # is logged once by the worker).
    assumed: bool = False
    # Upserts of one customer are held this long, across tasks and workers, and merged.
    coalesce_window_seconds: float = DEFAULT_COALESCE_WINDOW_SECONDS
    # How long the digest of the last upsert Voucherify accepted per customer is remembered.
    unchanged_memory_days: int = DEFAULT_UNCHANGED_MEMORY_DAYS
    # TEST ONLY: every period lasts this share of its real length (CONNECTOR_QUOTA_PERIOD_SCALE,
    # matching the fake Voucherify's ``period_scale``).  1 in production.
    period_scale: float = 1.0

    def usable(self, limit: int | None) -> int | None:
        """The connector's part of ``limit`` (at least one call, or nothing would ever move)."""
        if limit is None:
            return None
        return max(1, math.floor(limit * self.share))

    def limits(self) -> dict[str, int | None]:
        """The project's limits by key (None: not applicable)."""
        return {
            "api_calls_per_minute": self.api_calls_per_minute,
            "api_calls_per_hour": self.api_calls_per_hour,
            "api_calls_per_cycle": self.api_calls_per_cycle,
            "bulk_calls_per_hour": self.bulk_calls_per_hour,
            "webhook_calls_per_day": self.webhook_calls_per_day,
        }


def read_quota(r: Reader, old_rate_limit: int | None = None) -> QuotaSettings:
    """The quota keys of one ``[connection.voucherify]`` table; problems recorded on ``r``.
    ``old_rate_limit``: ``rate_limit_per_minute`` as the caller read it (the old name of
    ``api_calls_per_minute``, which wins when both are set)."""
    plan = r.text("plan")
    if plan is not None:
        plan = plan.strip().lower()
        if plan not in PLANS:
            r.problem("plan", f"must be one of {', '.join(PLANS)}, not {plan!r}")
            plan = None
    explicit: dict[str, int | None] = {key: r.integer(key, None, minimum=0) for key in LIMIT_KEYS}
    for key in ("api_calls_per_minute", "api_calls_per_hour", "api_calls_per_cycle", "webhook_calls_per_day"):
        if explicit[key] == 0:
            r.problem(key, "must be an integer >= 1 (0 would never call Voucherify)")
            explicit[key] = None
    old = old_rate_limit
    if old is not None and explicit["api_calls_per_minute"] is None:
        explicit["api_calls_per_minute"] = old
    cycle_start_day = r.integer("cycle_start_day", 1, minimum=1) or 1
    if cycle_start_day > 28:
        # Every month has a 28th; a later day would make some cycles' start ambiguous.
        r.problem("cycle_start_day", "must be between 1 and 28")
        cycle_start_day = 1
    share = r.number("share", DEFAULT_SHARE, low=0.0, high=1.0, low_open=True)
    window = r.number("coalesce_window_seconds", DEFAULT_COALESCE_WINDOW_SECONDS, low=0.0, high=300.0)
    memory = r.integer("unchanged_memory_days", DEFAULT_UNCHANGED_MEMORY_DAYS, minimum=0)
    if memory is None:
        memory = DEFAULT_UNCHANGED_MEMORY_DAYS

    configured = {k: v for k, v in explicit.items() if v is not None}
    assumed = plan is None and not configured
    base = dict(PLANS[plan or ASSUMED_PLAN]) if (plan or assumed) else {}
    if plan == "enterprise" and not (
        configured.get("api_calls_per_minute") or configured.get("api_calls_per_hour")
    ):
        r.problem("plan", "enterprise limits are custom: set api_calls_per_minute or api_calls_per_hour")
    merged = {**base, **configured}
    if not (merged.get("api_calls_per_minute") or merged.get("api_calls_per_hour")):
        # Explicit keys without a plan and without a per-period API limit: the smallest plan's
        # per-minute limit still protects the checkout.
        merged["api_calls_per_minute"] = PLANS[ASSUMED_PLAN]["api_calls_per_minute"]
    return QuotaSettings(
        plan=plan,
        api_calls_per_minute=merged.get("api_calls_per_minute"),
        api_calls_per_hour=merged.get("api_calls_per_hour"),
        api_calls_per_cycle=merged.get("api_calls_per_cycle"),
        bulk_calls_per_hour=merged.get("bulk_calls_per_hour") or 0,
        webhook_calls_per_day=merged.get("webhook_calls_per_day"),
        cycle_start_day=cycle_start_day,
        share=share,
        assumed=assumed,
        coalesce_window_seconds=window,
        unchanged_memory_days=memory,
    )


# --- budgets: the names every process, metric and Redis key uses -----------------------------

# Budget name -> (the limit key it enforces, its period in seconds; None: the billing cycle).
BUDGETS: dict[str, tuple[str, float | None]] = {
    "api_calls_minute": ("api_calls_per_minute", 60.0),
    "api_calls_hour": ("api_calls_per_hour", 3600.0),
    "api_calls_cycle": ("api_calls_per_cycle", None),
    "bulk_calls_hour": ("bulk_calls_per_hour", 3600.0),
    "webhook_calls_day": ("webhook_calls_per_day", 86400.0),
}
# Under a test clock (CONNECTOR_QUOTA_PERIOD_SCALE != 1) a cycle lasts this many scaled days,
# aligned to the Unix epoch, as the fake Voucherify's (sandbox.plans.SCALED_CYCLE_DAYS).
SCALED_CYCLE_DAYS = 30


def cycle_window(now: float, start_day: int, scale: float = 1.0) -> tuple[float, float]:
    """The billing cycle holding ``now`` (epoch seconds): from ``start_day`` 00:00 UTC to the
    same day of the next month (a fixed window, as Voucherify counts it)."""
    if scale != 1.0:
        length = SCALED_CYCLE_DAYS * 86400.0 * scale
        begin = math.floor(now / length) * length
        return begin, begin + length

    def anchor(year: int, month: int) -> datetime:
        if month == 0:
            year, month = year - 1, 12
        elif month == 13:
            year, month = year + 1, 1
        return datetime(year, month, min(start_day, calendar.monthrange(year, month)[1]), tzinfo=UTC)

    moment = datetime.fromtimestamp(now, UTC)
    first = anchor(moment.year, moment.month)
    if moment < first:
        first = anchor(moment.year, moment.month - 1)
    return first.timestamp(), anchor(first.year, first.month + 1).timestamp()


SUBWINDOWS = 30  # counters per budget window (workers.delivery.budgets)


@dataclass(frozen=True)
class BudgetSpec:
    """One budget of a connection: the connector's ``limit`` (its share) per ``window``."""

    name: str
    limit: int | None  # None: unbounded (only a pause stops it); 0: never (no bulk)
    window: float  # seconds
    project_limit: int | None  # the plan's whole limit (limit + the shop's reserve)
    cycle_start_day: int | None = None  # a billing cycle (fixed calendar windows)
    cycle_scale: float = 1.0

    @property
    def granule(self) -> float:
        return 0.0 if self.cycle_start_day is not None else max(0.001, self.window / SUBWINDOWS)


def budget_specs(quota: QuotaSettings) -> dict[str, BudgetSpec]:
    """Every budget of a connection towards Voucherify, by name (a limit the plan does not have
    is absent; a ``bulk_calls_per_hour`` of 0 is a budget of 0: never bulk)."""
    limits = quota.limits()
    scale = quota.period_scale
    out: dict[str, BudgetSpec] = {}
    for name, (key, period) in BUDGETS.items():
        limit = limits[key]
        if limit is None:
            continue
        usable = 0 if limit == 0 else quota.usable(limit)
        if period is None:
            window = SCALED_CYCLE_DAYS * 86400.0 * scale
            out[name] = BudgetSpec(name, usable, window, limit, quota.cycle_start_day, scale)
        else:
            out[name] = BudgetSpec(name, usable, period * scale, limit)
    if "bulk_calls_hour" not in out:
        out["bulk_calls_hour"] = BudgetSpec("bulk_calls_hour", 0, 3600.0 * scale, 0)
    # Settings built without a limit (never from connections.toml, which always has one):
    # unbounded budgets, which a 429 or the headers can still pause.
    if "api_calls_minute" not in out and "api_calls_hour" not in out:
        out["api_calls_minute"] = BudgetSpec("api_calls_minute", None, 60.0 * scale, None)
    if "webhook_calls_day" not in out:
        out["webhook_calls_day"] = BudgetSpec("webhook_calls_day", None, 86400.0 * scale, None)
    return out
