# ruff: noqa: F811 - pytest fixtures imported from tests.support.delivery
"""Voucherify -> Segment: outbox dedupe, batching within Segment's limits, flush outcomes."""

from __future__ import annotations

import base64
import dataclasses
import time
from typing import Any

import orjson
import pytest
import redis

from connector import backlog
from connector.contract import SOURCE
from connector.errors import MappingError, SkipEvent
from connector.keys import Keys
from tests.support.delivery import (  # noqa: F401 - fixtures
    FAST,
    SEG_URL,
    FakeTransport,
    client,
    connection,
    keys,
    redis_db_url,
    rt,
    transport,
)
from workers import mapped, pipeline
from workers.delivery.deadletters import DeadLetters
from workers.delivery.outbox import Outbox, sweep
from workers.outbound import OutboundRequest
from workers.runtime import Runtime
from workers.targets.segment import build_batch


def fake_map_webhook(payload: dict[str, Any], connection: Any) -> OutboundRequest:
    if payload.get("skip"):
        raise SkipEvent("not_customer_event")
    if payload.get("bad"):
        raise MappingError("no customer source_id")
    mid = f"vf-{payload['id']}"
    track = {
        "type": "track",
        "event": "Customer Rewarded",
        "userId": "u1",
        "messageId": mid,
        "properties": {"pad": payload.get("pad", "")},
    }
    return OutboundRequest("POST", "/v1/batch", track, mid, "segment_track", customer="u1", message_id=mid)


@pytest.fixture(autouse=True)
def _mapper(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(mapped, "map_webhook_payload", fake_map_webhook)


def webhook(rt: Runtime, event_id: str, **extra: Any) -> None:
    conn = rt.settings.connections[0]
    pipeline.process_voucherify_webhook(rt, conn, conn.id, {"id": event_id, **extra}, time.time())


def _raw(mid: str, size: int = 10) -> bytes:
    item = {"request": {"body": {"messageId": mid, "properties": {"pad": "x" * size}}}, "backlog": 1}
    return orjson.dumps(item)


# --- batching limits ----------------------------------------------------------------------------


def test_batch_respects_event_count() -> None:
    raws = [_raw(f"m{i}") for i in range(10)]
    batch = build_batch(raws, max_events=4, max_bytes=500_000, max_event_bytes=32_000)
    assert len(batch.items) == 4
    body = orjson.loads(batch.body)
    assert [m["messageId"] for m in body["batch"]] == ["m0", "m1", "m2", "m3"] and body["sentAt"].endswith(
        "Z"
    )


def test_batch_respects_total_bytes() -> None:
    raws = [_raw(f"m{i}", 20_000) for i in range(40)]
    batch = build_batch(raws, max_events=2500, max_bytes=500_000, max_event_bytes=32_000)
    assert 20 <= len(batch.items) < 25
    assert len(batch.body) <= 500_000


def test_batch_default_limits_2500_events() -> None:
    raws = [_raw(f"m{i}", 1) for i in range(3000)]
    batch = build_batch(raws, max_events=2500, max_bytes=500_000, max_event_bytes=32_000)
    assert len(batch.items) == 2500 and len(batch.body) <= 500_000


def test_oversized_event_at_head_is_isolated_and_elsewhere_ends_the_batch() -> None:
    head = build_batch(
        [_raw("big", 40_000), _raw("m1")], max_events=10, max_bytes=500_000, max_event_bytes=32_000
    )
    assert head.oversized_head is not None and head.oversized_head["request"]["body"]["messageId"] == "big"
    middle = build_batch(
        [_raw("m0"), _raw("big", 40_000), _raw("m2")],
        max_events=10,
        max_bytes=500_000,
        max_event_bytes=32_000,
    )
    assert [i["request"]["body"]["messageId"] for i in middle.items] == ["m0"]


# --- the webhook path ---------------------------------------------------------------------------


def test_webhook_is_sent_in_a_batch_with_basic_auth(rt: Runtime, transport: FakeTransport) -> None:
    webhook(rt, "evt_1")
    [call] = transport.calls
    assert call.url == SEG_URL + "/v1/batch"
    assert call.headers["Authorization"] == "Basic " + base64.b64encode(b"seg-write-key:").decode()
    assert [m["messageId"] for m in call.body["batch"]] == ["vf-evt_1"]
    assert Outbox(rt.redis, rt.keys, "acme").length() == 0


def test_duplicate_webhook_is_sent_once(rt: Runtime, transport: FakeTransport) -> None:
    webhook(rt, "evt_1")
    webhook(rt, "evt_1")  # Voucherify redelivery, or a replayed request
    assert len(transport.calls) == 1


def test_skip_and_mapping_error(rt: Runtime, transport: FakeTransport, keys: Keys) -> None:
    webhook(rt, "evt_1", skip=True)
    webhook(rt, "evt_2", bad=True)
    assert transport.calls == []
    [dead] = DeadLetters(rt.redis, keys).select()
    assert dead.reason == "mapping_error" and dead.direction == SOURCE and dead.payload["id"] == "evt_2"


def test_retryable_failure_keeps_items_for_a_later_flush(
    rt: Runtime, transport: FakeTransport, keys: Keys
) -> None:
    transport.reply((503, {"Retry-After": "30"}))
    webhook(rt, "evt_1")
    outbox = Outbox(rt.redis, keys, "acme")
    assert outbox.length() == 1
    state = outbox.state()
    assert float(state["next_at"]) >= time.time() + 29 and state["attempts"] == "1"
    webhook(rt, "evt_2")  # not due yet: appended, not sent
    assert len(transport.calls) == 1 and outbox.length() == 2
    assert sweep(rt.redis, keys) == []  # the sweep waits for next_at too
    outbox.set_state(next_at=0)
    assert sweep(rt.redis, keys) == [("acme", "segment.us")]
    assert sweep(rt.redis, keys) == []  # marked: concurrent schedulers publish one flush
    result = pipeline.flush_segment_outbox(rt, rt.settings.connections[0], "acme")
    assert result is not None and result.sent == 2
    assert [m["messageId"] for m in transport.calls[-1].body["batch"]] == ["vf-evt_1", "vf-evt_2"]
    assert outbox.length() == 0 and "next_at" not in outbox.state()


def test_permanent_failure_dead_letters_the_batch(rt: Runtime, transport: FakeTransport, keys: Keys) -> None:
    backlog.reserve(rt.redis, "acme", 1, 100, keys=keys)
    transport.reply((400, {}, '{"error": "bad"}'))
    webhook(rt, "evt_1")
    [dead] = DeadLetters(rt.redis, keys).select()
    assert dead.reason == "rejected" and dead.status == 400 and dead.request["message_id"] == "vf-evt_1"
    assert Outbox(rt.redis, keys, "acme").length() == 0
    assert backlog.current(rt.redis, "acme", keys=keys) == 0
    # Not delivered: the same event may come in again (redelivery, or replay with --remap).
    webhook(rt, "evt_1")
    assert len(transport.calls) == 2


def test_retry_window_dead_letters_old_items(rt: Runtime, transport: FakeTransport, keys: Keys) -> None:
    rt.tuning = dataclasses.replace(FAST, retry_window_override=0.0)
    transport.reply(500)
    webhook(rt, "evt_1")
    [dead] = DeadLetters(rt.redis, keys).select()
    assert dead.reason == "retry_window_exceeded" and dead.attempts == 1
    assert Outbox(rt.redis, keys, "acme").length() == 0


def test_one_flusher_at_a_time(rt: Runtime, transport: FakeTransport, keys: Keys) -> None:
    outbox = Outbox(rt.redis, keys, "acme")
    assert outbox.lock("other-flusher")
    webhook(rt, "evt_1")
    assert transport.calls == [] and outbox.length() == 1
    assert not outbox.trim("not-the-owner", 1)
    outbox.unlock("other-flusher")
    pipeline.flush_segment_outbox(rt, rt.settings.connections[0], "acme")
    assert len(transport.calls) == 1


def test_segment_egress_budget(
    rt: Runtime, transport: FakeTransport, keys: Keys, client: redis.Redis
) -> None:
    rt.tuning = dataclasses.replace(FAST, segment_max_events=1)
    conn = dataclasses.replace(
        rt.settings.connections[0],
        segment=dataclasses.replace(rt.settings.connections[0].segment, requests_per_second=2),  # type: ignore[arg-type]
    )
    for i in range(5):
        Outbox(client, keys, "acme").append_many(
            [{"request": {"body": {"messageId": f"m{i}"}}}], "segment.us"
        )
    result = pipeline.flush_segment_outbox(rt, conn, "acme")
    assert result is not None and result.sent == 2 and result.state == "waiting"
    assert Outbox(client, keys, "acme").length() == 3


def test_replayed_source_items_go_through_the_outbox(rt: Runtime, transport: FakeTransport) -> None:
    conn = rt.settings.connections[0]
    item = {"request": {"body": {"messageId": "vf-x"}, "idempotency_key": "vf-x"}, "backlog": 0}
    pipeline.process_deliveries(rt, conn, "acme", SOURCE, [item])
    assert [m["messageId"] for m in transport.calls[0].body["batch"]] == ["vf-x"]


def test_removed_connection_drops_its_outbox(rt: Runtime, keys: Keys, client: redis.Redis) -> None:
    Outbox(client, keys, "gone").append_many([{"request": {"body": {}}}], "segment.us")
    assert pipeline.flush_segment_outbox(rt, None, "gone") is None
    assert Outbox(client, keys, "gone").length() == 0
    assert sweep(client, keys) == []


# --- hardening: no loss between a dead letter and the trim; dedupe outlives the accepted age ---


def test_dead_letter_and_trim_are_one_step(
    rt: Runtime, transport: FakeTransport, keys: Keys, client: redis.Redis
) -> None:
    """A Redis error while dead-lettering leaves the item in the outbox (it was trimmed first
    before, and lost); a lost lock leaves both the outbox and the dead letters untouched."""
    outbox = Outbox(client, keys, "acme")
    transport.reply((400, {}, "bad"), (400, {}, "bad"))
    client.set(keys.dlq, "not a sorted set")  # every dead-letter write now fails inside Redis
    with pytest.raises(Exception, match="redis error"):  # the task is requeued (Celery Reject)
        webhook(rt, "evt_1")
    assert outbox.length() == 1, "the event was trimmed although its dead letter failed"
    client.delete(keys.dlq)
    outbox.set_state(next_at=0)  # the failed attempt left its backoff
    result = pipeline.flush_segment_outbox(rt, rt.settings.connections[0], "acme")
    assert result is not None and result.dead == 1
    assert outbox.length() == 0
    [dead] = DeadLetters(client, keys).select()
    assert dead.reason == "rejected" and dead.request["message_id"] == "vf-evt_1"
    # Lost lock: nothing written, nothing trimmed.
    outbox.append_many([{"request": {"body": {"messageId": "m9"}}}], "segment.us")
    store = DeadLetters(client, keys)
    assert not store.add_then_trim(
        [dataclasses.replace(dead, id="")], outbox.list_key, outbox.lock_key, "x", 1
    )
    assert outbox.length() == 1 and store.count() == 1


def test_dedupe_memory_outlives_the_accepted_webhook_age(
    rt: Runtime, transport: FakeTransport, keys: Keys
) -> None:
    """A replay at 30 h of an event the web still accepts (48 h) must be found a duplicate."""
    conn = rt.settings.connections[0]
    webhook(rt, "evt_1")
    ttl = rt.redis.ttl(keys.ledger("acme", "vf-evt_1"))
    window = conn.retry_window_seconds
    assert ttl > conn.voucherify.max_event_age_seconds + window, ttl
