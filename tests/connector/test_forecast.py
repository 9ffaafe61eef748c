"""The quota forecast's arithmetic (connector.forecast.compute): pure, no Redis."""

from __future__ import annotations

from datetime import UTC, datetime

from connector.depths import ConnectionState, RateLimitState
from connector.forecast import compute, last_hour
from connector.quotas import QuotaSettings, budget_specs

# 2027-01-10 12:30 UTC: half-way through an hour, in the January cycle (from the 1st).
NOW = datetime(2027, 1, 10, 12, 30, tzinfo=UTC).timestamp()


def state(backlog: int, **used: int) -> ConnectionState:
    return ConnectionState(
        id="acme",
        backlog=backlog,
        backlog_limit=100_000,
        dead_letters=0,
        rate_limits=[RateLimitState(name, None, 60.0, n, 0.0, 1.0) for name, n in used.items()],
    )


def business() -> dict:
    return budget_specs(QuotaSettings(plan="business", api_calls_per_minute=100, api_calls_per_cycle=100_000))


def test_last_hour_takes_the_unexpired_part_of_the_previous_hour() -> None:
    assert last_hour({"calls": 100}, {"calls": 300}, NOW, "calls") == 100 + 150
    assert last_hour({}, {}, NOW, "calls") == 0


def test_budgets_reserve_and_calls_per_event() -> None:
    fc = compute("acme", business(), state(0, api_calls_minute=12), {"calls": 40, "out": 200}, {}, {}, NOW)
    minute = {b.name: b for b in fc.budgets}["api_calls_minute"]
    assert (minute.used, minute.limit, minute.project_limit, minute.reserve) == (12, 50, 100, 50)
    assert "bulk_calls_hour" not in {b.name for b in fc.budgets}  # none on Business: not shown
    assert fc.calls_per_event == 0.2
    assert fc.drain_seconds == 0.0 and fc.growth_per_hour is None


def test_backlog_drains_at_what_the_budget_allows_beyond_the_arrivals() -> None:
    # 50 calls a minute = 3,000 an hour; 0.5 calls per event -> 6,000 events an hour; 4,000
    # arrive an hour: the backlog of 1,000 shrinks by 2,000 an hour -> 30 minutes.
    flow = {"calls": 1000, "out": 2000, "in": 2000}
    before = {"calls": 2000, "out": 4000, "in": 4000}  # half of it within the last hour
    fc = compute("acme", business(), state(1000), flow, before, {}, NOW)
    assert fc.calls_per_event == 0.5
    assert fc.capacity_per_hour == 6000
    assert fc.drain_seconds == 1800.0
    assert "backlog drains in 30 min" in fc.sentences()


def test_backlog_grows_when_arrivals_exceed_the_budget() -> None:
    flow = {"calls": 3000, "out": 3000, "in": 4200}
    fc = compute("acme", business(), state(5000), flow, {}, {}, NOW)
    assert fc.capacity_per_hour == 3000 and fc.growth_per_hour == 1200
    assert "backlog grows by 1,200/h: raise the plan or the share" in fc.sentences()


def test_cycle_budget_runs_out_before_the_cycle_ends_at_this_rate() -> None:
    # 50,000 usable this cycle, 40,000 spent, 500 calls in the last hour: 20 hours left.
    fc = compute(
        "acme", business(), state(0, api_calls_cycle=40_000), {"calls": 500, "out": 500}, {}, {}, NOW
    )
    assert fc.cycle_end == datetime(2027, 2, 1, tzinfo=UTC).timestamp()
    assert fc.cycle_exhausted_at == NOW + 20 * 3600
    assert "cycle budget runs out on 2027-01-11 08:30 UTC at this rate" in fc.sentences()
    # A slow rate: it lasts the cycle.
    slow = compute("acme", business(), state(0, api_calls_cycle=40_000), {"calls": 5, "out": 5}, {}, {}, NOW)
    assert slow.cycle_exhausted_at is None
    assert any("lasts until the cycle ends (2027-02-01" in s for s in slow.sentences())


def test_live_headers_are_reported_with_their_age() -> None:
    fc = compute("acme", business(), state(0), {}, {}, {"rest": (100.0, 37.0, NOW - 12)}, NOW)
    assert fc.live == {"rest": {"limit": 100.0, "remaining": 37.0, "age_seconds": 12.0}}
    assert fc.calls_per_event is None


def test_a_paused_connection_names_connector_resume_and_promises_no_drain() -> None:
    paused = state(1000)
    paused.paused = {"reason": "auth", "since": NOW - 60}
    flow = {"calls": 1000, "out": 2000, "in": 2000}
    fc = compute("acme", business(), paused, flow, {}, {}, NOW)
    assert fc.drain_seconds is None and fc.growth_per_hour is None  # nothing drains while paused
    text = " | ".join(fc.sentences())
    assert "connector resume acme" in text
    assert "drains" not in text
