"""Duplicated and out-of-order input, end to end (SPEC 5: idempotency keys, stale updates).

- the same ``messageId`` ingested twice (a client retrying a request whose answer it lost):
  Voucherify gets one call;
- two identifies of one customer processed out of order (the older, by event ``timestamp``,
  arrives after the newer): the newer traits stay, the older is skipped as stale;
- identify-heavy traffic (merged and bulk upserts) sent again at once, grouped differently:
  every customer's upserts applied exactly once (``tests.support.identify_traffic``).

(A replayed Voucherify webhook giving one Segment event is ``tests/test_source_e2e.py``.)
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import make_stack
from tests.support.fakes import FakeVoucherify
from tests.support.faultkit import (
    FAST_ENV,
    Sender,
    by_key,
    calls,
    dead_letters,
    key_of,
    track,
    wait_quiet,
    write_connections,
)
from tests.support.identify_traffic import BULK_PATH, account, identify_heavy
from tests.support.processes import Stack, wait_until

pytestmark = pytest.mark.integration
pytest_plugins = ["tests.support.private_redis"]


@pytest.fixture
def voucherify(tmp_path: Path) -> Iterator[FakeVoucherify]:
    with FakeVoucherify(log_dir=tmp_path / "fakes") as fake:
        yield fake


@pytest.fixture
def stack(tmp_path: Path, private_redis: str, stack_factory: list, voucherify: FakeVoucherify) -> Stack:
    stack = make_stack(
        stack_factory, tmp_path, private_redis, write_connections(tmp_path, voucherify), **FAST_ENV
    )
    stack.web()
    stack.worker(concurrency=8)
    stack.scheduler()
    return stack


def identify(message_id: str, user: str, timestamp: str, email: str) -> dict[str, Any]:
    return {
        "type": "identify",
        "messageId": message_id,
        "userId": user,
        "timestamp": timestamp,
        "traits": {"email": email, "name": email.split("@")[0]},
    }


def upserts_of(fake: FakeVoucherify, user: str) -> list[dict[str, Any]]:
    return [r for r in calls(fake, "/v1/customers") if (r["body"] or {}).get("source_id") == user]


def test_same_message_id_twice_is_sent_once(
    stack: Stack, voucherify: FakeVoucherify, private_redis: str
) -> None:
    sender = Sender(stack.web_url)
    event = track("dup-1")
    assert sender.one(event).status_code == 200
    wait_until(lambda: calls(voucherify, "/v1/events"), timeout=30, what="the first delivery")
    # The client lost the answer and sends the same batch again; then once more, in a batch.
    assert sender.one(event).status_code == 200
    assert sender.batch([event, track("marker-1")]) == 200
    wait_until(lambda: key_of("marker-1") in by_key(calls(voucherify)), timeout=30, what="the marker")
    wait_quiet(voucherify, seconds=2)
    assert [r["status"] for r in by_key(calls(voucherify))[key_of("dup-1")]] == [200]
    sender.assert_no_server_errors()
    assert dead_letters(private_redis) == []


def test_older_identify_arriving_later_does_not_overwrite_the_newer(
    stack: Stack, voucherify: FakeVoucherify, private_redis: str
) -> None:
    sender = Sender(stack.web_url)
    # Past times: a time in the future is clamped to the receipt (issue 10), which orders by arrival.
    newer = identify("id-new", "u-stale", "2024-01-01T10:00:00.000Z", "new@example.com")
    older = identify("id-old", "u-stale", "2024-01-01T09:00:00.000Z", "old@example.com")
    assert sender.one(newer, "identify").status_code == 200
    wait_until(lambda: upserts_of(voucherify, "u-stale"), timeout=30, what="the newer identify")
    assert sender.one(older, "identify").status_code == 200
    # A marker for another customer, sent after: once it is delivered, the older one was handled.
    marker = identify("id-marker", "u-marker", "2024-01-01T09:00:00Z", "m@example.com")
    assert sender.one(marker, "identify").status_code == 200
    wait_until(lambda: upserts_of(voucherify, "u-marker"), timeout=30, what="the marker")
    wait_quiet(voucherify, seconds=2)

    assert [r["body"]["email"] for r in upserts_of(voucherify, "u-stale")] == ["new@example.com"]
    (customer,) = [c for c in voucherify.customers() if c.get("source_id") == "u-stale"]
    assert customer["email"] == "new@example.com"
    (worker,) = [p for p in stack.procs if p.name == "worker"]
    assert '"message_id":"id-old","action":"upsert_customer"' in worker.log()
    assert any('"id-old"' in line and '"reason":"stale"' in line for line in worker.log().splitlines())
    sender.assert_no_server_errors()
    assert dead_letters(private_redis) == []


def test_identify_heavy_traffic_sent_again_regrouped_applies_every_upsert_once(
    stack: Stack, voucherify: FakeVoucherify, private_redis: str
) -> None:
    """Merged and bulk upserts carry keys of their own; a duplicate grouped differently gets
    other merged keys, so only per-event idempotency keeps it from being applied twice."""
    voucherify.set_faults(latency_ms=30)
    traffic = identify_heavy("dup", customers=40)
    sender = Sender(stack.web_url)
    # Every event twice, the copies cut into other requests (a client that lost its answers and
    # re-batched, a proxy replaying), each copy sent right after the original covering the same
    # events -- so that both are in the workers at the same time; then every third original again.
    events = traffic.events
    originals = [(i, events[i : i + 20]) for i in range(0, len(events), 20)]
    copies = [(i, events[i : i + 7]) for i in range(0, len(events), 7)]
    for _start, batch in sorted(originals + copies, key=lambda pair: pair[0]):
        assert sender.batch(batch) == 200
    for _start, batch in originals[::3]:
        assert sender.batch(batch) == 200

    def settled() -> bool:
        return not any("never applied" in p for p in account(voucherify, traffic).problems)

    wait_until(settled, timeout=60, interval=0.5, what="every upsert applied")
    wait_quiet(voucherify, seconds=3)
    result = account(voucherify, traffic)  # no fault: nothing may be applied twice
    assert result.problems == [], result.problems[:20]
    assert result.doubles == []
    assert result.calls[BULK_PATH] > 0, result.summary()
    sender.assert_no_server_errors()
    assert dead_letters(private_redis) == []
