"""The quota forecast per connection (SPEC 10): what is spent, what is left to the shop's
checkout, and where the connector is heading at its current rate.

Read from Redis (cheap: one snapshot of the budgets' counters, the last ``X-Rate-Limit-*``
headers seen, and two hourly flow hashes per connection) by ``connector stats``, the status page
and ``GET /metrics``.  Pure Redis, no HTTP client: the web process imports it.

- **budgets**: per budget, the calls the connector made in its current window, its limit (its
  ``share``) and the shop's reserve (the plan's limit minus the connector's part);
- **live**: the last ``X-Rate-Limit-Limit`` / ``-Remaining`` Voucherify sent (the shop's own use
  is visible only there);
- **calls per event** over the last hour (every call counted: single, bulk, polls);
- **backlog**, and whether it drains (``drain_seconds``) or grows (``growth_per_hour``): arrivals
  of the last hour against what the budgets allow at this many calls per event;
- **cycle**: when the cycle budget runs out at the last hour's rate (None: it lasts the cycle).

The last hour is estimated from hourly counters: the current hour whole plus the part of the
previous hour that is still within sixty minutes (spread evenly).
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field
from typing import Any

import redis

from connector.backlog import hour_of
from connector.config import Connection, Settings
from connector.depths import ConnectionState, snapshot
from connector.keys import Keys
from connector.quotas import BudgetSpec, budget_specs, cycle_window

# The budgets that bound how many events an hour the connector can deliver.
RATE_BUDGETS = ("api_calls_minute", "api_calls_hour", "webhook_calls_day")


@dataclass
class BudgetUse:
    name: str
    used: int  # the connector's calls in the current window
    limit: int | None  # the connector's part (None: unbounded)
    project_limit: int | None  # the plan's whole limit
    reserve: int | None  # the shop's part: project_limit - limit
    window_seconds: float
    paused_for_seconds: float = 0.0


@dataclass
class Forecast:
    connection: str
    budgets: list[BudgetUse] = field(default_factory=list)
    live: dict[str, dict[str, float]] = field(default_factory=dict)  # kind -> limit, remaining, age
    calls_last_hour: float = 0.0
    events_last_hour: float = 0.0  # finished (delivered, skipped, dead-lettered)
    arrivals_last_hour: float = 0.0  # accepted at the ingest
    calls_per_event: float | None = None
    backlog: int = 0
    capacity_per_hour: float | None = None  # events an hour the budgets allow at calls_per_event
    drain_seconds: float | None = None  # the backlog is gone in this long (0: nothing waits)
    growth_per_hour: float | None = None  # or grows by this many events an hour
    cycle_end: float | None = None  # epoch seconds
    cycle_exhausted_at: float | None = None  # the cycle budget runs out then, at this rate
    paused: dict[str, Any] | None = None  # Voucherify delivery's pause (what this forecast is about)
    # Per target system (SPEC 13): a Segment pause stops the webhooks, not this forecast's calls.
    pauses: dict[str, dict[str, Any] | None] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)

    def sentences(self) -> list[str]:
        """The forecast in a shop owner's words."""
        out: list[str] = []
        if self.paused:
            out.append(
                f"PAUSED ({self.paused.get('reason')}): nothing is sent until resumed (the scheduler "
                f"retries the credentials every 5 minutes; once fixed: connector resume {self.connection})"
            )
        segment = self.pauses.get("segment")
        if segment:
            out.append(
                f"Segment delivery PAUSED ({segment.get('reason')}): Voucherify webhooks wait in the "
                f"outbox (its next batch retries the write key every 5 minutes; once fixed: "
                f"connector resume {self.connection} --system segment)"
            )
        if self.cycle_exhausted_at is not None:
            out.append(f"cycle budget runs out on {_day(self.cycle_exhausted_at)} at this rate")
        elif self.cycle_end is not None:
            out.append(f"cycle budget lasts until the cycle ends ({_day(self.cycle_end)}) at this rate")
        if self.growth_per_hour is not None:
            out.append(f"backlog grows by {self.growth_per_hour:,.0f}/h: raise the plan or the share")
        elif self.drain_seconds is not None and self.backlog:
            out.append(f"backlog drains in {duration(self.drain_seconds)}")
        if self.calls_per_event is not None:
            out.append(f"{self.calls_per_event:.2f} calls per event over the last hour")
        return out


def _day(epoch: float) -> str:
    return time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime(epoch))


def duration(seconds: float) -> str:
    """A duration as an operator reads it: seconds, minutes, hours or days."""
    if seconds < 90:
        return f"{seconds:.0f} s"
    if seconds < 5400:
        return f"{seconds / 60:.0f} min"
    if seconds < 2 * 86400:
        return f"{seconds / 3600:.1f} h"
    return f"{seconds / 86400:.1f} days"


def last_hour(current: dict[str, float], previous: dict[str, float], now: float, name: str) -> float:
    """A counter over the last sixty minutes from two hourly buckets."""
    into = (now % 3600.0) / 3600.0
    return current.get(name, 0.0) + previous.get(name, 0.0) * (1.0 - into)


def compute(
    connection_id: str,
    specs: dict[str, BudgetSpec],
    state: ConnectionState,
    flow_now: dict[str, float],
    flow_before: dict[str, float],
    seen: dict[str, tuple[float, float, float]],
    now: float,
) -> Forecast:
    """The arithmetic (pure): ``state`` holds the budgets' use (``rate_limits``) and the backlog."""
    fc = Forecast(
        connection=connection_id, backlog=state.backlog, paused=state.paused, pauses=dict(state.pauses)
    )
    used = {rl.target: rl for rl in state.rate_limits}
    for name, spec in specs.items():
        if spec.limit == 0:
            continue  # never spent (no bulk)
        rl = used.get(name)
        reserve = spec.project_limit - spec.limit if spec.project_limit and spec.limit else None
        fc.budgets.append(
            BudgetUse(
                name=name,
                used=rl.used if rl else 0,
                limit=spec.limit,
                project_limit=spec.project_limit,
                reserve=reserve,
                window_seconds=spec.window,
                paused_for_seconds=rl.paused_for_seconds if rl else 0.0,
            )
        )
    for kind, (limit, remaining, at) in seen.items():
        fc.live[kind] = {"limit": limit, "remaining": remaining, "age_seconds": max(0.0, now - at)}
    fc.calls_last_hour = last_hour(flow_now, flow_before, now, "calls")
    fc.events_last_hour = last_hour(flow_now, flow_before, now, "out")
    fc.arrivals_last_hour = last_hour(flow_now, flow_before, now, "in")
    if fc.events_last_hour > 0:
        fc.calls_per_event = fc.calls_last_hour / fc.events_last_hour
    per_event = fc.calls_per_event if fc.calls_per_event else 1.0
    rates = [
        spec.limit * 3600.0 / spec.window
        for name, spec in specs.items()
        if name in RATE_BUDGETS and spec.limit and spec.window > 0
    ]
    if rates:
        fc.capacity_per_hour = min(rates) / max(per_event, 1e-6)
        net = fc.capacity_per_hour - fc.arrivals_last_hour
        if state.paused:
            pass  # nothing drains while paused: neither a drain time nor a growth would be true
        elif net > 0:
            fc.drain_seconds = state.backlog / net * 3600.0 if state.backlog else 0.0
        elif state.backlog or fc.arrivals_last_hour:
            fc.growth_per_hour = -net
    cycle = specs.get("api_calls_cycle")
    if cycle is not None and cycle.limit and cycle.cycle_start_day is not None:
        _, end = cycle_window(now, cycle.cycle_start_day, cycle.cycle_scale)
        fc.cycle_end = end
        spent = used[cycle.name].used if cycle.name in used else 0
        if fc.calls_last_hour > 0:
            at = now + max(0, cycle.limit - spent) / fc.calls_last_hour * 3600.0
            fc.cycle_exhausted_at = at if at < end else None
    return fc


def _floats(raw: dict[Any, Any]) -> dict[str, float]:
    out: dict[str, float] = {}
    for key, value in (raw or {}).items():
        name = key.decode() if isinstance(key, bytes) else str(key)
        try:
            out[name] = float(value)
        except (TypeError, ValueError):
            continue
    return out


def _seen(raw: dict[Any, Any]) -> dict[str, tuple[float, float, float]]:
    out: dict[str, tuple[float, float, float]] = {}
    for key, value in (raw or {}).items():
        name = key.decode() if isinstance(key, bytes) else str(key)
        text = value.decode() if isinstance(value, bytes) else str(value)
        try:
            limit, remaining, at = (float(part) for part in text.split(",", 2))
        except ValueError:
            continue
        out[name] = (limit, remaining, at)
    return out


def specs_of(connection: Connection) -> list[BudgetSpec]:
    return list(budget_specs(connection.voucherify.quota).values())


def forecasts(client: redis.Redis, settings: Settings, keys: Keys | None = None) -> list[Forecast]:
    """Every connection's forecast (two round trips: the snapshot, then the flow counters)."""
    keys = keys or Keys(settings.key_prefix)
    snap = snapshot(client, settings, keys, budgets=specs_of)
    now = time.time()
    hour = hour_of(now)
    pipe = client.pipeline(transaction=False)
    for connection in settings.connections:
        pipe.hgetall(keys.quota_hour(connection.id, hour))
        pipe.hgetall(keys.quota_hour(connection.id, hour - 1))
        pipe.hgetall(keys.quota_seen(connection.id))
    results = pipe.execute()
    out = []
    for index, (connection, state) in enumerate(zip(settings.connections, snap.connections, strict=True)):
        flow_now, flow_before, seen = results[index * 3 : index * 3 + 3]
        out.append(
            compute(
                connection.id,
                budget_specs(connection.voucherify.quota),
                state,
                _floats(flow_now),
                _floats(flow_before),
                _seen(seen),
                now,
            )
        )
    return out
