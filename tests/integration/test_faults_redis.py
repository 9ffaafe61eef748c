"""Redis restarted mid-stream, with AOF on (SPEC 5: "broker reconnects are survived").

A redis-server of the test's own (``appendonly yes``, ``appendfsync everysec``) is the broker and
state store of the whole stack: gunicorn, a gevent Celery worker and the scheduler.  While events
stream in, Redis is shut down (``SHUTDOWN`` writes the AOF) and started again on the same port and
directory.  Meanwhile the ingest answers 503 (never 500, never 200 for work it could not store);
everything it answered 200 for is delivered, once, after Redis is back: queued messages and
kombu's unacknowledged ones come back from the AOF, in-flight ledger claims expire, and the
workers, the scheduler and the web process reconnect by themselves.
"""

from __future__ import annotations

import contextlib
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis

from ops.embedded import free_port, start_redis
from tests.conftest import make_stack
from tests.support.fakes import FakeVoucherify
from tests.support.faultkit import (
    FAST_ENV,
    Sender,
    assert_all_accounted,
    broker_state,
    calls,
    caught_up,
    dead_letters,
    delivered_ids,
    double_deliveries,
    track,
    wait_quiet,
    write_connections,
)
from tests.support.identify_traffic import account, check_identify_traffic, send_identify_traffic
from tests.support.processes import Stack, wait_until

pytestmark = pytest.mark.integration

BATCHES = 80
BATCH = 20
# The first batches arrive at once: the worker has a backlog, so Redis goes away while calls are
# on the wire and tasks are half done -- the case the ledger and the requeue exist for.
BURST = 30
OUTAGE_SECONDS = 3.0
LATENCY_MS = 40
# One worker process with this many send slots: no more calls than this can be on the wire when
# Redis goes away, so no more than this many can be delivered without being recorded.
INFLIGHT = 16
ENV = {**FAST_ENV, "CONNECTOR_WORKER_INFLIGHT": str(INFLIGHT)}


@pytest.fixture
def voucherify(tmp_path: Path) -> Iterator[FakeVoucherify]:
    with FakeVoucherify(log_dir=tmp_path / "fakes") as fake:
        fake.set_faults(latency_ms=LATENCY_MS)
        yield fake


class AofRedis:
    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self.port = free_port()
        self.proc: subprocess.Popen[bytes] | None = None
        self.url = ""

    def start(self) -> None:
        self.proc, self.url = start_redis(self.directory, self.port, appendonly=True)

    def shutdown(self) -> None:
        """``SHUTDOWN``: Redis fsyncs the AOF and exits."""
        assert self.proc is not None
        client = redis.Redis.from_url(self.url)
        with contextlib.suppress(redis.ConnectionError):
            client.shutdown()
        self.proc.wait(15)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(15)


def aof_stack(
    tmp_path: Path,
    stack_factory: list,
    voucherify: FakeVoucherify,
    server: AofRedis,
    web_workers: int,
    concurrency: int = 8,
) -> Stack:
    """web, one worker (8 tasks, ``INFLIGHT`` send slots) and the scheduler on ``server``."""
    stack = make_stack(stack_factory, tmp_path, server.url, write_connections(tmp_path, voucherify), **ENV)
    stack.web(workers=web_workers)
    stack.worker("worker", concurrency=concurrency)
    stack.scheduler()
    return stack


def test_redis_restart_with_aof_mid_stream(
    tmp_path: Path, stack_factory: list, voucherify: FakeVoucherify
) -> None:
    server = AofRedis(tmp_path / "redis")
    server.start()
    try:
        stack = aof_stack(tmp_path, stack_factory, voucherify, server, web_workers=2)
        sender = Sender(stack.web_url)

        def stream() -> None:
            for b in range(BATCHES):
                sender.batch([track(f"aof-{b:03d}-{i:02d}") for i in range(BATCH)], timeout=20)
                if b >= BURST:
                    time.sleep(0.1)

        thread = threading.Thread(target=stream)
        thread.start()
        wait_until(lambda: len(delivered_ids(voucherify)) >= 200, timeout=60, what="the stream under way")
        down_at = time.time()
        backlog_at_fault = len(set(sender.accepted) - delivered_ids(voucherify))
        server.shutdown()
        time.sleep(OUTAGE_SECONDS)
        server.start()
        up_at = caught_up(voucherify)  # the fake's clock: what was sent before is in
        thread.join(120)
        assert not thread.is_alive()

        # The outage was seen at the door: some requests refused with 503, none answered 500.
        sender.assert_no_server_errors(allowed=(200, 503))
        assert 503 in sender.statuses
        assert len(sender.accepted) >= BATCH * 10
        try:
            wait_until(lambda: delivered_ids(voucherify) >= set(sender.accepted), timeout=120, interval=0.5)
        except AssertionError:
            missing = set(sender.accepted) - delivered_ids(voucherify)
            raise AssertionError(f"{len(missing)} not delivered; redis: {broker_state(server.url)}") from None
        wait_quiet(voucherify, seconds=float(FAST_ENV["CONNECTOR_VISIBILITY_TIMEOUT"]) + 2)
        assert_all_accounted(voucherify, server.url, sender.accepted)
        assert dead_letters(server.url) == []
        # The outage struck work in progress, or it would prove nothing.
        assert backlog_at_fault > 0
        on_wire = [
            r for r in calls(voucherify) if r["time"] <= down_at <= r["time"] + r["duration_ms"] / 1000 + 0.25
        ]
        assert on_wire, "no call was on the wire when Redis went away"
        explained, unexplained = double_deliveries(voucherify, [(down_at, up_at)])
        assert unexplained == [], f"delivered twice, not explained by the outage: {unexplained[:10]}"
        assert len(explained) <= INFLIGHT, explained
        print(f"{len(sender.accepted)} accepted, {len(sender.refused)} refused, re-sent: {explained}")
    finally:
        server.stop()


def test_redis_restart_during_identify_heavy_traffic_applies_every_upsert_once(
    tmp_path: Path, stack_factory: list, voucherify: FakeVoucherify
) -> None:
    """Merged and bulk upserts cut by the outage: every customer's upserts applied exactly once
    (bar calls on the wire when Redis went), counted per customer from what the fake received
    (``tests.support.identify_traffic``), and every final state right."""
    voucherify.set_faults(latency_ms=150)
    server = AofRedis(tmp_path / "redis")
    server.start()
    try:
        stack = aof_stack(tmp_path, stack_factory, voucherify, server, web_workers=1)
        traffic, sender = send_identify_traffic(stack.web_url, voucherify, "aof")
        down_at = time.time()
        assert account(voucherify, traffic).problems, "the outage came too late to test anything"
        server.shutdown()
        time.sleep(OUTAGE_SECONDS)
        server.start()
        up_at = caught_up(voucherify)  # the fake's clock: what was sent before is in
        check_identify_traffic(voucherify, server.url, sender, traffic, [(down_at, up_at)], INFLIGHT)
    finally:
        server.stop()


def test_worker_resumes_after_every_task_slot_failed_to_requeue_during_the_outage(
    tmp_path: Path, stack_factory: list, voucherify: FakeVoucherify
) -> None:
    """The flaky case of the identify test above, made certain.  A worker whose every task slot is
    busy has no BRPOP out, so it does not see Redis go away; its tasks then fail on Redis and
    reject (requeue) their messages while Redis is still down, and each failed reject used to
    keep its slot taken for good -- a worker with no slot left never asked for work again, and
    what it had taken came back to the queue (the visibility sweep) for nobody."""
    voucherify.set_faults(latency_ms=2500)  # the next two tasks are mid-call when Redis goes
    server = AofRedis(tmp_path / "redis")
    server.start()
    try:
        stack = aof_stack(tmp_path, stack_factory, voucherify, server, web_workers=1, concurrency=2)
        sender = Sender(stack.web_url)
        for n in range(12):  # one message each: more than the worker's two slots
            assert sender.batch([track(f"slot-{n:02d}")]) == 200

        def both_slots_busy_again() -> bool:
            # Two messages taken after the first two calls ended (kombu's unacked index is scored
            # with the time a message was taken): no credit left, no BRPOP out.
            done = calls(voucherify)
            if len(done) < 2:
                return False
            ended = max(r["time"] + r["duration_ms"] / 1000 for r in done)
            taken = redis.Redis.from_url(server.url).zrange("unacked_index", 0, -1, withscores=True)
            return len([tag for tag, at in taken if at > ended]) >= 2

        wait_until(both_slots_busy_again, timeout=60, interval=0.02, what="the next two tasks taken")
        worker_log = next(p for p in stack.procs if p.name == "worker").log_path

        def failed_acks() -> int:
            text = worker_log.read_text(errors="replace")
            return text.count("Couldn't reject") + text.count("Couldn't ack")

        server.shutdown()
        # Down until both tasks have given up on Redis (redis-py's retries, the requeue pause) and
        # their rejects (or acks) have failed: how long that takes varies, so it is watched for.
        wait_until(lambda: failed_acks() >= 2, timeout=60, interval=0.2, what="both slots' acks failing")
        server.start()
        try:
            wait_until(lambda: delivered_ids(voucherify) >= set(sender.accepted), timeout=90, interval=0.5)
        except AssertionError:
            missing = set(sender.accepted) - delivered_ids(voucherify)
            raise AssertionError(
                f"{len(missing)} not delivered, {failed_acks()} failed acks; redis: {broker_state(server.url)}"
            ) from None
        assert dead_letters(server.url) == []
    finally:
        server.stop()
