# ruff: noqa: F811 - pytest fixtures imported from tests.support.delivery
"""Coalescing of customer upserts: the pure plan, and the ledger/stale semantics in the pipeline."""

from __future__ import annotations

import time
from typing import Any

import pytest

from connector import backlog
from connector.config import Connection
from connector.keys import Keys
from tests.support.delivery import (  # noqa: F401 - fixtures
    FakeTransport,
    client,
    keys,
    make_connection,
    redis_db_url,
    rt,
    transport,
)
from workers import mapped, pipeline
from workers.delivery.engine import deliver_one
from workers.delivery.ledger import Ledger
from workers.delivery.stale import StaleGuard, event_time_ms
from workers.outbound import OutboundRequest
from workers.runtime import Runtime
from workers.targets.voucherify_coalesce import BULK_PATH, coalesce, merge_bodies


@pytest.fixture
def connection() -> Connection:
    # The bulk path needs a bulk budget (a plan without one merges but never bulks).
    return make_connection(bulk=1000)


def upsert(mid: str, customer: str, t: str = "2024-05-01T10:00:00.000Z", **fields: Any) -> OutboundRequest:
    key = f"acme:v:{mid}:upsert_customer"
    return OutboundRequest(
        method="POST",
        path="/v1/customers",
        body={"source_id": customer, **fields},
        idempotency_key=key,
        action="upsert_customer",
        headers={"Idempotency-Key": key, "X-Voucherify-Channel": "c"},
        customer=customer,
        event_time=t,
        message_id=mid,
    )


def group(mid: str, customer: str, gid: str) -> OutboundRequest:
    key = f"acme:v:{mid}:assign_group"
    return OutboundRequest(
        method="POST",
        path="/v1/customers",
        body={"source_id": customer, "metadata": {"segment_group_id": gid}},
        idempotency_key=key,
        action="assign_group",
        headers={"Idempotency-Key": key},
        customer=customer,
        event_time="2024-05-01T10:00:00.000Z",
        message_id=mid,
    )


def event(mid: str, customer: str) -> OutboundRequest:
    key = f"acme:v:{mid}:add_custom_event"
    return OutboundRequest(
        method="POST",
        path="/v1/events",
        body={"event": "E", "customer": {"source_id": customer}},
        idempotency_key=key,
        action="add_custom_event",
        headers={"Idempotency-Key": key},
        customer=customer,
        message_id=mid,
    )


# ---------------------------------------------------------------------------------------------
# The pure plan


def test_merge_bodies_later_wins_nulls_clear_objects_merge_by_key() -> None:
    first = {
        "source_id": "a",
        "name": "A",
        "email": "a@x",
        "metadata": {"k": 1, "j": 2},
        "address": {"city": "X"},
    }
    second = {"source_id": "a", "email": None, "metadata": {"k": None, "m": 3}, "address": {"state": "S"}}
    assert merge_bodies(first, second) == {
        "source_id": "a",
        "name": "A",
        "email": None,
        "metadata": {"k": None, "j": 2, "m": 3},
        "address": {"city": "X", "state": "S"},
    }
    assert merge_bodies(first, {"source_id": "a", "metadata": None}) == {**first, "metadata": None}
    # "clear, then set some keys" cannot be said in one body
    assert (
        merge_bodies({"source_id": "a", "metadata": None}, {"source_id": "a", "metadata": {"k": 1}}) is None
    )


def test_consecutive_upserts_of_one_customer_merge_keeping_every_key() -> None:
    plan = coalesce(
        [
            upsert("m1", "a", "2024-05-01T10:00:00.000Z", name="A", metadata={"x": 1}),
            upsert("m2", "a", "2024-05-01T10:00:02.000Z", email="a@x"),
            group("m3", "a", "g1"),
        ]
    )
    [merged] = plan
    request = merged.request
    assert merged.sources == [0, 1, 2]
    assert request.path == "/v1/customers" and request.customer == "a"
    assert request.body == {
        "source_id": "a",
        "name": "A",
        "email": "a@x",
        "metadata": {"x": 1, "segment_group_id": "g1"},
    }
    assert [p["idempotency_key"] for p in request.parts or ()] == [
        "acme:v:m1:upsert_customer",
        "acme:v:m2:upsert_customer",
        "acme:v:m3:assign_group",
    ]
    assert request.event_time == "2024-05-01T10:00:02.000Z"  # the newest, for stale protection
    assert request.headers["Idempotency-Key"] == request.idempotency_key
    assert request.headers["X-Voucherify-Channel"] == "c"
    # Deterministic: a redelivered task plans the same key.
    assert (
        coalesce(
            [
                upsert("m1", "a", name="A", metadata={"x": 1}),
                upsert("m2", "a", email="a@x"),
                group("m3", "a", "g1"),
            ]
        )[0].request.idempotency_key
        == request.idempotency_key
    )


def test_merge_follows_event_time_not_arrival_order() -> None:
    # The newer identify arrived first (a mobile client flushing late, two batches crossing):
    # the merged body must still hold the newest values, as sending them in event time would.
    plan = coalesce(
        [
            upsert("new", "a", "2024-05-01T10:05:00.000Z", email="new@x", metadata={"tier": "gold"}),
            upsert(
                "old", "a", "2024-05-01T10:00:00.000Z", email="old@x", name="A", metadata={"tier": "none"}
            ),
            upsert("mid", "a", "2024-05-01T10:02:00.000Z", phone=None, metadata={"seen": 1}),
        ]
    )
    [merged] = plan
    assert merged.sources == [0, 1, 2]
    assert merged.request.body == {
        "source_id": "a",
        "email": "new@x",
        "name": "A",
        "phone": None,
        "metadata": {"tier": "gold", "seen": 1},
    }
    assert merged.request.event_time == "2024-05-01T10:05:00.000Z"
    # Equal times keep their list order (the later in the list wins).
    [tie] = coalesce([upsert("t1", "b", email="first@x"), upsert("t2", "b", email="second@x")])
    assert tie.request.body["email"] == "second@x"


def test_a_request_in_between_keeps_order_and_separates_runs() -> None:
    plan = coalesce(
        [upsert("m1", "a", name="A"), event("m2", "a"), upsert("m3", "a", name="B"), upsert("m4", "a")]
    )
    assert [c.sources for c in plan] == [[0], [1], [2, 3]]
    assert [c.request.path for c in plan] == ["/v1/customers", "/v1/events", "/v1/customers"]


def test_other_customers_requests_do_not_separate_runs() -> None:
    plan = coalesce([upsert("m1", "a", name="A"), event("m2", "b"), upsert("m3", "a", email="e")])
    assert [c.sources for c in plan] == [[0, 2], [1]]


def test_unmergeable_pair_stays_two_calls_in_order() -> None:
    plan = coalesce(
        [upsert("m1", "a", metadata=None), upsert("m2", "a", metadata={"k": 1}), event("m3", "a")]
    )
    assert [c.sources for c in plan] == [[0], [1], [2]]


def test_independent_customers_go_in_one_bulk_call() -> None:
    plan = coalesce(
        [
            upsert("m1", "a", name="A"),
            upsert("m2", "b", name="B"),
            upsert("m3", "a", email="a@x"),
            upsert("m4", "c", name="C"),
            event("m5", "c"),  # c has another request: its upsert stays synchronous, before it
            upsert("m6", "d"),
        ]
    )
    bulk = [c for c in plan if c.request.path == BULK_PATH]
    assert len(bulk) == 1
    assert bulk[0].sources == [0, 1, 2, 5]
    assert bulk[0].request.body == [
        {"source_id": "a", "name": "A", "email": "a@x"},
        {"source_id": "b", "name": "B"},
        {"source_id": "d"},
    ]
    assert bulk[0].request.customer is None and bulk[0].request.action == "upsert_customers_bulk"
    assert {p["customer"] for p in bulk[0].request.parts or ()} == {"a", "b", "d"}
    rest = [c for c in plan if c.request.path != BULK_PATH]
    assert [c.sources for c in rest] == [[3], [4]]


def test_bulk_chunks_and_never_a_bulk_of_one() -> None:
    requests = [upsert(f"m{i}", f"c{i}") for i in range(5)]
    plan = coalesce(requests, max_bulk=2)
    assert [len(c.sources) for c in plan] == [2, 2, 1]
    assert plan[2].request.path == "/v1/customers" and plan[2].request.parts is None
    assert len(coalesce([upsert("m1", "a"), event("m2", "b")])) == 2


def test_nothing_to_coalesce_returns_the_same_requests() -> None:
    requests = [event("m1", "a"), upsert("m2", "a"), event("m3", "a")]
    assert [c.request for c in coalesce(requests)] == requests


def test_round_trip_through_dicts() -> None:
    [merged] = coalesce([upsert("m1", "a"), upsert("m2", "a", name="N")])
    assert OutboundRequest.from_dict(merged.request.to_dict()) == merged.request


# ---------------------------------------------------------------------------------------------
# In the pipeline: the ledger and stale protection hold for coalesced calls


def identify_mapper(event: dict[str, Any], connection: Any) -> list[OutboundRequest]:
    if event["type"] == "identify":
        return [upsert(event["messageId"], event["userId"], event["timestamp"], **event.get("traits", {}))]
    return [event_request(event)]


def event_request(ev: dict[str, Any]) -> OutboundRequest:
    return event(ev["messageId"], ev["userId"])


@pytest.fixture(autouse=True)
def _mapper(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(mapped, "map_event", identify_mapper)


def ident(mid: str, user: str, t: str = "2024-05-01T10:00:00.000Z", **traits: Any) -> dict[str, Any]:
    return {"type": "identify", "messageId": mid, "userId": user, "timestamp": t, "traits": traits}


def run(rt: Runtime, events: list[dict[str, Any]]) -> None:
    conn = rt.settings.connections[0]
    pipeline.process_segment_events(rt, conn, conn.id, events)


def test_pipeline_merges_and_a_redelivered_task_sends_nothing(
    rt: Runtime, transport: FakeTransport, keys: Keys
) -> None:
    events = [
        ident("m1", "a", name="A"),
        ident("m2", "a", "2024-05-01T10:00:05.000Z", email="a@x"),
        ident("m3", "b", name="B"),
        {"type": "track", "messageId": "m4", "userId": "c"},
    ]
    backlog.reserve(rt.redis, "acme", len(events), 1000, keys=keys)
    run(rt, events)
    paths = sorted(c.url.rsplit("/v1", 1)[1] for c in transport.calls)
    assert paths == ["/customers/bulk/async", "/events"]
    [bulk] = [c for c in transport.calls if c.url.endswith(BULK_PATH)]
    assert bulk.body == [{"source_id": "a", "name": "A", "email": "a@x"}, {"source_id": "b", "name": "B"}]
    ledger = Ledger(rt.redis, keys, "acme")
    assert ledger.done_many([f"acme:v:m{i}:upsert_customer" for i in (1, 2, 3)]) == [True, True, True]
    stale = StaleGuard(rt.redis, keys, "acme")
    assert stale.newest_many(["a", "b"]) == [
        event_time_ms("2024-05-01T10:00:05.000Z"),
        event_time_ms("2024-05-01T10:00:00.000Z"),
    ]
    assert backlog.current(rt.redis, "acme", keys=keys) == 0
    # Redelivered as is, or regrouped (one event less): nothing is sent again.
    run(rt, events)
    run(rt, events[1:])
    assert len(transport.calls) == 2


def test_parts_already_delivered_are_left_out_of_a_coalesced_call(
    rt: Runtime, transport: FakeTransport, keys: Keys
) -> None:
    run(rt, [ident("m1", "a", name="A")])  # delivered alone first
    run(rt, [ident("m1", "a", name="A"), ident("m2", "a", "2024-05-01T10:00:01.000Z", email="e")])
    assert [c.body for c in transport.calls] == [
        {"source_id": "a", "name": "A"},
        {"source_id": "a", "email": "e"},
    ]


def test_stale_parts_are_left_out_and_marked(rt: Runtime, transport: FakeTransport, keys: Keys) -> None:
    run(rt, [ident("m9", "a", "2024-05-01T12:00:00.000Z", name="Newest")])
    run(rt, [ident("m1", "a", "2024-05-01T10:00:00.000Z", name="Old"), ident("m2", "b", name="B")])
    assert transport.calls[-1].body == [{"source_id": "b", "name": "B"}]  # the bulk, without a stale part
    assert Ledger(rt.redis, keys, "acme").is_done("acme:v:m1:upsert_customer")
    transport.calls.clear()
    run(
        rt,
        [
            ident("m1", "a", "2024-05-01T10:00:00.000Z", name="Old"),
            ident("m3", "a", "2024-05-01T10:00:01.000Z"),
        ],
    )
    assert transport.calls == []  # everything stale: skipped, not sent


def test_failed_coalesced_call_is_retried_whole(rt: Runtime, transport: FakeTransport, keys: Keys) -> None:
    transport.reply(503)
    conn = rt.settings.connections[0]
    run(rt, [ident("m1", "a", name="A"), ident("m2", "a", email="e")])
    assert not Ledger(rt.redis, keys, "acme").done_many(["acme:v:m1:upsert_customer"])[0]
    from connector.contract import DESTINATION
    from workers.delivery.store import DelayedStore
    from workers.runtime import context_for

    [entry] = DelayedStore(rt.redis, keys).claim_due(now=time.time() + 10**7, limit=10, lease=1)
    [item] = entry.items
    assert item["backlog"] == 2 and isinstance(item["payload"], list) and len(item["payload"]) == 2
    ctx = context_for(rt, conn, DESTINATION)
    assert deliver_one(ctx, item).reason == "delivered"
    assert transport.calls[-1].body == {"source_id": "a", "name": "A", "email": "e"}
    assert Ledger(rt.redis, keys, "acme").done_many(
        ["acme:v:m1:upsert_customer", "acme:v:m2:upsert_customer"]
    ) == [
        True,
        True,
    ]


def test_a_part_in_flight_elsewhere_parks_the_merged_call_and_is_never_sent_twice(
    rt: Runtime, transport: FakeTransport, keys: Keys
) -> None:
    # The same event (m2) in two differently merged calls: the merged keys differ, the event's
    # key does not.  While another attempt holds m2's claim, the second merged call sends nothing.
    conn = rt.settings.connections[0]
    from connector.contract import DESTINATION
    from workers.delivery.attempts import new_item
    from workers.delivery.ledger import new_token
    from workers.runtime import context_for

    ledger = Ledger(rt.redis, keys, "acme")
    other = new_token()
    [held] = ledger.claim_many(["acme:v:m2:upsert_customer"], other, 30)
    assert held.state.name == "CLAIMED"
    [merged] = coalesce(
        [upsert("m2", "a", name="A"), upsert("m3", "a", "2024-05-01T10:00:01.000Z", email="e")]
    )
    ctx = context_for(rt, conn, DESTINATION)
    item = new_item(merged.request, [], None, 2)
    step = deliver_one(ctx, item)
    assert (step.kind.name, step.reason) == ("PARKED", "busy") and transport.calls == []
    # Nothing of ours stays claimed: m3 (and the merged key) can go elsewhere meanwhile.
    assert rt.redis.get(keys.ledger("acme", "acme:v:m3:upsert_customer")) is None
    assert rt.redis.get(keys.ledger("acme", merged.request.idempotency_key)) is None

    # The other attempt delivered m2: the parked call sends m3 alone.
    ledger.complete("acme:v:m2:upsert_customer", 3600)
    assert deliver_one(ctx, item).reason == "delivered"
    assert [c.body for c in transport.calls] == [{"source_id": "a", "email": "e"}]
    assert ledger.done_many(["acme:v:m2:upsert_customer", "acme:v:m3:upsert_customer"]) == [True, True]
