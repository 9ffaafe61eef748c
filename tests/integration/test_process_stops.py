"""Processes stopped the way platforms stop them, with real processes (SPEC 5 and 9).

Heroku sends SIGTERM to every process of the dyno (its process group), then SIGKILL 30 s later;
``docker compose stop`` and Ctrl-C do the same in their own ways.  The worker here is started as
the Procfile starts it (gevent pool, ``--concurrency 100``, ``REMAP_SIGTERM=SIGQUIT``, the default
task budget and timeouts), so what it holds when the signal comes is what a real one holds:
three tasks of 100 events, about 100 calls on the wire, the rest waiting for a send slot.

Each test asserts: every accepted event delivered once (only calls cut off by the exit may be
sent twice), nothing dead-lettered, the backlog counters back to zero, the process gone in time.
The web and the scheduler are stopped the same way at the end; Ctrl-C of ``make run`` with work
on the wire is in ``test_make_run``.
"""

from __future__ import annotations

import os
import signal
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis

from connector import backlog
from connector.keys import Keys
from tests.conftest import make_stack
from tests.support.fakes import FakeVoucherify
from tests.support.faultkit import (
    CONNECTION_ID,
    FAST_ENV,
    Sender,
    batches,
    broker_state,
    by_key,
    dead_letters,
    delivered_ids,
    double_deliveries,
    successes,
    taken_from_broker,
    track,
    wait_quiet,
    write_connections,
)
from tests.support.processes import Proc, Stack, wait_until

pytestmark = pytest.mark.integration
pytest_plugins = ["tests.support.private_redis"]

EVENTS = 300
PROCFILE_WORKER = {"concurrency": 100, "REMAP_SIGTERM": "SIGQUIT"}
HEROKU_KILL_AFTER = 30.0
# Only the scheduler's pace and the visibility timeout are shortened (a cut-off message comes
# back after it); the worker's task budget, timeouts and grace are the Procfile's defaults.
STACK_ENV = {
    "CONNECTOR_SCHEDULER_INTERVAL": "0.2",
    "CONNECTOR_VISIBILITY_TIMEOUT": FAST_ENV["CONNECTOR_VISIBILITY_TIMEOUT"],
    "CONNECTOR_RETRY_BASE_SECONDS": "0.5",
    "CONNECTOR_RETRY_CAP_SECONDS": "2",
}


@pytest.fixture
def voucherify(tmp_path: Path) -> Iterator[FakeVoucherify]:
    with FakeVoucherify(log_dir=tmp_path / "fakes") as fake:
        yield fake


def start(
    stack_factory: list, tmp_path: Path, redis_url: str, voucherify: FakeVoucherify, **env: str
) -> Stack:
    stack = make_stack(
        stack_factory, tmp_path, redis_url, write_connections(tmp_path, voucherify), **STACK_ENV, **env
    )
    stack.web(workers=1)
    stack.scheduler()
    return stack


def send(stack: Stack, prefix: str, count: int = EVENTS) -> Sender:
    sender = Sender(stack.web_url)
    for chunk in batches([track(f"{prefix}-{i:04d}") for i in range(count)], 100):
        assert sender.batch(chunk) == 200
    return sender


def platform_stop(proc: Proc) -> tuple[float, float]:
    """SIGTERM to the process group as a platform sends it, SIGKILL 30 s later if still there;
    (when the signal went, when the process was gone)."""
    assert proc.proc is not None
    sent = time.time()
    os.killpg(proc.pid, signal.SIGTERM)
    try:
        proc.proc.wait(HEROKU_KILL_AFTER)
    except Exception:
        proc.kill()
        raise AssertionError("the worker was still running 30 s after SIGTERM (SIGKILL sent)") from None
    return sent, time.time()


def on_the_wire_at(fake: FakeVoucherify, moment: float) -> list[dict]:
    """Calls the fake had received before ``moment`` and answered after it."""
    return [r for r in fake.requests() if r["time"] <= moment <= r["time"] + r["duration_ms"] / 1000.0]


def backlog_of_connection(redis_url: str) -> int:
    client = redis.Redis.from_url(redis_url)
    try:
        return backlog.current(client, CONNECTION_ID, keys=Keys.from_env())
    finally:
        client.close()


def all_delivered(
    fake: FakeVoucherify,
    sender: Sender,
    redis_url: str,
    timeout: float = 120,
    answers: tuple[int, ...] = (200,),
) -> None:
    try:
        wait_until(lambda: delivered_ids(fake) >= set(sender.accepted), timeout=timeout, interval=0.5)
    except AssertionError:
        missing = sorted(set(sender.accepted) - delivered_ids(fake))
        raise AssertionError(
            f"{len(missing)} never delivered, e.g. {missing[:5]}; {broker_state(redis_url)}"
        ) from None
    wait_quiet(fake, seconds=float(STACK_ENV["CONNECTOR_VISIBILITY_TIMEOUT"]) + 2)
    sender.assert_no_server_errors(answers)
    assert dead_letters(redis_url) == []
    # Every event finished released its backlog unit (a parked one is not counted twice).
    wait_until(lambda: backlog_of_connection(redis_url) == 0, timeout=30, what="the backlog back to zero")


def test_sigterm_with_calls_on_the_wire_loses_nothing_and_sends_nothing_twice(
    tmp_path: Path, private_redis: str, stack_factory: list, voucherify: FakeVoucherify
) -> None:
    voucherify.set_faults(latency_ms=4000)  # every call stays on the wire for 4 s
    stack = start(stack_factory, tmp_path, private_redis, voucherify)
    leaving = stack.worker("leaving", **PROCFILE_WORKER)
    sender = send(stack, "term")
    wait_until(lambda: taken_from_broker(private_redis, 3), timeout=30, what="the worker took every task")
    time.sleep(1.0)  # its first calls are on the wire now (checked below, on the fake's clock)

    sent, gone = platform_stop(leaving)
    assert gone - sent < HEROKU_KILL_AFTER
    wait_quiet(voucherify, seconds=1.0)  # calls cut off by a dying worker are answered by now
    on_wire = on_the_wire_at(voucherify, sent)
    assert on_wire, "the SIGTERM came before any call was on the wire: nothing was tested"
    # The calls on the wire finished and were recorded; nothing else was sent by the leaving worker.
    assert all(r["status"] == 200 for r in on_wire)
    taken_by_leaving = len(successes(voucherify))
    assert taken_by_leaving < EVENTS, "the leaving worker delivered everything: nothing was tested"
    # (A signal takes a moment to reach the worker's handler: calls it started meanwhile are fine.)
    late = [r for r in successes(voucherify) if r["time"] > sent + 0.5]
    assert late == [], f"{len(late)} calls started after the SIGTERM"

    voucherify.set_faults(latency_ms=0)
    stack.worker("fresh", **PROCFILE_WORKER)
    all_delivered(voucherify, sender, private_redis)
    twice = {k: len(v) for k, v in by_key(successes(voucherify)).items() if len(v) > 1}
    assert twice == {}, f"sent twice although nothing was cut off: {twice}"
    assert len(successes(voucherify)) == EVENTS


def test_sigterm_while_a_call_gets_503_and_the_next_attempt_times_out(
    tmp_path: Path, private_redis: str, stack_factory: list, voucherify: FakeVoucherify
) -> None:
    """One event: its first call answers 503 while its worker is stopping (the retry must be
    parked in Redis, not lost with the process), the next call runs into the read timeout while
    the second worker is stopping, and a third worker delivers it."""
    # Each script is used once, in order: a slow 503, then a 503 slower than the read timeout.
    voucherify.set_faults(path="/v1/events", statuses=[503], latency_ms=2500)
    voucherify.set_faults(path="/v1/events", statuses=[503], latency_ms=6000)
    stack = start(stack_factory, tmp_path, private_redis, voucherify, CONNECTOR_READ_TIMEOUT="3")
    sender = Sender(stack.web_url)
    stopped_at: list[float] = []
    for attempt_worker in ("first", "second"):
        worker = stack.worker(attempt_worker, **PROCFILE_WORKER)
        if attempt_worker == "first":
            assert sender.batch([track("one-event")]) == 200
        wait_until(
            # The only worker running took the event (the one before it is gone, its message
            # acknowledged once the retry was parked).
            lambda: taken_from_broker(private_redis, 1),
            timeout=30,
            what=f"the {attempt_worker} worker took the event",
        )
        time.sleep(1.0)  # the call is on the wire (2.5 s or 6 s long)
        sent, gone = platform_stop(worker)
        assert gone - sent < HEROKU_KILL_AFTER, attempt_worker
        stopped_at.append(sent)

    stack.worker("third", **PROCFILE_WORKER)
    all_delivered(voucherify, sender, private_redis, timeout=60)
    # In the order the calls reached the fake (the timed-out one is recorded when it ends).
    calls = sorted(voucherify.requests(path="/v1/events"), key=lambda r: r["time"])
    assert [r["status"] for r in calls] == [503, 503, 200], calls
    # Each of the first two calls was on the wire when its worker was told to stop.
    for call, sent in zip(calls[:2], stopped_at, strict=True):
        assert call["time"] <= sent <= call["time"] + call["duration_ms"] / 1000.0, (call, sent)


def test_calls_longer_than_the_grace_are_cut_off_and_sent_again_once(
    tmp_path: Path, private_redis: str, stack_factory: list, voucherify: FakeVoucherify
) -> None:
    """What the grace cannot wait for is the kill -9 case: the process exits, its messages come
    back after the visibility timeout, only the calls cut off are sent twice."""
    voucherify.set_faults(latency_ms=6000)
    stack = start(
        stack_factory,
        tmp_path,
        private_redis,
        voucherify,
        CONNECTOR_SHUTDOWN_GRACE_SECONDS="1",
        CONNECTOR_CLAIM_TTL_SECONDS="8",  # a cut-off call's claim (longer than one call here)
    )
    leaving = stack.worker("leaving", **PROCFILE_WORKER)
    sender = send(stack, "cut")
    wait_until(lambda: taken_from_broker(private_redis, 3), timeout=30, what="the worker took every task")
    time.sleep(1.0)
    sent, gone = platform_stop(leaving)
    assert gone - sent < 10, "the grace (1 s) was not kept"
    assert leaving.proc is not None and leaving.proc.returncode == 1
    assert "calls still on the wire after the grace period" in leaving.log()
    assert broker_state(private_redis)["unacked"] > 0, "the cut-off messages must stay unacknowledged"

    voucherify.set_faults(latency_ms=0)
    stack.worker("fresh", **PROCFILE_WORKER)
    all_delivered(voucherify, sender, private_redis)
    explained, unexplained = double_deliveries(voucherify, [(sent, gone)])
    assert unexplained == [], unexplained[:10]
    assert len(explained) <= 100  # at most the calls on the wire (the worker's send slots)


# ---------------------------------------------------------------------------------------------
# The other processes of the Procfile


def test_sigterm_to_the_web_while_clients_post_loses_no_accepted_event(
    tmp_path: Path, private_redis: str, stack_factory: list, voucherify: FakeVoucherify
) -> None:
    """gunicorn's graceful stop: requests being read or answered finish; a 200 means the events
    are in Redis, whatever comes after it."""
    stack = start(stack_factory, tmp_path, private_redis, voucherify)
    web = stack.procs[0]
    stack.worker("worker", **PROCFILE_WORKER)
    sender = Sender(stack.web_url)
    stop = threading.Event()

    def post_until_refused(prefix: str) -> None:
        for n in range(10_000):
            if (
                stop.is_set()
                or sender.batch([track(f"{prefix}-{n:05d}-{i}") for i in range(20)], timeout=30) != 200
            ):
                return

    clients = [threading.Thread(target=post_until_refused, args=(f"web{c}",)) for c in range(4)]
    for client in clients:
        client.start()
    wait_until(lambda: len(sender.accepted) >= 400, timeout=60, what="clients under way")
    sent, gone = platform_stop(web)
    stop.set()
    for client in clients:
        client.join(60)
    assert gone - sent < HEROKU_KILL_AFTER
    assert web.proc is not None and web.proc.returncode == 0, web.log()[-3000:]
    assert sender.refused, "the clients never met the stopped web: nothing was tested"
    # No 5xx: a request either completed (200) or found no server (a connection error).
    assert set(sender.statuses) <= {200, -1}, sorted(set(sender.statuses))
    all_delivered(voucherify, sender, private_redis, answers=(200, -1))


def test_sigterm_to_the_scheduler_loses_no_parked_work(
    tmp_path: Path, private_redis: str, stack_factory: list, voucherify: FakeVoucherify
) -> None:
    """The scheduler stops after its tick; what it had claimed but not published is due again
    when its lease ends, and the next scheduler publishes it."""
    voucherify.set_faults(path="/v1/events", statuses=[503] * 60)  # every event parked for retry
    stack = start(stack_factory, tmp_path, private_redis, voucherify, CONNECTOR_SCHEDULER_LEASE_SECONDS="3")
    stack.worker("worker", **PROCFILE_WORKER)
    sender = send(stack, "sched", count=60)
    wait_until(lambda: len(voucherify.requests(path="/v1/events")) >= 60, timeout=60, what="60 503s")
    scheduler = next(p for p in stack.procs if p.name == "scheduler")
    sent, gone = platform_stop(scheduler)
    assert gone - sent < 5, "the scheduler stops after its tick"
    assert scheduler.proc is not None and scheduler.proc.returncode == 0, scheduler.log()[-3000:]
    assert "scheduler stopped" in scheduler.log()
    stack.scheduler()
    all_delivered(voucherify, sender, private_redis, timeout=60)
    assert len(successes(voucherify)) == 60
