"""Workers dying mid-stream, with real processes: gunicorn, gevent Celery workers, the scheduler,
Redis and the fake Voucherify (SPEC 5 and 9).

- ``kill -9`` of the only worker while it delivers 2,000 events, then a fresh worker: the killed
  worker's unacknowledged messages come back after the (test-sized) visibility timeout through
  kombu's unacked sweep, in-flight ledger claims expire, and everything is delivered.
- SIGTERM as Heroku sends it (``REMAP_SIGTERM=SIGQUIT``, then SIGKILL after a grace period)
  while a second worker keeps running: nothing lost.
- ``kill -9`` during identify-heavy traffic (merged and bulk upserts): every customer's upserts
  applied exactly once, counted per customer from what the fake received
  (``tests.support.identify_traffic``), and every final state right.

Each asserts: every accepted event delivered (none dead-lettered), none delivered twice except a
call that was on the wire when the worker died (see ``tests.support.faultkit``), no 500s.
"""

from __future__ import annotations

import os
import signal
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import make_stack
from tests.support.fakes import FakeVoucherify
from tests.support.faultkit import (
    FAST_ENV,
    Sender,
    assert_all_accounted,
    batches,
    broker_state,
    caught_up,
    dead_letters,
    delivered_ids,
    double_deliveries,
    successes,
    track,
    wait_quiet,
    write_connections,
)
from tests.support.identify_traffic import account, check_identify_traffic, send_identify_traffic
from tests.support.processes import Proc, Stack, wait_until

pytestmark = pytest.mark.integration
pytest_plugins = ["tests.support.private_redis"]  # the private_redis fixture

EVENTS = 2000
BATCH = 100
# A slow-ish Voucherify and modest parallelism make the stream last a few seconds, so the fault
# lands in the middle of it.
LATENCY_MS = 40
WORKER_ENV = {**FAST_ENV, "CONNECTOR_DELIVERY_CONCURRENCY": "8"}
WORKER_CONCURRENCY = 4
IN_FLIGHT_BOUND = WORKER_CONCURRENCY * 8  # calls one worker can have on the wire


@pytest.fixture
def voucherify(tmp_path: Path) -> Iterator[FakeVoucherify]:
    with FakeVoucherify(log_dir=tmp_path / "fakes") as fake:
        fake.set_faults(latency_ms=LATENCY_MS)
        yield fake


def start(stack_factory: list, tmp_path: Path, redis_url: str, voucherify: FakeVoucherify) -> Stack:
    stack = make_stack(
        stack_factory, tmp_path, redis_url, write_connections(tmp_path, voucherify), **WORKER_ENV
    )
    stack.web(workers=2)
    stack.scheduler()
    return stack


def send_all(stack: Stack, prefix: str) -> Sender:
    sender = Sender(stack.web_url)
    for chunk in batches([track(f"{prefix}-{i:05d}") for i in range(EVENTS)], BATCH):
        assert sender.batch(chunk) == 200
    return sender


def ledger_states(redis_url: str, message_ids: list[str]) -> dict[str, Any]:
    import redis as redis_lib

    from connector.keys import Keys

    client = redis_lib.Redis.from_url(redis_url)
    keys = Keys.from_env()
    return {m: client.get(keys.ledger("acme", f"acme:v:{m}:add_custom_event")) for m in message_ids}


def check(voucherify: FakeVoucherify, redis_url: str, sender: Sender, fault: tuple[float, float]) -> None:
    try:
        wait_until(lambda: len(delivered_ids(voucherify)) >= EVENTS, timeout=120, interval=0.5)
    except AssertionError:
        missing = sorted(set(sender.accepted) - delivered_ids(voucherify))
        raise AssertionError(
            f"{len(missing)} not delivered; redis: {broker_state(redis_url)}; "
            f"ledger of some: {ledger_states(redis_url, missing[:5])}"
        ) from None
    # Long enough for a stray redelivery (visibility timeout, claim TTL) to show up if there were one.
    wait_quiet(voucherify, seconds=float(FAST_ENV["CONNECTOR_VISIBILITY_TIMEOUT"]) + 2)
    sender.assert_no_server_errors()
    assert len(sender.accepted) == EVENTS
    assert_all_accounted(voucherify, redis_url, sender.accepted)
    assert dead_letters(redis_url) == []
    assert delivered_ids(voucherify) == set(sender.accepted)
    explained, unexplained = double_deliveries(voucherify, [fault])
    assert unexplained == [], f"delivered twice, not explained by the fault: {unexplained[:10]}"
    assert len(explained) <= IN_FLIGHT_BOUND, explained
    assert all(r["status"] == 200 for r in voucherify.requests() if not r["path"].startswith("/__fake"))
    print(f"{len(successes(voucherify))} calls, {len(explained)} re-sent after the fault: {explained}")


def test_kill_9_mid_stream_then_a_new_worker_delivers_everything_once(
    tmp_path: Path, private_redis: str, stack_factory: list, voucherify: FakeVoucherify
) -> None:
    redis_url = private_redis
    stack = start(stack_factory, tmp_path, redis_url, voucherify)
    doomed = stack.worker("doomed", concurrency=WORKER_CONCURRENCY)
    sender = send_all(stack, "kill")

    wait_until(lambda: len(successes(voucherify)) >= 300, timeout=60, what="the stream under way")
    killed_at = time.time()
    doomed.kill()  # SIGKILL: no shutdown code runs, nothing is acknowledged or restored
    assert len(delivered_ids(voucherify)) < EVENTS, "the kill came too late to test anything"
    # The dead worker's messages are unacknowledged in kombu's index: only the visibility
    # timeout and a sweep bring them back (workers.restore).
    assert broker_state(redis_url)["unacked"] > 0

    stack.worker("fresh", concurrency=WORKER_CONCURRENCY)
    # Only calls on the wire at the moment of the kill may have reached the fake unrecorded.
    check(voucherify, redis_url, sender, (killed_at, caught_up(voucherify)))
    assert broker_state(redis_url)["unacked"] == 0


def heroku_stop(proc: Proc, grace: float) -> float:
    """SIGTERM to the dyno's process, SIGKILL after ``grace`` seconds; returns when it is gone."""
    assert proc.proc is not None
    os.kill(proc.pid, signal.SIGTERM)
    try:
        proc.proc.wait(grace)
    except Exception:
        proc.kill()
    return time.time()


def test_sigterm_as_heroku_sends_it_loses_nothing(
    tmp_path: Path, private_redis: str, stack_factory: list, voucherify: FakeVoucherify
) -> None:
    redis_url = private_redis
    stack = start(stack_factory, tmp_path, redis_url, voucherify)
    leaving = stack.worker("leaving", concurrency=WORKER_CONCURRENCY, REMAP_SIGTERM="SIGQUIT")
    stack.worker("staying", concurrency=WORKER_CONCURRENCY, REMAP_SIGTERM="SIGQUIT")
    sender = send_all(stack, "term")

    wait_until(lambda: len(successes(voucherify)) >= 300, timeout=60, what="the stream under way")
    termed_at = time.time()
    heroku_stop(leaving, grace=5.0)
    gone_at = caught_up(voucherify)  # the fake's clock: what the leaving worker sent is in
    assert not leaving.alive()
    assert len(delivered_ids(voucherify)) < EVENTS, "the SIGTERM came too late to test anything"
    check(voucherify, redis_url, sender, (termed_at, gone_at))


# ---------------------------------------------------------------------------------------------
# Identify-heavy traffic: merged and bulk upserts, where idempotency is hardest


IDENTIFY_LATENCY_MS = 150  # slow enough that the kill lands with merged and bulk calls in flight


def test_kill_9_during_identify_heavy_traffic_applies_every_upsert_once(
    tmp_path: Path, private_redis: str, stack_factory: list, voucherify: FakeVoucherify
) -> None:
    voucherify.set_faults(latency_ms=IDENTIFY_LATENCY_MS)
    stack = start(stack_factory, tmp_path, private_redis, voucherify)
    doomed = stack.worker("doomed", concurrency=WORKER_CONCURRENCY)
    traffic, sender = send_identify_traffic(stack.web_url, voucherify, "kill")
    killed_at = time.time()
    doomed.kill()
    seen_at = caught_up(voucherify)  # the fake's clock: what the dead worker sent is in
    assert account(voucherify, traffic).problems, "the kill came too late to test anything"

    stack.worker("fresh", concurrency=WORKER_CONCURRENCY)
    check_identify_traffic(
        voucherify, private_redis, sender, traffic, [(killed_at, seen_at)], IN_FLIGHT_BOUND
    )
