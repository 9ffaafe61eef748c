"""Voucherify's published API limits per plan (SPEC 10), and the fake's quota configuration.

The table is data: ``PLANS[plan][limit key] = calls per period``. A key a plan does not list is
not published for that plan; the fake then counts those calls without limiting them unless the
limit is given explicitly (``enterprise`` is all custom: explicit limits only).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

LIMIT_KEYS = (
    "api_calls_per_minute",
    "api_calls_per_hour",
    "api_calls_per_cycle",
    "bulk_calls_per_hour",
    "webhook_calls_per_day",
)
PLANS: dict[str, dict[str, int]] = {
    # Current plans: API calls per minute and per billing cycle.
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
    # Older plans: API calls per hour; bulk calls per hour are not added to the cycle count.
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
# Real lengths of the periods, in seconds; a "cycle" is a calendar month unless given a length.
BASE_PERIODS = {"minute": 60.0, "hour": 3600.0, "day": 86400.0}
SCALED_CYCLE_DAYS = 30  # a cycle's length under a period_scale other than 1
PERIOD_NAMES = (*BASE_PERIODS, "cycle")
SHOP_KEYS = ("calls_per_minute", "bulk_calls_per_hour")
SHOP_PERIODS = {"calls_per_minute": "minute", "bulk_calls_per_hour": "hour"}
MIN_PERIOD_S = 0.01  # shorter windows would only measure the fake's own latency
MAX_SHOP_CALLS_PER_S = 2_000  # the simulated shop is replayed call by call
CONFIG_KEYS = (
    "plan",
    *LIMIT_KEYS,
    "cycle_start_day",
    "period_scale",
    "periods",
    "align",
    "shop",
    "shop_at",
)
# When the shop's calls of a window come: spread evenly, or all as the window starts (the
# headers then show them before any connector call of that window).
SHOP_AT = ("even", "window_start")


def _count(value: Any, name: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise ValueError(f"{name} must be an integer >= 0 (or null)")
    return value


def _positive(value: Any, name: str) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or value <= 0:
        raise ValueError(f"{name} must be a number > 0")
    return float(value)


def _rate(value: Any, name: str) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or value < 0:
        raise ValueError(f"{name} must be a number >= 0")
    return float(value)


def _merged(
    current: dict[str, float],
    raw: Any,
    label: str,
    names: tuple[str, ...],
    parse: Callable[[Any, str], float],
) -> dict[str, float]:
    """``current`` with the numbers of ``raw`` (an object of ``names``; null removes one)."""
    if not isinstance(raw, dict):
        raise ValueError(f"{label} must be an object with any of {', '.join(names)}")
    merged = dict(current)
    for name, value in raw.items():
        if name not in names:
            raise ValueError(f"unknown {label} key {name!r}; known: {', '.join(names)}")
        if value is None:
            merged.pop(name, None)
        else:
            merged[name] = parse(value, f"{label}.{name}")
    return merged


@dataclass(frozen=True, slots=True)
class QuotaConfig:
    plan: str | None = None
    overrides: dict[str, int] = field(default_factory=dict)  # explicit limits, over the plan's
    cycle_start_day: int = 1
    period_scale: float = 1.0
    periods: dict[str, float] = field(default_factory=dict)  # explicit period lengths (seconds)
    align: str = "clock"  # windows from the Unix epoch (the clock) or from ``origin``
    origin: float = 0.0
    shop: dict[str, float] = field(default_factory=dict)
    shop_at: str = "even"  # SHOP_AT
    # ``rate_limit_per_minute`` / ``rate_limit_window_s`` set through ``/__fake/faults``.
    legacy_limit: int | None = None
    legacy_window_s: float | None = None
    legacy_origin: float | None = None  # the legacy limit's windows start when it was set

    def limits(self) -> dict[str, int | None]:
        table = PLANS.get(self.plan or "", {})
        limits: dict[str, int | None] = {key: self.overrides.get(key, table.get(key)) for key in LIMIT_KEYS}
        if self.legacy_limit is not None:
            limits["api_calls_per_minute"] = self.legacy_limit
        return limits

    @property
    def enabled(self) -> bool:
        """Off (the default): nothing refused and no ``X-Rate-Limit-*`` headers, as before."""
        return any(limit is not None for limit in self.limits().values())

    def length(self, period: str) -> float | None:
        """Seconds one window lasts; None for a calendar-month cycle."""
        if period == "minute" and self.legacy_window_s is not None:
            return self.legacy_window_s
        if period in self.periods:
            return self.periods[period]
        if period == "cycle":
            return None if self.period_scale == 1 else SCALED_CYCLE_DAYS * 86400.0 * self.period_scale
        return BASE_PERIODS[period] * self.period_scale

    def window_origin(self) -> float:
        if self.legacy_limit is not None and self.legacy_origin is not None:
            return self.legacy_origin
        return self.origin if self.align == "now" else 0.0

    def describe(self) -> dict[str, Any]:
        return {
            "enabled": self.enabled,
            "plan": self.plan,
            "limits": self.limits(),
            "cycle_start_day": self.cycle_start_day,
            "period_scale": self.period_scale,
            "periods": {name: self.length(name) for name in PERIOD_NAMES},
            "align": self.align,
            "origin": self.window_origin(),
            "shop": {key: self.shop.get(key, 0.0) for key in SHOP_KEYS},
            "shop_at": self.shop_at,
            "rate_limit_per_minute": self.legacy_limit,
        }

    def updated(self, spec: dict[str, Any], now: float) -> QuotaConfig:
        """A copy with one ``POST /__fake/quota`` body applied; ValueError when it is wrong."""
        unknown = set(spec) - set(CONFIG_KEYS)
        if unknown:
            raise ValueError(f"unknown quota keys {sorted(unknown)}; known: {', '.join(CONFIG_KEYS)}")
        changes: dict[str, Any] = {}
        if "plan" in spec:
            plan = spec["plan"]
            if plan is not None and plan not in PLANS:
                raise ValueError(f"plan must be one of {', '.join(PLANS)} (or null)")
            changes["plan"] = plan
        overrides = dict(self.overrides)
        for key in LIMIT_KEYS:
            if key in spec:
                if spec[key] is None:
                    overrides.pop(key, None)
                else:
                    overrides[key] = _count(spec[key], key)
        changes["overrides"] = overrides
        if "cycle_start_day" in spec:
            day = spec["cycle_start_day"]
            if isinstance(day, bool) or not isinstance(day, int) or not 1 <= day <= 31:
                raise ValueError("cycle_start_day must be an integer from 1 to 31")
            changes["cycle_start_day"] = day
        if "period_scale" in spec:
            changes["period_scale"] = _positive(spec["period_scale"], "period_scale")
        if "periods" in spec:
            changes["periods"] = _merged(self.periods, spec["periods"], "periods", PERIOD_NAMES, _positive)
        if "align" in spec:
            if spec["align"] not in ("clock", "now"):
                raise ValueError('align must be "clock" or "now"')
            changes["align"] = spec["align"]
            changes["origin"] = now  # "now" again restarts every window at this moment
        if "shop" in spec:
            changes["shop"] = _merged(self.shop, spec["shop"], "shop", SHOP_KEYS, _rate)
        if "shop_at" in spec:
            if spec["shop_at"] not in SHOP_AT:
                raise ValueError(f"shop_at must be one of {', '.join(SHOP_AT)}")
            changes["shop_at"] = spec["shop_at"]
        config = dataclasses.replace(self, **changes)
        config.check()
        return config

    def check(self) -> None:
        for name in PERIOD_NAMES:
            length = self.length(name)
            if length is not None and length < MIN_PERIOD_S:
                raise ValueError(f"a {name} would last {length:g} s; the shortest period is {MIN_PERIOD_S} s")
        for key, period in SHOP_PERIODS.items():
            per_second = self.shop.get(key, 0.0) / (self.length(period) or 60.0)
            if per_second > MAX_SHOP_CALLS_PER_S:
                raise ValueError(
                    f"shop.{key} is {per_second:g} calls a second; at most {MAX_SHOP_CALLS_PER_S}"
                )
