# ruff: noqa: F811 - pytest fixtures imported from tests.support.delivery
"""The Segment -> Voucherify pipeline against real Redis and a scripted fake transport."""

from __future__ import annotations

import dataclasses
import time
from typing import Any

import pytest
import redis

from connector import backlog, quotas
from connector.contract import DESTINATION
from connector.keys import Keys
from tests.support.delivery import (  # noqa: F401 - fixtures
    FAST,
    VF_URL,
    FakeTransport,
    client,
    connection,
    keys,
    make_connection,
    redis_db_url,
    rt,
    sent_ids,
    simple_mapper,
    transport,
)
from workers import mapped, pipeline
from workers.delivery import leases, suppression
from workers.delivery.deadletters import DeadLetters
from workers.delivery.store import DelayedStore, Parked
from workers.delivery.transport import TransportFailure
from workers.runtime import Runtime, context_for


@pytest.fixture(autouse=True)
def _mapper(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(mapped, "map_event", simple_mapper)


def ev(mid: str, user: str = "u1", **extra: Any) -> dict[str, Any]:
    return {"type": "track", "event": "E", "messageId": mid, "userId": user, **extra}


def parked(rt: Runtime) -> list[Parked]:
    store = DelayedStore(rt.redis, rt.keys)
    return store.claim_due(now=time.time() + 10**7, limit=1000, lease=1)


def run(rt: Runtime, events: list[dict[str, Any]]) -> None:
    conn = rt.settings.connections[0]
    pipeline.process_segment_events(rt, conn, conn.id, events)


def test_delivers_with_request_and_auth_headers(rt: Runtime, transport: FakeTransport) -> None:
    run(rt, [ev("m1")])
    [call] = transport.calls
    assert call.url == VF_URL + "/v1/events"
    assert call.headers["X-App-Id"] == "app-id-1" and call.headers["X-App-Token"] == "secret-key-1"
    assert call.headers["Idempotency-Key"] == "acme:v:m1:add_custom_event"
    assert call.headers["Content-Type"] == "application/json"
    assert parked(rt) == []


def test_redelivered_batch_is_not_sent_twice(rt: Runtime, transport: FakeTransport) -> None:
    run(rt, [ev("m1"), ev("m2", "u2")])
    run(rt, [ev("m1"), ev("m2", "u2")])  # a worker died after sending, before acking
    assert sorted(sent_ids(transport)) == ["m1", "m2"]


def test_skip_and_mapping_error(rt: Runtime, transport: FakeTransport, keys: Keys) -> None:
    run(rt, [ev("m1", skip="track_disabled"), ev("m2", bad=True)])
    assert transport.calls == []
    [dead] = DeadLetters(rt.redis, keys).select()
    assert dead.reason == "mapping_error" and "source_id" in dead.error
    assert dead.payload["messageId"] == "m2" and dead.request is None


def test_retryable_failure_is_parked_with_history_not_slept_on(rt: Runtime, transport: FakeTransport) -> None:
    transport.reply(503)
    started = time.monotonic()
    run(rt, [ev("m1")])
    assert time.monotonic() - started < 1
    [entry] = parked(rt)
    assert entry.direction == DESTINATION and entry.queue == "voucherify.eu"
    item = entry.items[0]
    assert item["attempts"] == 1 and item["history"][0]["status"] == 503
    assert entry.due >= time.time() + FAST.retry_base - 0.5
    # Back from the store, it goes through the same path and lands once.
    pipeline.process_deliveries(rt, rt.settings.connections[0], "acme", entry.direction, entry.items)
    assert sent_ids(transport) == ["m1", "m1"]
    assert parked(rt) == []


def test_retry_after_sets_the_floor(rt: Runtime, transport: FakeTransport) -> None:
    transport.reply((429, {"Retry-After": "120"}))
    run(rt, [ev("m1")])
    [entry] = parked(rt)
    assert entry.due >= time.time() + 118


def test_x_rate_limit_retry_sets_the_floor_and_pauses_the_connection(
    rt: Runtime, transport: FakeTransport
) -> None:
    transport.reply((429, {"X-Rate-Limit-Retry": str(int(time.time()) + 90)}))
    run(rt, [ev("m1")])
    run(rt, [ev("m2", "u2")])  # paused: parked without an attempt
    entries = sorted(parked(rt), key=lambda e: e.items[0]["request"]["message_id"])
    assert entries[0].due >= time.time() + 85
    assert entries[1].items[0]["attempts"] == 0 and entries[1].due >= time.time() + 80
    assert sent_ids(transport) == ["m1"]


def test_permanent_failure_dead_letters_at_once(rt: Runtime, transport: FakeTransport, keys: Keys) -> None:
    transport.reply((422, {}, '{"code": 422, "message": "bad email"}'))
    run(rt, [ev("m1")])
    [dead] = DeadLetters(rt.redis, keys).select()
    assert dead.reason == "rejected" and dead.status == 422
    assert "bad email" in dead.response_excerpt
    assert dead.request is not None and dead.request["idempotency_key"] == "acme:v:m1:add_custom_event"
    assert dead.payload["messageId"] == "m1" and dead.attempts == 1 and len(dead.history) == 1
    assert parked(rt) == []


def test_retry_window_exhausted_dead_letters(rt: Runtime, transport: FakeTransport, keys: Keys) -> None:
    rt.tuning = dataclasses.replace(FAST, retry_window_override=1.0)
    transport.reply(TransportFailure("ConnectTimeout", retryable=True))
    run(rt, [ev("m1")])
    [dead] = DeadLetters(rt.redis, keys).select()
    assert dead.reason == "retry_window_exceeded" and "ConnectTimeout" in dead.error


class FailOnce(FakeTransport):
    def __init__(self, victim: str) -> None:
        super().__init__()
        self.victim = victim

    def send(self, method: str, url: str, headers: dict[str, str], body: bytes | None, timeout: Any) -> Any:
        result = super().send(method, url, headers, body, timeout)
        if self.calls[-1].body["n"] == self.victim:
            self.victim = ""
            return dataclasses.replace(result, status=503)
        return result


def test_per_customer_order_is_kept_when_one_fails(rt: Runtime) -> None:
    transport = rt.transport = FailOnce("a2")
    run(rt, [ev("a1", "A"), ev("a2", "A"), ev("b1", "B"), ev("a3", "A")])
    # a2 failed: a3 must not overtake it.  B is independent.
    assert sorted(sent_ids(transport)) == ["a1", "a2", "b1"]
    [entry] = parked(rt)
    assert [i["request"]["message_id"] for i in entry.items] == ["a2", "a3"]
    assert entry.items[1]["attempts"] == 0
    transport.calls.clear()
    pipeline.process_deliveries(rt, rt.settings.connections[0], "acme", DESTINATION, entry.items)
    assert sent_ids(transport) == ["a2", "a3"]


def test_stale_identify_is_not_sent(rt: Runtime, transport: FakeTransport) -> None:
    newer = {"type": "identify", "messageId": "i2", "userId": "u1", "timestamp": "2024-05-01T10:00:00Z"}
    older = {"type": "identify", "messageId": "i1", "userId": "u1", "timestamp": "2024-05-01T09:00:00Z"}
    other = {"type": "identify", "messageId": "i3", "userId": "u2", "timestamp": "2024-05-01T09:00:00Z"}
    run(rt, [newer])
    run(rt, [older, other])
    assert sent_ids(transport) == ["i2", "i3"]


def test_rate_limit_parks_without_counting_an_attempt(
    rt: Runtime, transport: FakeTransport, client: redis.Redis
) -> None:
    conn = make_connection(rate=2)
    pipeline.process_segment_events(rt, conn, conn.id, [ev(f"m{i}", f"u{i}") for i in range(5)])
    assert len(transport.calls) == 2
    entries = parked(rt)
    items = [i for e in entries for i in e.items]
    assert len(items) == 3 and all(i["attempts"] == 0 for i in items)
    # Due when the budget can next grant (its 2 calls leave the window in 60 s), and none later:
    # spreading them at 60 s / 2 per slot parked the last past that window's end (SPEC 13: no
    # parking slot outlives its window -- such slots drifted minutes and hours ahead).  A grant
    # leaves the window once the granule it was counted in has: counted up to a lease plus the
    # count-ahead after it was taken (workers.delivery.leases), the granule a 30th of the window.
    now = time.time()
    latest = 60 + leases.LEASE_SECONDS + leases.COUNT_AHEAD_SECONDS + 60 / quotas.SUBWINDOWS
    assert all(now + 55 <= e.due <= now + latest for e in entries), [e.due - now for e in entries]


def test_time_budget_parks_the_rest_for_another_task(rt: Runtime, transport: FakeTransport) -> None:
    rt.tuning = dataclasses.replace(FAST, task_budget=0.0)
    run(rt, [ev("m1"), ev("m2", "u2")])
    assert transport.calls == []
    items = [i for e in parked(rt) for i in e.items]
    assert len(items) == 2 and all(i["attempts"] == 0 for i in items)


def test_busy_key_parks_until_the_claim_expires(rt: Runtime, transport: FakeTransport, keys: Keys) -> None:
    rt.redis.set(keys.ledger("acme", "acme:v:m1:add_custom_event"), "inflight:other", px=5000)
    run(rt, [ev("m1")])
    assert transport.calls == []
    [entry] = parked(rt)
    assert time.time() + 4 < entry.due <= time.time() + 5.2


def test_backlog_units_released_as_events_finish(rt: Runtime, transport: FakeTransport, keys: Keys) -> None:
    assert backlog.reserve(rt.redis, "acme", 4, 100, keys=keys)
    transport.reply(200, 503, 400)
    run(rt, [ev("m1", "u1"), ev("m2", "u2"), ev("m3", "u3"), ev("m4", "u4", skip="filtered")])
    # delivered, dead-lettered and skipped are finished; the parked retry still holds its unit.
    assert backlog.current(rt.redis, "acme", keys=keys) == 1


def test_unknown_connection_is_dropped(rt: Runtime, transport: FakeTransport, keys: Keys) -> None:
    backlog.reserve(rt.redis, "gone", 2, 100, keys=keys)
    pipeline.process_segment_events(rt, None, "gone", [ev("m1"), ev("m2")])
    assert transport.calls == []
    assert backlog.current(rt.redis, "gone", keys=keys) == 0


def test_a_bug_in_one_event_dead_letters_only_that_event(
    rt: Runtime, transport: FakeTransport, keys: Keys, monkeypatch: pytest.MonkeyPatch
) -> None:
    def flaky(event: dict[str, Any], conn: Any) -> Any:
        if event["messageId"] == "boom":
            raise KeyError("userId")
        return simple_mapper(event, conn)

    monkeypatch.setattr(mapped, "map_event", flaky)
    run(rt, [ev("boom"), ev("m2", "u2")])
    assert sent_ids(transport) == ["m2"]
    [dead] = DeadLetters(rt.redis, keys).select()
    assert dead.reason == "internal_error"


def test_redis_failure_requeues_the_task(rt: Runtime, monkeypatch: pytest.MonkeyPatch) -> None:
    from celery.exceptions import Reject

    rt.redis = redis.Redis(host="127.0.0.1", port=1, socket_connect_timeout=0.2)
    monkeypatch.setattr(pipeline, "REQUEUE_PAUSE_SECONDS", 0.0)
    with pytest.raises(Reject) as rejected:
        run(rt, [ev("m1")])
    # Requeued, not dropped: Reject(requeue=False) would discard the message and lose the batch.
    assert rejected.value.requeue is True


def test_many_customers_are_delivered_concurrently(rt: Runtime, transport: FakeTransport) -> None:
    transport.delay = 0.1
    started = time.monotonic()
    run(rt, [ev(f"m{i}", f"u{i}") for i in range(16)])
    assert len(transport.calls) == 16
    assert time.monotonic() - started < 1.0  # 16 x 100 ms sequentially would be 1.6 s


REAL_MAPPER = mapped.map_event


def test_a_failing_subscription_among_several_is_dead_lettered(
    rt: Runtime, transport: FakeTransport, keys: Keys, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Two subscriptions match; one maps, one cannot: the one that maps is delivered, the one
    that fails is dead-lettered (it used to vanish), and the backlog is released once."""
    from connector.config import DestinationSettings

    monkeypatch.setattr(mapped, "map_event", REAL_MAPPER)
    orders = {
        "name": "Orders",
        "trigger": 'type = "track" and event = "Order Completed"',
        "action": "add_custom_event",
        "fields": {"event": "order_completed"},
    }
    broken = {
        "name": "Order owner",
        "trigger": 'type = "track" and event = "Order Completed"',
        "action": "upsert_customer",
        "fields": {"source_id": {"@path": "$.properties.owner_id"}},  # absent in the event
    }
    conn = dataclasses.replace(
        rt.settings.connections[0], destination=DestinationSettings(mappings=(orders, broken))
    )
    assert backlog.reserve(rt.redis, conn.id, 1, 100, keys=keys)
    event = ev("m-partial", event="Order Completed", timestamp="2024-05-01T12:00:00.000Z")
    pipeline.process_segment_events(rt, conn, conn.id, [event])
    assert [c.url for c in transport.calls] == [VF_URL + "/v1/events"]
    [dead] = DeadLetters(rt.redis, keys).select()
    assert dead.reason == "mapping_error" and "Order owner" in dead.error
    assert dead.payload["messageId"] == "m-partial" and dead.request is None
    assert backlog.current(rt.redis, conn.id, keys=keys) == 0


def test_suppression_is_read_once_per_run_and_seen_within_a_second(
    rt: Runtime, transport: FakeTransport, keys: Keys, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Redis counts commands: a task's items are checked against the suppressed set in one
    SMISMEMBER, not one per call; what a task read is trusted a second, then read again."""
    conn = rt.settings.connections[0]
    rt.redis.sadd(keys.suppressed(conn.id), "u3")

    def smismember() -> int:
        stats = rt.redis.info("commandstats").get("cmdstat_smismember") or {}
        return int(stats.get("calls", 0))

    before = smismember()
    run(rt, [ev(f"m{n}", f"u{n}") for n in range(20)])
    assert smismember() - before == 1
    assert sorted(sent_ids(transport)) == sorted(f"m{n}" for n in range(20) if n != 3)
    # Within a task: a regulation made after the read is seen once the second is over.
    ctx = context_for(rt, conn, DESTINATION)
    clock = [1000.0]
    monkeypatch.setattr(suppression.time, "monotonic", lambda: clock[0])
    items: list[Any] = [{"request": {"customer": c}} for c in ("u1", "u2", "u4")]
    suppression.prefetch(ctx, items)
    rt.redis.sadd(keys.suppressed(conn.id), "u4")
    clock[0] += suppression.FRESH_SECONDS / 2
    assert suppression._known(ctx, ["u4", "u3"]) == {"u3"}  # u3 unread so far: read now
    clock[0] += suppression.FRESH_SECONDS
    assert suppression._known(ctx, ["u1", "u4"]) == {"u4"}


def test_a_tasks_suppression_refresh_is_one_read_while_its_other_calls_trust_what_is_known(
    rt: Runtime, keys: Keys, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Once the second is over, the first call reads every subject the task knows again; calls
    made while that read is out take what is known (read within the second before), and read
    only subjects new to the task -- not all of them again, each."""
    import threading

    conn = rt.settings.connections[0]
    rt.redis.sadd(keys.suppressed(conn.id), "u2")
    ctx = context_for(rt, conn, DESTINATION)
    clock = [1000.0]
    monkeypatch.setattr(suppression.time, "monotonic", lambda: clock[0])
    suppression.prefetch(ctx, [{"request": {"customer": c}} for c in ("u1", "u2", "u3")])
    clock[0] += suppression.FRESH_SECONDS * 2
    real = suppression.regulations.suppressed_among
    asked: list[set[str]] = []
    out, go = threading.Event(), threading.Event()

    def slow(client: Any, k: Keys, cid: str, subjects: Any) -> set[str]:
        asked.append(set(subjects))
        if len(asked) == 1:  # the refresh: out on the wire until the other call is done
            out.set()
            go.wait(5)
        return real(client, k, cid, subjects)

    monkeypatch.setattr(suppression.regulations, "suppressed_among", slow)
    refresh = threading.Thread(target=lambda: suppression._known(ctx, ["u1"]))
    refresh.start()
    assert out.wait(5)
    assert suppression._known(ctx, ["u2", "u9"]) == {"u2"}  # u2 as known, u9 read alone
    go.set()
    refresh.join(5)
    assert asked == [{"u1", "u2", "u3"}, {"u9"}]
