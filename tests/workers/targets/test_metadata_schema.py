# ruff: noqa: F811 - pytest fixtures imported from tests.support.delivery
"""``metadata_schema = "defined"`` on the delivery side: the schema read with
``GET /v1/metadata-schemas``, cached in Redis for every worker, refreshed when old and after a
metadata 400, read through the connection's rate limiter; real Redis, a scripted transport.
(What is kept and dropped is in the mapping cases; the end-to-end test is in test_fidelity_e2e.)
"""

from __future__ import annotations

import dataclasses
import json
import time
from collections import deque
from typing import Any

import orjson
import pytest
import redis
from prometheus_client import REGISTRY

from connector.config import Connection, DestinationSettings, Settings
from connector.keys import Keys
from tests.support.delivery import (  # noqa: F401 - fixtures
    FAST,
    VF_URL,
    FakeTransport,
    client,
    keys,
    make_connection,
    redis_db_url,
    transport,
)
from workers import pipeline
from workers.delivery.deadletters import DeadLetters
from workers.delivery.store import DelayedStore, Parked
from workers.mapping.destination.metadata import CustomerMetadataSchema
from workers.runtime import Runtime
from workers.targets.voucherify_schema import MetadataSchemas

LISTING = {
    "object": "list",
    "data_ref": "schemas",
    "total": 1,
    "schemas": [
        {
            "id": "ms_1",
            "related_object": "customer",
            "properties": {
                "plan": {"type": "string", "array": False, "optional": True},
                "ltv": {"type": "number", "array": False, "optional": True},
            },
        }
    ],
}
SCHEMA_URL = VF_URL + "/v1/metadata-schemas"
CUSTOMERS_URL = VF_URL + "/v1/customers"


def listing_reply(listing: dict[str, Any] = LISTING) -> tuple[int, dict[str, str], str]:
    return (200, {}, json.dumps(listing))


@pytest.fixture
def connection() -> Connection:
    conn = make_connection(rate=100)
    return dataclasses.replace(conn, destination=DestinationSettings(metadata_schema="defined"))


@pytest.fixture
def rt(
    client: redis.Redis, redis_db_url: str, keys: Keys, transport: FakeTransport, connection: Connection
) -> Runtime:
    settings = Settings(redis_url=redis_db_url, connections=(connection,), _by_id={connection.id: connection})
    return Runtime(
        settings=settings,
        redis=client,
        keys=keys,
        transport=transport,
        schema_transport=transport,
        tuning=FAST,
    )


@pytest.fixture(autouse=True)
def _no_memo(monkeypatch: pytest.MonkeyPatch) -> None:
    # Each test reads Redis afresh (the process memo would carry a schema across tests).
    monkeypatch.setattr("workers.targets.voucherify_schema.MEMO_SECONDS", 0.0)


def identify(mid: str, metadata: dict[str, Any], user: str = "u1") -> dict[str, Any]:
    return {
        "type": "identify",
        "userId": user,
        "messageId": mid,
        "timestamp": "2024-05-01T12:00:00.000Z",
        "traits": {"metadata": metadata},
    }


def run(rt: Runtime, events: list[dict[str, Any]]) -> None:
    conn = rt.settings.connections[0]
    pipeline.process_segment_events(rt, conn, conn.id, events)


def parked(rt: Runtime) -> list[Parked]:
    return DelayedStore(rt.redis, rt.keys).claim_due(now=time.time() + 10**7, limit=1000, lease=1)


def replay(rt: Runtime, entries: list[Parked]) -> None:
    conn = rt.settings.connections[0]
    for entry in entries:
        pipeline.process_deliveries(rt, conn, conn.id, entry.direction, entry.items)


def posts(transport: FakeTransport) -> list[dict[str, Any]]:
    return [c.body for c in transport.calls if c.url == CUSTOMERS_URL]


def gets(transport: FakeTransport) -> int:
    return sum(1 for c in transport.calls if c.url == SCHEMA_URL)


def dropped(key: str) -> float:
    value = REGISTRY.get_sample_value(
        "connector_metadata_keys_dropped_total", {"connection": "acme", "key": key, "reason": "undefined"}
    )
    return value or 0.0


def test_read_once_cached_for_every_event_and_filters(rt: Runtime, transport: FakeTransport) -> None:
    transport.by_url[SCHEMA_URL] = deque([listing_reply()])
    before = dropped("nickname")
    run(rt, [identify("m1", {"plan": "pro", "nickname": "Al"}, "u1")])
    run(rt, [identify("m2", {"ltv": 3, "nickname": "Bo"}, "u2"), identify("m3", {"x": 1}, "u3")])
    assert gets(transport) == 1  # one GET, then the cache in Redis
    # u2 and u3 have nothing else in their task: one bulk upsert carries both.
    bulk = [b for c in transport.calls if isinstance(c.body, list) for b in c.body]
    metadata = [b.get("metadata") for b in posts(transport) + bulk]
    assert {"plan": "pro"} in metadata and {"ltv": 3} in metadata
    assert all("nickname" not in (m or {}) and "x" not in (m or {}) for m in metadata)
    assert dropped("nickname") == before + 2
    get = next(c for c in transport.calls if c.url == SCHEMA_URL)
    assert get.method == "GET" and get.headers["X-App-Id"] == "app-id-1"


def test_refreshed_when_older_than_the_refresh_interval(
    rt: Runtime, transport: FakeTransport, client: redis.Redis, keys: Keys, monkeypatch: pytest.MonkeyPatch
) -> None:
    transport.by_url[SCHEMA_URL] = deque([listing_reply(), listing_reply()])
    run(rt, [identify("m1", {"plan": "pro"})])
    run(rt, [identify("m2", {"plan": "pro"})])
    assert gets(transport) == 1
    # An hour later (by the cache's clock): the next event reads the schema again.
    key = f"{keys.prefix}mschema:acme"
    entry = orjson.loads(client.get(key))  # type: ignore[arg-type]
    entry["fetched_at"] -= 3601
    client.set(key, orjson.dumps(entry))
    run(rt, [identify("m3", {"plan": "pro"})])
    assert gets(transport) == 2


def test_the_get_spends_the_connections_budget(
    client: redis.Redis, redis_db_url: str, keys: Keys, transport: FakeTransport
) -> None:
    conn = dataclasses.replace(
        make_connection(rate=1), destination=DestinationSettings(metadata_schema="defined")
    )
    settings = Settings(redis_url=redis_db_url, connections=(conn,), _by_id={conn.id: conn})
    rt = Runtime(
        settings=settings,
        redis=client,
        keys=keys,
        transport=transport,
        schema_transport=transport,
        tuning=FAST,
    )
    transport.by_url[SCHEMA_URL] = deque([listing_reply()])
    run(rt, [identify("m1", {"plan": "pro"})])
    # 1 call per minute: the GET took it, so the upsert waits for the next slot, unsent.
    assert gets(transport) == 1 and posts(transport) == []
    [entry] = parked(rt)
    assert entry.reason == "throttled" and entry.due > time.time() + 30


def test_no_schema_yet_on_a_paused_connection_waits_for_the_resume(
    rt: Runtime, transport: FakeTransport, keys: Keys
) -> None:
    # The connection's credentials were refused: the schema read is not even tried, and the
    # work waits for the resume (the probe's interval), not due again at once in a loop.
    from workers.delivery import pauses

    assert pauses.pause(rt.redis, keys, "acme", pauses.AUTH)
    transport.by_url[SCHEMA_URL] = deque([listing_reply()])
    run(rt, [identify("m1", {"plan": "pro"})])
    assert gets(transport) == 0 and posts(transport) == []
    [entry] = parked(rt)
    assert entry.reason == "paused" and entry.due > time.time() + 60


def test_no_schema_yet_and_the_read_fails_nothing_is_sent_unfiltered(
    rt: Runtime, transport: FakeTransport, keys: Keys
) -> None:
    transport.by_url[SCHEMA_URL] = deque([503])
    run(rt, [identify("m1", {"plan": "pro", "nickname": "Al"})])
    assert posts(transport) == []
    [entry] = parked(rt)
    assert entry.reason == "metadata_schema"
    # Back from the store: the schema is read now, and the upsert goes out filtered.
    transport.by_url[SCHEMA_URL] = deque([listing_reply()])
    replay(rt, [entry])
    assert posts(transport) == [{"source_id": "u1", "metadata": {"plan": "pro"}}]


@pytest.mark.parametrize("answer", ["forbidden", "over_1_mb"])
def test_an_unreadable_schema_is_waited_for_counted_attempts_then_none_is_sent(
    rt: Runtime, transport: FakeTransport, answer: str
) -> None:
    # Issue #19: a 403 (the key may not read schemas) or a listing over 1 MB (cut by the
    # transport: unreadable) made the upsert wait 1 s in a loop, never counted, never ending.
    unreadable = 403 if answer == "forbidden" else (200, {}, '{"schemas": [' + "x" * 100)
    transport.by_url[SCHEMA_URL] = deque([unreadable] * 10)
    run(rt, [identify("m1", {"plan": "pro", "nickname": "Al"})])
    for attempt in (1, 2):
        [entry] = parked(rt)
        assert entry.reason == "metadata_schema"
        [item] = entry.items
        assert item["attempts"] == attempt and item["history"][-1]["error"] == "metadata schema unavailable"
        assert entry.due - time.time() >= FAST.retry_base * 2 ** (attempt - 1) - 0.5  # backoff
        rt.redis.delete(rt.keys.prefix + "mschema:acme:lock")  # as if FAILED_READ_SECONDS passed
        replay(rt, [entry])
    # The third attempt goes without the metadata: none is known to be defined.
    assert posts(transport) == [{"source_id": "u1"}]
    assert parked(rt) == []
    assert gets(transport) == 3  # one read per attempt here; a failed read holds the lock 10 s
    assert (
        REGISTRY.get_sample_value(
            "connector_metadata_keys_dropped_total",
            {"connection": "acme", "key": "plan", "reason": "schema_unavailable"},
        )
        or 0.0
    ) >= 1.0


def test_an_old_schema_is_used_while_the_refresh_fails(
    rt: Runtime, transport: FakeTransport, client: redis.Redis, keys: Keys
) -> None:
    MetadataSchemas(client, keys, "acme").store(CustomerMetadataSchema.from_listing(LISTING))
    MetadataSchemas(client, keys, "acme").mark_stale()
    transport.by_url[SCHEMA_URL] = deque([500])
    run(rt, [identify("m1", {"plan": "pro", "nickname": "Al"})])
    assert gets(transport) == 1
    assert posts(transport) == [{"source_id": "u1", "metadata": {"plan": "pro"}}]


def test_a_metadata_400_refreshes_the_schema_and_retries_once(
    rt: Runtime, transport: FakeTransport, keys: Keys
) -> None:
    refusal = (400, {}, '{"code": 400, "key": "invalid_metadata", "message": "Invalid metadata"}')
    changed = {**LISTING, "schemas": [{**LISTING["schemas"][0], "properties": {"plan": {"type": "string"}}}]}
    transport.by_url[SCHEMA_URL] = deque([listing_reply(), listing_reply(changed)])
    transport.by_url[CUSTOMERS_URL] = deque([refusal, 200])
    run(rt, [identify("m1", {"plan": "pro", "ltv": 5})])
    [entry] = parked(rt)
    assert entry.reason == "metadata_schema" and entry.due <= time.time() + 2
    replay(rt, [entry])
    assert gets(transport) == 2  # read again after the 400
    assert posts(transport) == [
        {"source_id": "u1", "metadata": {"plan": "pro", "ltv": 5}},
        {"source_id": "u1", "metadata": {"plan": "pro"}},
    ]
    assert parked(rt) == [] and DeadLetters(rt.redis, keys).select() == []


def test_a_second_metadata_400_is_dead_lettered(rt: Runtime, transport: FakeTransport, keys: Keys) -> None:
    refusal = (400, {}, '{"code": 400, "key": "invalid_metadata", "message": "Invalid metadata"}')
    transport.by_url[SCHEMA_URL] = deque([listing_reply(), listing_reply()])
    transport.by_url[CUSTOMERS_URL] = deque([refusal, refusal])
    run(rt, [identify("m1", {"plan": "pro"})])
    replay(rt, parked(rt))
    [dead] = DeadLetters(rt.redis, keys).select()
    assert dead.reason == "rejected" and dead.status == 400
    assert parked(rt) == []


def test_while_another_worker_reads_it_work_waits(
    rt: Runtime, transport: FakeTransport, client: redis.Redis, keys: Keys
) -> None:
    assert MetadataSchemas(client, keys, "acme").try_lock()  # someone else is reading it
    run(rt, [identify("m1", {"plan": "pro"})])
    assert transport.calls == []
    [entry] = parked(rt)
    assert entry.reason == "metadata_schema"


def test_segmentio_and_all_never_read_the_schema(
    client: redis.Redis, redis_db_url: str, keys: Keys, transport: FakeTransport
) -> None:
    conn = make_connection(rate=100)  # metadata_schema = "all"
    settings = Settings(redis_url=redis_db_url, connections=(conn,), _by_id={conn.id: conn})
    rt = Runtime(settings=settings, redis=client, keys=keys, transport=transport, tuning=FAST)
    run(rt, [identify("m1", {"nickname": "Al"})])
    assert gets(transport) == 0 and posts(transport) == [{"source_id": "u1", "metadata": {"nickname": "Al"}}]
