"""A worker's memory is bounded by design (issue #19), with real processes: a gevent Celery worker
draining a backlog queued before it could keep up, against the fake Voucherify at 50 ms.

Without a bound, a worker with ``--concurrency`` C takes C messages and works on all their
events at once: each event decoded, mapped into items and requests, with trace records held
until its task ends (~14-24 KB an event).  ``CONNECTOR_WORKER_EVENTS`` bounds the events in work
per process (workers.inwork): the other messages wait before they start, unacknowledged, and
every event is still delivered once.

Measured from outside, while it drains 4,000 events in 40 messages of 100:
- the events in work at once, from each event's trace: from its mapping (the worker took it) to
  its outcome (delivered).  Before the bound: all 4,000 mapped at once (measured 4,000); with a
  bound of 400, never more than 400;
- the worker's peak RSS (``VmHWM``) over its RSS before the first message: before, +105 MB
  (+59 MB with the trace records right-sized); with the bound, +38 MB (the 36 messages waiting,
  as Celery decoded them, ~0.4 MB each, and the process's buffers for 100 calls in flight).
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import pytest
import redis

from app.ingest import ingest_body
from connector import backlog, tracereader
from connector.celery_app import create_celery
from connector.contract import TASK_SEGMENT_EVENTS
from connector.keys import Keys
from tests.conftest import make_stack
from tests.support.fakes import FakeVoucherify
from tests.support.faultkit import CONNECTION_ID, delivered_ids, write_connections
from tests.support.processes import wait_until

pytestmark = pytest.mark.integration

MESSAGES = 40
PER_MESSAGE = 100
BOUND = 400
# Growth of the worker's peak RSS allowed while it drains the backlog (see the module doc).
MAX_GROWTH_MB = 50

CONTEXT = {  # what analytics.js and the server libraries send with every event
    "library": {"name": "analytics-python", "version": "2.3.2"},
    "ip": "203.0.113.7",
    "userAgent": "Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/126.0",
    "locale": "en-US",
    "page": {"path": "/checkout", "url": "https://shop.example.com/checkout", "title": "Checkout"},
}


def event(n: int) -> dict[str, Any]:
    return {
        "type": "track",
        "userId": f"mem-user-{n}",
        "event": "Order Completed",
        "messageId": f"mem-{n:05d}",
        "properties": {
            "order_id": f"o-{n}",
            "total": 42.5,
            "currency": "EUR",
            "products": [{"product_id": "p-1", "sku": "SKU-1", "price": 19.95, "quantity": 2}],
        },
        "context": CONTEXT,
    }


def status_mb(pid: int, field: str) -> float:
    with open(f"/proc/{pid}/status") as fh:
        for line in fh:
            if line.startswith(field + ":"):
                return int(line.split()[1]) / 1024
    raise AssertionError(f"no {field} for {pid}")


def most_in_work_at_once(redis_url: str, total: int) -> int:
    """From the traces: the most events that were mapped and not yet finished at one moment."""
    client = redis.Redis.from_url(redis_url)
    changes: list[tuple[float, int]] = []
    for n in range(total):
        records = tracereader.read(client, Keys(), CONNECTION_ID, f"mem-{n:05d}")
        taken = [r["t"] for r in records if r.get("kind") == "mapping"]
        done = [r["t"] for r in records if r.get("kind") == "outcome"]
        assert taken and done, (n, records)
        changes += [(min(taken), 1), (max(done), -1)]
    most = current = 0
    for _, change in sorted(changes):  # at one instant an end counts before a start
        current += change
        most = max(most, current)
    return most


def queue_backlog(redis_url: str) -> None:
    """The messages the web would have queued (each event as the worker sees it), all at once."""
    client = redis.Redis.from_url(redis_url)
    celery = create_celery(redis_url)
    for start in range(0, MESSAGES * PER_MESSAGE, PER_MESSAGE):
        batch = {"batch": [event(n) for n in range(start, start + PER_MESSAGE)]}
        accepted = ingest_body(batch, "batch").expanded()
        backlog.reserve(client, CONNECTION_ID, len(accepted), 10**9)
        celery.send_task(TASK_SEGMENT_EVENTS, args=[CONNECTION_ID, accepted], queue="voucherify.eu")


def test_a_worker_draining_a_backlog_holds_a_bounded_number_of_events_in_memory(
    tmp_path: Path, redis_url: str, stack_factory: list
) -> None:
    with FakeVoucherify(log_dir=tmp_path / "fakes") as fake:
        fake.set_faults(latency_ms=50)
        stack = make_stack(stack_factory, tmp_path, redis_url, write_connections(tmp_path, fake))
        worker = stack.worker(concurrency=MESSAGES, CONNECTOR_WORKER_EVENTS=str(BOUND))
        before = status_mb(worker.pid, "VmHWM")  # imports and start-up: the peak so far

        queue_backlog(redis_url)
        total = MESSAGES * PER_MESSAGE
        wait_until(
            lambda: len(delivered_ids(fake, "/v1/events")) >= total or not worker.alive(),
            timeout=240,
            interval=1.0,
            what=f"{total} custom events delivered",
        )
        peak = status_mb(worker.pid, "VmHWM")
        # The backlog is released when a task ends, its trace records written just after.
        client = redis.Redis.from_url(redis_url)
        wait_until(lambda: backlog.current(client, CONNECTION_ID) <= 0, timeout=30, what="backlog released")
        time.sleep(1.0)
        print(f"worker RSS before {before:.0f} MB, peak while draining {peak:.0f} MB (+{peak - before:.0f})")

        # Nothing lost and nothing twice: each event's custom event exactly once.
        assert len(delivered_ids(fake, "/v1/events")) == total, stack.logs()
        sends = [r for r in fake.requests("/v1/events") if 200 <= r["status"] < 300]
        assert len(sends) == total
        in_work = most_in_work_at_once(redis_url, total)
        print(f"events in work at once: at most {in_work} (bound {BOUND})")
        assert in_work <= BOUND
        assert peak - before < MAX_GROWTH_MB, (before, peak)
