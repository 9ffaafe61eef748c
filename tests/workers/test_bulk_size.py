# ruff: noqa: F811 - pytest fixtures imported from tests.support.delivery
"""How big a Voucherify bulk is (SPEC 10 and 15): live traffic in bulks of at most 100 customers,
a replay's upserts in bulks as large as Voucherify accepts (10 MB of body, a count cap for the
worker's memory), a bulk refused for its size cut to 100 and the smaller size remembered.  Real
Redis, the pipeline's own functions (hold, release, deliver), a scripted transport."""

from __future__ import annotations

import time
from collections import deque
from typing import Any

import orjson
import pytest
import redis

from connector import backlog
from connector.config import Connection, Settings
from connector.keys import Keys
from connector.quotas import QuotaSettings
from tests.support.delivery import (  # noqa: F401 - fixtures
    FAST,
    FakeTransport,
    client,
    keys,
    make_connection,
    redis_db_url,
    transport,
    upsert,
)
from workers import mapped, pipeline
from workers.delivery import holds
from workers.delivery.deadletters import DeadLetters
from workers.delivery.store import DelayedStore, Parked
from workers.delivery.transport import HTTPResult
from workers.outbound import OutboundRequest
from workers.runtime import Runtime
from workers.targets import voucherify_bulksize as bulksize
from workers.targets.voucherify_coalesce import (
    BULK_PATH,
    MAX_BULK_BYTES,
    VOUCHERIFY_MAX_BODY_BYTES,
    coalesce,
)

WINDOW = 0.3
BULK_URL = "http://vf.test" + BULK_PATH
ACCEPTED = (202, {}, '{"async_action_id": "aa_1"}')
DONE = (200, {}, orjson.dumps({"id": "aa_1", "status": "DONE", "result": {"errors": []}}).decode())


def mapper(event: dict[str, Any], connection: Any) -> list[OutboundRequest]:
    return [upsert(event["messageId"], event["userId"], event["timestamp"], **event.get("traits", {}))]


@pytest.fixture(autouse=True)
def _mapper(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(mapped, "map_event", mapper)
    monkeypatch.setattr(holds, "REPLAY_ALIGN_SECONDS", WINDOW)  # replayed customers due together, soon


@pytest.fixture
def rt(client: redis.Redis, redis_db_url: str, keys: Keys, transport: FakeTransport) -> Runtime:
    quota = QuotaSettings(
        assumed=True, coalesce_window_seconds=WINDOW, unchanged_memory_days=7, bulk_calls_per_hour=100
    )
    conn: Connection = make_connection(quota=quota)
    settings = Settings(redis_url=redis_db_url, connections=(conn,), _by_id={conn.id: conn})
    transport.default = DONE  # every read-back: done, no customer failed
    return Runtime(
        settings=settings,
        redis=client,
        keys=keys,
        transport=transport,
        schema_transport=transport,
        tuning=FAST,
    )


def ident(mid: str, user: str, second: int, **traits: Any) -> dict[str, Any]:
    return {
        "type": "identify",
        "messageId": mid,
        "userId": user,
        "timestamp": f"2024-05-01T10:00:{second:02d}.000Z",
        "traits": traits,
    }


def ingest(rt: Runtime, events: list[dict[str, Any]], *, door: str | None = None) -> None:
    """As the ingest (``door`` None) or ``connector replay`` (door "replay") publishes them."""
    conn = rt.settings.connections[0]
    backlog.reserve(rt.redis, conn.id, len(events), 100 * len(events), keys=rt.keys)
    shared = {"door": door} if door else None
    pipeline.process_segment_events(rt, conn, conn.id, events, shared, 100 * len(events))


def drain(rt: Runtime, *, rounds: int = 6) -> None:
    """The scheduler and the workers, until nothing is due (parked bulks, read-backs)."""
    time.sleep(2 * WINDOW + 0.1)  # the window, and the replay's due rounded up to a multiple of it
    conn = rt.settings.connections[0]
    store = DelayedStore(rt.redis, rt.keys)
    for _ in range(rounds):
        holds.release_due(rt.redis, rt.keys)
        entries = store.claim_due(now=time.time() + 60, limit=1000)
        if not entries:
            return
        for entry in entries:
            pipeline.process_deliveries(rt, conn, entry.connection_id, entry.direction, entry.items)
            store.ack([entry.id])


def bulk_sizes(transport: FakeTransport) -> list[int]:
    return [len(c.body) for c in transport.calls if c.url == BULK_URL]


def bulk_customers(transport: FakeTransport) -> dict[str, dict[str, Any]]:
    """Each customer's body in the bulks that were sent, the last one it was in."""
    return {body["source_id"]: body for c in transport.calls if c.url == BULK_URL for body in c.body}


def customers(n: int, versions: int, prefix: str) -> list[dict[str, Any]]:
    return [
        ident(f"{prefix}{k}-v{v}", f"{prefix}{k}", v, name=f"{prefix}{k} v{v}")
        for v in range(1, versions + 1)
        for k in range(n)
    ]


def test_live_upserts_bulk_by_100_and_a_replays_in_one_bulk_past_it(
    rt: Runtime, transport: FakeTransport
) -> None:
    transport.by_url[BULK_URL] = deque([ACCEPTED] * 10)
    ingest(rt, customers(250, 1, "live"))
    drain(rt)
    # SPEC 10: live bulks stay at 100.  A new connection's bulk budget is probed (SPEC 13: at
    # most 2 calls out before an answer of the window is known), so all three planned at once
    # cannot go: the two granted are full bulks of 100, the other 50 customers go singly.
    sizes = sorted(bulk_sizes(transport))
    assert sizes == [100, 100]
    singles = [c for c in transport.calls if c.url.endswith("/v1/customers")]
    assert len(singles) == 50
    assert {c.body["source_id"] for c in singles} | {
        b["source_id"] for c in transport.calls if c.url == BULK_URL for b in c.body
    } == {f"live{k}" for k in range(250)}
    transport.calls.clear()

    # 300 replayed customers with three versions each (900 items: more than a live entry holds):
    # one bulk of all of them, each customer's newest version in it, read back.
    # A newer live identify of one of them meanwhile: that customer is not the replay's alone any
    # more (it goes its own way), the 299 others still go in one bulk.
    events = customers(300, 3, "cust")
    for start in range(0, len(events), 100):  # as the replay publishes: chunks of 100 events
        ingest(rt, events[start : start + 100], door="replay")
    ingest(rt, [ident("live-newer", "cust0", 30, name="cust0 live")])
    drain(rt)
    assert bulk_sizes(transport) == [299]
    sent = bulk_customers(transport)
    assert {sent[f"cust{k}"]["name"] for k in range(1, 300)} == {f"cust{k} v3" for k in range(1, 300)}
    singles = [c.body for c in transport.calls if c.url == "http://vf.test/v1/customers"]
    assert singles == [{"source_id": "cust0", "name": "cust0 live"}]
    assert [c.url for c in transport.calls].count("http://vf.test/v1/async-actions/aa_1") >= 1
    assert int(rt.redis.get(rt.keys.backlog("acme")) or 0) == 0
    assert DeadLetters(rt.redis, rt.keys).counts().get("acme", 0) == 0


def test_a_bulk_refused_for_its_size_is_cut_to_100_and_the_size_remembered(
    rt: Runtime, transport: FakeTransport
) -> None:
    too_many = (
        400,
        {},
        '{"code": 400, "key": "invalid_payload", "details": "At most 100 customers per request, got 250"}',
    )
    transport.by_url[BULK_URL] = deque([too_many] + [ACCEPTED] * 10)
    ingest(rt, customers(250, 1, "cust")[:100], door="replay")
    ingest(rt, customers(250, 1, "cust")[100:200], door="replay")
    ingest(rt, customers(250, 1, "cust")[200:], door="replay")
    drain(rt)
    sizes = bulk_sizes(transport)
    assert sizes[0] == 250 and sorted(sizes[1:]) == [50, 100, 100]  # the three sent concurrently
    assert set(bulk_customers(transport)) == {f"cust{k}" for k in range(250)}
    assert DeadLetters(rt.redis, rt.keys).counts().get("acme", 0) == 0  # nobody dead-lettered
    assert int(rt.redis.get(rt.keys.backlog("acme")) or 0) == 0
    learned = rt.redis.get(rt.keys.bulk_max("acme"))
    assert learned == b"100" and 0 < rt.redis.ttl(rt.keys.bulk_max("acme")) <= 86_400

    # Later replays of the connection: bulks of 100 at once, none refused.
    transport.calls.clear()
    ingest(rt, customers(150, 1, "later"), door="replay")
    drain(rt)
    assert sorted(bulk_sizes(transport)) == [50, 100]


def test_a_bulk_of_100_refused_for_its_size_is_dead_lettered_as_before(
    rt: Runtime, transport: FakeTransport
) -> None:
    # Nothing smaller to fall back to: Voucherify's refusal stands (no loop of splits).
    transport.by_url[BULK_URL] = deque([(413, {}, '{"message": "Request Entity Too Large"}')])
    ingest(rt, customers(60, 1, "cust"), door="replay")
    drain(rt)
    assert bulk_sizes(transport) == [60]
    assert DeadLetters(rt.redis, rt.keys).counts().get("acme", 0) >= 1
    assert rt.redis.get(rt.keys.bulk_max("acme")) is None


def test_bulks_are_cut_by_their_bytes_under_voucherifys_10_mb() -> None:
    # 60 customers of ~400 KB of metadata each (24 MB): no bulk over the byte bound, every
    # customer in exactly one bulk, the bulks as full as the bound allows.
    blob = "x" * 400_000
    requests = [
        upsert(f"m{k}", f"c{k}", "2024-05-01T10:00:00.000Z", metadata={"blob": blob, "k": k})
        for k in range(60)
    ]
    assert MAX_BULK_BYTES < VOUCHERIFY_MAX_BODY_BYTES - 300_000  # room for headers and rounding
    plan = coalesce(requests, max_bulk=5000, max_bytes=MAX_BULK_BYTES)
    bulks = [p.request for p in plan if p.request.path == BULK_PATH]
    assert len(bulks) == 3
    sizes = [len(orjson.dumps(b.body)) for b in bulks]
    assert all(s <= MAX_BULK_BYTES for s in sizes), sizes
    assert all(s > MAX_BULK_BYTES - 500_000 for s in sizes[:-1]), sizes  # full, not cut early
    seen = [body["source_id"] for b in bulks for body in b.body]
    assert sorted(seen) == sorted(f"c{k}" for k in range(60)) and len(seen) == len(set(seen))
    # Live bulks keep their count bound too (and the same byte bound).
    small = coalesce(
        requests[:5] + [upsert(f"n{k}", f"d{k}", "2024-05-01T10:00:00.000Z") for k in range(250)]
    )
    assert max(len(p.request.body) for p in small if p.request.path == BULK_PATH) <= 100


def test_what_counts_as_a_refusal_for_size() -> None:
    def answer(status: int, body: str) -> HTTPResult:
        return HTTPResult(status, {}, body, 0.01)

    assert bulksize.is_size_refusal(answer(413, ""))
    assert bulksize.is_size_refusal(answer(400, '{"details": "At most 100 customers per request, got 250"}'))
    assert bulksize.is_size_refusal(answer(400, '{"message": "Request body too large: exceeds 10 MB"}'))
    assert not bulksize.is_size_refusal(answer(400, '{"details": "$[3].email: must be a valid email"}'))
    assert not bulksize.is_size_refusal(answer(422, "too many"))


def test_a_replays_customers_wait_for_the_bulk_budget_rather_than_go_singly(
    client: redis.Redis, redis_db_url: str, keys: Keys, transport: FakeTransport
) -> None:
    # One bulk call an hour: the first replayed batch takes it; the next one's customers wait,
    # held, for the next bulk call -- not 200 single calls of the ordinary budget.
    quota = QuotaSettings(
        coalesce_window_seconds=WINDOW, unchanged_memory_days=7, bulk_calls_per_hour=1, share=1.0
    )
    conn: Connection = make_connection(quota=quota)
    settings = Settings(redis_url=redis_db_url, connections=(conn,), _by_id={conn.id: conn})
    transport.default = DONE
    transport.by_url[BULK_URL] = deque([ACCEPTED] * 3)
    rt = Runtime(
        settings=settings,
        redis=client,
        keys=keys,
        transport=transport,
        schema_transport=transport,
        tuning=FAST,
    )
    ingest(rt, customers(150, 1, "first"), door="replay")
    drain(rt)
    assert bulk_sizes(transport) == [150]
    ingest(rt, customers(200, 2, "second"), door="replay")
    drain(rt)
    assert bulk_sizes(transport) == [150]
    assert [c.url for c in transport.calls if c.url.endswith("/v1/customers")] == []  # no singles
    entries = [Parked.from_json(k.decode(), v) for k, v in rt.redis.hgetall(rt.keys.delayed_data).items()]
    waiting = [e for e in entries if e.reason == "bulk_budget"]
    assert len(waiting) == 1 and len(waiting[0].items) == 400  # one entry: one bulk when back
    assert all(i.get("held") for i in waiting[0].items)
    assert waiting[0].due > time.time() + 60  # when the hour's bulk budget grants again


def test_a_replays_bulk_is_bounded_by_the_held_upserts_it_carries(
    rt: Runtime, transport: FakeTransport, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The worker's memory follows the held upserts (events) a bulk carries, not its customers:
    # customers of three versions, 300 items an entry at the most -> bulks of 100 customers.
    monkeypatch.setattr(holds, "REPLAY_ITEMS_PER_ENTRY", 300)
    transport.by_url[BULK_URL] = deque([ACCEPTED] * 5)
    events = customers(200, 3, "cust")
    for start in range(0, len(events), 100):
        ingest(rt, events[start : start + 100], door="replay")
    drain(rt)
    assert bulk_sizes(transport) == [100, 100]
    assert len(bulk_customers(transport)) == 200


def test_a_replays_dues_are_aligned_only_where_its_customers_may_go_in_bulk(
    rt: Runtime, client: redis.Redis, redis_db_url: str, keys: Keys, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Aligned dues fill bulks; without a bulk budget (Organization, Business) the customers go
    # singly, and an alignment would only start the backfill later (up to 10 s, every run).
    monkeypatch.setattr(holds, "REPLAY_ALIGN_SECONDS", 3600.0)
    ingest(rt, customers(3, 1, "bulk"), door="replay")
    single_conn: Connection = make_connection(
        quota=QuotaSettings(assumed=True, coalesce_window_seconds=WINDOW, bulk_calls_per_hour=0)
    )
    single = Runtime(
        settings=Settings(
            redis_url=redis_db_url, connections=(single_conn,), _by_id={single_conn.id: single_conn}
        ),
        redis=client,
        keys=Keys(prefix="single:"),
        transport=FakeTransport(),
        schema_transport=FakeTransport(),
        tuning=FAST,
    )
    ingest(single, customers(3, 1, "one"), door="replay")
    now_ms = time.time() * 1000
    aligned = [due for _, due in client.zrange(rt.keys.holds("acme"), 0, -1, withscores=True)]
    plain = [due for _, due in client.zrange(single.keys.holds("acme"), 0, -1, withscores=True)]
    assert len(aligned) == 3 and all(due % 3_600_000 == 0 for due in aligned)
    assert len(plain) == 3 and all(now_ms < due <= now_ms + WINDOW * 1000 + 50 for due in plain)
