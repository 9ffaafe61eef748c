"""Fewer Voucherify calls for the same effect (SPEC 10), with real processes: gunicorn, gevent
Celery workers, the scheduler, Redis and the fake Voucherify enforcing its limits.

- the hold merges one customer's identifies spread over many requests and two workers into one
  call per customer, the newest traits winning;
- a custom event sends its customer's held upsert first (the order Voucherify sees), without
  waiting for the window; an upsert equal to the last accepted is not sent (skipped_unchanged);
- kill -9 of a worker while upserts are held and bulk calls are being read back loses nothing
  and applies nothing twice;
- the bulk budget spent: single upserts and events keep flowing, no 429, newest traits win;
- a bulk's per-customer failures each reach the dead letters with Voucherify's key and message.
"""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import redis

from tests.conftest import make_stack
from tests.support.fakes import FakeVoucherify
from tests.support.faultkit import (
    FAST_ENV,
    Sender,
    calls,
    caught_up,
    dead_letters,
    outcome_lines,
    successes,
    track,
    wait_quiet,
    write_connections,
)
from tests.support.identify_traffic import (
    BULK_PATH,
    CUSTOMERS_PATH,
    EVENTS_PATH,
    account,
    check_identify_traffic,
    identify_heavy,
    send_identify_traffic,
)
from tests.support.processes import Proc, Stack, wait_until

pytestmark = pytest.mark.integration
pytest_plugins = ["tests.support.private_redis"]  # the private_redis fixture

ENV = {**FAST_ENV, "CONNECTOR_DELIVERY_CONCURRENCY": "8"}


@pytest.fixture
def voucherify(tmp_path: Path) -> Iterator[FakeVoucherify]:
    with FakeVoucherify(log_dir=tmp_path / "fakes") as fake:
        fake.set_faults(latency_ms=20)
        yield fake


def start(
    stack_factory: list,
    tmp_path: Path,
    redis_url: str,
    voucherify: FakeVoucherify,
    fewer: str,
    workers: int = 1,
) -> tuple[Stack, list[Proc]]:
    config = write_connections(tmp_path, voucherify, fewer_calls=fewer)
    stack = make_stack(stack_factory, tmp_path, redis_url, config, **ENV)
    stack.web()
    procs = [stack.worker(f"w{n + 1}", concurrency=4) for n in range(workers)]
    stack.scheduler()
    return stack, procs


def identify(mid: str, user: str, ts: str, **traits: Any) -> dict[str, Any]:
    return {"type": "identify", "messageId": mid, "userId": user, "timestamp": ts, "traits": traits}


def iso(epoch: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(epoch)) + f".{int(epoch % 1 * 1000):03d}Z"


def upserts_by_customer(fake: FakeVoucherify) -> Counter[str]:
    out: Counter[str] = Counter()
    for record in successes(fake, CUSTOMERS_PATH):
        out[str(record["body"].get("source_id"))] += 1
    return out


def test_identifies_over_many_requests_and_two_workers_become_one_call_per_customer(
    tmp_path: Path, private_redis: str, stack_factory: list, voucherify: FakeVoucherify
) -> None:
    stack, _ = start(
        stack_factory,
        tmp_path,
        private_redis,
        voucherify,
        "coalesce_window_seconds = 3\nbulk_calls_per_hour = 0\n",
        workers=2,
    )
    sender = Sender(stack.web_url)
    customers = [f"hold-{n:02d}" for n in range(30)]
    base = time.time() - 60
    # Five rounds, each one request with one identify per customer: a customer's identifies are
    # spread over five requests (and so over both workers), the newest sent FIRST.
    for version in (5, 1, 3, 2, 4):
        batch = [
            identify(
                f"{c}-v{version}",
                c,
                iso(base + version),
                name=f"{c} v{version}",
                metadata={f"seen_v{version}": True, "seq": version},
            )
            for c in customers
        ]
        assert sender.batch(batch) == 200

    wait_until(
        lambda: len(upserts_by_customer(voucherify)) == len(customers), timeout=30, what="every customer"
    )
    wait_quiet(voucherify, seconds=4)
    per_customer = upserts_by_customer(voucherify)
    assert set(per_customer.values()) == {1}, per_customer  # one call per customer, 150 identifies
    store = {c["source_id"]: c for c in voucherify.customers()}
    for c in customers:
        assert store[c]["name"] == f"{c} v5"
        assert store[c]["metadata"] == {"seq": 5, **{f"seen_v{v}": True for v in range(1, 6)}}
    workers_used = {line.get("process") for line in _delivered_lines(stack)}
    assert workers_used  # delivered by the workers (both share the tasks; asserted by the counts)
    assert dead_letters(private_redis) == []
    sender.assert_no_server_errors()


def _delivered_lines(stack: Stack) -> list[dict[str, Any]]:
    return outcome_lines(stack.logs(), "delivered")


def test_a_custom_event_flushes_its_held_upsert_first_and_unchanged_upserts_are_skipped(
    tmp_path: Path, private_redis: str, stack_factory: list, voucherify: FakeVoucherify
) -> None:
    stack, _ = start(
        stack_factory,
        tmp_path,
        private_redis,
        voucherify,
        "coalesce_window_seconds = 5\nbulk_calls_per_hour = 0\n",
    )
    sender = Sender(stack.web_url)
    now = time.time()
    assert sender.batch([identify("o-1", "order-u", iso(now - 10), name="Ann", email="ann@x.io")]) == 200
    time.sleep(0.5)
    sent_at = time.time()
    assert sender.batch([track("o-2", user="order-u")]) == 200
    wait_until(lambda: successes(voucherify, EVENTS_PATH), timeout=10, what="the custom event")
    seen = [r for r in calls(voucherify) if r["path"] in (CUSTOMERS_PATH, EVENTS_PATH)]
    assert [r["path"] for r in seen] == [CUSTOMERS_PATH, EVENTS_PATH]
    assert seen[1]["time"] - sent_at < 3.0  # not held back for the window
    assert seen[0]["body"]["email"] == "ann@x.io"

    # The same traits again (a page view's identify): not sent, skipped_unchanged.
    assert sender.batch([identify("o-3", "order-u", iso(now - 5), name="Ann", email="ann@x.io")]) == 200
    wait_until(
        lambda: outcome_lines(stack.logs(), "skipped_unchanged"), timeout=15, what="the unchanged upsert"
    )
    assert len(successes(voucherify, CUSTOMERS_PATH)) == 1
    # Changed traits are sent.
    assert sender.batch([identify("o-4", "order-u", iso(now - 1), name="Ann B")]) == 200
    wait_until(lambda: len(successes(voucherify, CUSTOMERS_PATH)) == 2, timeout=15, what="the changed upsert")
    assert voucherify.customers()[0]["name"] == "Ann B"
    assert dead_letters(private_redis) == []


def test_kill_9_while_upserts_are_held_loses_nothing_and_applies_nothing_twice(
    tmp_path: Path, private_redis: str, stack_factory: list, voucherify: FakeVoucherify
) -> None:
    voucherify.set_faults(latency_ms=100)
    voucherify.set_async_actions(delay_s=1)
    stack, (doomed,) = start(
        stack_factory,
        tmp_path,
        private_redis,
        voucherify,
        "coalesce_window_seconds = 2\nbulk_calls_per_hour = 100000\n",
    )
    traffic, sender = send_identify_traffic(stack.web_url, voucherify, "hk", customers=60)
    killed_at = time.time()
    doomed.kill()
    # The fake's clock once it has taken up what the dead worker sent: a call that reached it
    # after ``killed_at`` (the test preempted before the signal) was still on the wire at the kill.
    seen_at = caught_up(voucherify)
    assert account(voucherify, traffic).problems, "the kill came too late to test anything"
    stack.worker("fresh", concurrency=4)
    check_identify_traffic(voucherify, private_redis, sender, traffic, [(killed_at, seen_at)], 4 * 8)


def test_bulk_budget_spent_singles_and_events_keep_flowing_no_429_newest_wins(
    tmp_path: Path, private_redis: str, stack_factory: list, voucherify: FakeVoucherify
) -> None:
    # Voucherify allows 2 bulk calls an hour; the connector's share of that is 1.
    voucherify.set_quota(bulk_calls_per_hour=2)
    stack, _ = start(
        stack_factory,
        tmp_path,
        private_redis,
        voucherify,
        "coalesce_window_seconds = 1\nbulk_calls_per_hour = 2\n",
        workers=2,
    )
    traffic = identify_heavy("bb", customers=40, batch_size=15)
    sender = Sender(stack.web_url)
    for batch in traffic.batches:
        assert sender.batch(batch) == 200
        time.sleep(0.1)  # spread: several hold releases, each wanting a bulk call

    def settled() -> bool:
        return account(voucherify, traffic).problems == []

    wait_until(settled, timeout=60, interval=0.5, what="every customer's newest state")
    wait_quiet(voucherify, seconds=3)
    seen = calls(voucherify)
    assert [r for r in seen if r["status"] == 429] == []
    assert len([r for r in seen if r["path"] == BULK_PATH]) == 1  # the budget, not more
    assert len(successes(voucherify, CUSTOMERS_PATH)) > 0  # the rest went singly
    assert len(successes(voucherify, EVENTS_PATH)) == len(traffic.tracks)
    assert account(voucherify, traffic).problems == []
    assert dead_letters(private_redis) == []
    sender.assert_no_server_errors()


def test_bulk_per_customer_failures_each_reach_the_dead_letters_with_voucherifys_reason(
    tmp_path: Path, private_redis: str, stack_factory: list, voucherify: FakeVoucherify
) -> None:
    voucherify.set_async_actions(
        delay_s=1,
        failures=[
            {"source_ids": ["bad-*"], "key": "invalid_customer", "message": "Rejected by a validation rule"}
        ],
    )
    stack, _ = start(
        stack_factory,
        tmp_path,
        private_redis,
        voucherify,
        "coalesce_window_seconds = 1\nbulk_calls_per_hour = 100000\n",
    )
    sender = Sender(stack.web_url)
    base = time.time() - 60
    good = [f"good-{n}" for n in range(6)]
    bad = [f"bad-{n}" for n in range(4)]
    for version in (1, 2):
        batch = [
            identify(f"{c}-{version}", c, iso(base + version), name=f"{c} {version}") for c in good + bad
        ]
        assert sender.batch(batch) == 200

    wait_until(lambda: len(dead_letters(private_redis)) >= len(bad), timeout=30, what="the dead letters")
    wait_quiet(voucherify, seconds=3)
    letters = dead_letters(private_redis)
    assert sorted(d.request["customer"] for d in letters) == bad  # each on its own
    for letter in letters:
        assert "invalid_customer" in letter.error and "Rejected by a validation rule" in letter.error
        payloads = letter.payload if isinstance(letter.payload, list) else [letter.payload]
        assert {p["messageId"] for p in payloads} == {
            f"{letter.request['customer']}-1",
            f"{letter.request['customer']}-2",
        }
    store = {c["source_id"]: c for c in voucherify.customers()}
    assert sorted(store) == good
    assert all(store[c]["name"] == f"{c} 2" for c in good)
    assert len([r for r in calls(voucherify) if r["path"] == BULK_PATH]) == 1
    assert [r for r in calls(voucherify) if r["path"].startswith("/v1/async-actions/")]  # read back
    client = redis.Redis.from_url(private_redis)
    wait_until(
        lambda: int(client.get("connector:backlog:acme") or 0) == 0, timeout=10, what="backlog released"
    )
    sender.assert_no_server_errors()
