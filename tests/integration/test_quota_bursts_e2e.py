"""Quota, exact under bursts (SPEC 13; issue #19's budget defects), with real processes: gunicorn,
Celery workers, the scheduler and the fake Voucherify enforcing the project's quota, on a fast
clock (the fake's ``period_scale`` and ``CONNECTOR_QUOTA_PERIOD_SCALE`` alike).

The project allows 120 calls a "minute"; the connector's share is half, so the shop's reserve is
60, and the live headers are credit: the connector may call only while ``X-Rate-Limit-Remaining
- calls granted since that answer - 60 > 0``.  With the shop's own 40 calls in a window, that
leaves the connector 20 (its own counters would allow 60).

- a 400-event burst drains at that rate: no window over it, no full window under half of it
  (it drained at 1-4 calls a window, parked "throttled until" minutes and hours ahead);
- the first window, before any answer came back, is no burst past the reserve (it took every
  grant its own counters allowed before the first headers arrived);
- a revoked key gets at most 2 event calls before the connection pauses (it got 32).
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import redis

from connector.keys import Keys
from tests.conftest import make_stack
from tests.support.fakes import FakeVoucherify
from tests.support.faultkit import (
    FAST_ENV,
    Sender,
    calls,
    dead_letters,
    delivered_ids,
    parked_items,
    track,
    write_connections,
)
from tests.support.processes import wait_until
from workers.delivery import pauses

pytestmark = pytest.mark.integration
pytest_plugins = ["tests.support.private_redis"]

# A "minute" of 6 s (whole seconds: X-Rate-Limit-Retry names whole seconds).  Of 3 s, one stall
# of the loaded CI machine (worker or scheduler late by ~2 s at a window's start) left a window
# under half its room while nothing starved: the windows must be long against such a stall.
SCALE = 0.1
LIMIT, SHOP, RESERVE = 120, 40, 60
ROOM = LIMIT - SHOP - RESERVE  # 20 connector calls a window
QUOTA = f"api_calls_per_minute = {LIMIT}\nshare = 0.5\n"


@pytest.fixture
def voucherify(tmp_path: Path) -> Iterator[FakeVoucherify]:
    with FakeVoucherify(log_dir=tmp_path / "fakes") as fake:
        fake.set_faults(latency_ms=10)
        yield fake


def windows(voucherify: FakeVoucherify) -> list[dict[str, Any]]:
    """The fake's per-minute windows so far, the current one last."""
    quota = voucherify.quota(history=True)
    bucket = quota["buckets"]["api_calls_per_minute"]
    return [*bucket["history"], bucket]


def test_a_burst_drains_at_the_rate_the_reserve_leaves_never_over_it_never_starved(
    tmp_path: Path, private_redis: str, stack_factory: list, voucherify: FakeVoucherify
) -> None:
    # The shop's 40 calls come as each window starts: the headers show them before any call of
    # the connector's in that window, so the room is exactly 20 a window.
    voucherify.set_quota(
        api_calls_per_minute=LIMIT,
        period_scale=SCALE,
        shop={"calls_per_minute": SHOP},
        shop_at="window_start",
    )
    config = write_connections(tmp_path, voucherify, quota=QUOTA)
    env = {**FAST_ENV, "CONNECTOR_QUOTA_PERIOD_SCALE": str(SCALE)}
    stack = make_stack(stack_factory, tmp_path, private_redis, config, **env)
    stack.web()
    stack.worker("w1", concurrency=8)
    stack.scheduler()

    sender = Sender(stack.web_url)
    events = 400
    for chunk in range(0, events, 50):
        assert sender.batch([track(f"burst-{i:03d}") for i in range(chunk, chunk + 50)]) == 200
    # At 20 a window of 6 s, 120 s; starved (1-4 a window) it would take many minutes.
    wait_until(
        lambda: len(delivered_ids(voucherify)) == events, timeout=240, interval=1.0, what="all delivered"
    )

    quota = voucherify.quota()
    assert quota["refusals"]["connector"]["total"] == 0, quota["refusals"]
    assert quota["refusals"]["shop"]["total"] == 0, quota["refusals"]  # the checkout never failed
    used = [(w["window_start"], w["used_by"]["connector"]) for w in windows(voucherify)]
    busy = [i for i, (_, n) in enumerate(used) if n]
    assert busy, used
    # No window over the reserve's rate: the connector never took the shop's reserve.
    assert max(n for _, n in used) <= ROOM, used
    # No whole window under half of it while the backlog lasted (the first and the last windows
    # of the drain are partial: the burst came, the backlog ran out, within them).
    whole = used[busy[0] + 1 : busy[-1]]
    assert whole and min(n for _, n in whole) >= ROOM // 2, used
    assert delivered_ids(voucherify) == set(sender.accepted)
    assert dead_letters(private_redis) == []


def test_the_first_window_is_no_burst_past_the_reserve(
    tmp_path: Path, private_redis: str, stack_factory: list, voucherify: FakeVoucherify
) -> None:
    # The shop spent 40 of this window's 120 before the connector's first call; the connector's
    # own counters allow it 60, and two workers have 16 calls' worth of concurrency: only the
    # answers' headers can tell it the reserve leaves 20.  Slow answers (150 ms) mean many
    # grants would be given before the first headers came back.
    voucherify.set_faults(latency_ms=150)
    scale = 0.2  # a "minute" of 12 s: the first window lasts past the burst's intake
    voucherify.set_quota(api_calls_per_minute=LIMIT, period_scale=scale)
    config = write_connections(tmp_path, voucherify, quota=QUOTA)
    env = {**FAST_ENV, "CONNECTOR_QUOTA_PERIOD_SCALE": str(scale)}
    stack = make_stack(stack_factory, tmp_path, private_redis, config, **env)
    stack.web()
    for name in ("w1", "w2"):
        stack.worker(name, concurrency=8)
    stack.scheduler()
    origin = voucherify.set_quota(align="now")["origin"]  # the window starts now, the stack up
    voucherify.set_quota(used={"api_calls_per_minute": SHOP})
    sender = Sender(stack.web_url)
    # Twice what the reserve leaves a window: a burst would show in the first one.
    for chunk in range(0, 2 * ROOM, 20):
        assert sender.batch([track(f"first-{i:02d}") for i in range(chunk, chunk + 20)]) == 200

    def first_window() -> dict[str, Any] | None:
        return next((w for w in windows(voucherify)[:-1] if w["window_start"] == origin), None)

    first = wait_until(first_window, timeout=60, interval=0.2, what="the first window over")
    assert 0 < first["used_by"]["connector"] <= ROOM, first
    assert voucherify.quota()["refusals"]["connector"]["total"] == 0
    wait_until(
        lambda: len(delivered_ids(voucherify)) == 2 * ROOM, timeout=90, interval=0.5, what="all delivered"
    )
    assert dead_letters(private_redis) == []


def test_a_revoked_key_gets_at_most_two_calls_before_the_pause(
    tmp_path: Path, private_redis: str, stack_factory: list, voucherify: FakeVoucherify
) -> None:
    # A new connection whose key was revoked: no answer of any window has been seen, so the
    # budget probes with at most 2 calls; the first refusal's credentials check (one GET, under
    # a lock) finds the key refused and pauses the connection.
    voucherify.set_quota(api_calls_per_minute=LIMIT)
    voucherify.set_auth("revoked")
    config = write_connections(tmp_path, voucherify, quota=QUOTA)
    stack = make_stack(stack_factory, tmp_path, private_redis, config, **FAST_ENV)
    stack.web()
    for name in ("w1", "w2"):
        stack.worker(name, concurrency=8)
    stack.scheduler()
    sender = Sender(stack.web_url)
    for chunk in range(0, 50, 10):
        assert sender.batch([track(f"revoked-{i:02d}") for i in range(chunk, chunk + 10)]) == 200
    wait_until(lambda: len(parked_items(private_redis)) == 50, timeout=30, what="all 50 parked")
    client = redis.Redis.from_url(private_redis)
    pause = pauses.paused(client, Keys.from_env(), "acme")
    client.close()
    assert pause is not None and pause.reason == pauses.AUTH
    # The calls made before the pause (the scheduler's own probe of the paused connection may
    # follow it: that one is the resume's business).
    seen = [r for r in calls(voucherify) if r["time"] <= pause.since]
    events = [r for r in seen if r["path"] == "/v1/events"]
    assert 0 < len(events) <= 2, [(r["method"], r["path"], r["status"]) for r in seen]
    # Besides them only the one credentials check that told a revoked key from a refused call.
    assert len(seen) <= 3 and all(r["status"] == 401 for r in seen), seen
    assert dead_letters(private_redis) == []
    assert all(i["attempts"] == 0 for i in parked_items(private_redis))  # no retry spent
