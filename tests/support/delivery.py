"""Shared fixtures and fakes for the delivery unit tests (the suite's redis-server, db 13, a prefix per test).

Imported by the ``test_delivery_*`` modules; holds no tests itself.
"""

from __future__ import annotations

import threading
import time
import uuid
from collections import deque
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import orjson
import pytest
import redis

from connector.config import Connection, SegmentSettings, Settings, VoucherifySettings
from connector.keys import Keys
from connector.quotas import QuotaSettings
from connector.secrets import Secret
from connector.tuning import Tuning
from workers.delivery.transport import HTTPResult, TransportFailure
from workers.outbound import OutboundRequest
from workers.runtime import Runtime

# The suite's own redis-server (tests/conftest.py's redis_base), database 13, keys under a prefix.
DELIVERY_DB = 13
VF_URL = "http://vf.test"
SEG_URL = "http://seg.test"


@pytest.fixture
def redis_db_url(redis_base: str) -> str:
    return f"{redis_base}/{DELIVERY_DB}"


@pytest.fixture
def client(redis_db_url: str) -> redis.Redis:
    return redis.Redis.from_url(redis_db_url)


@pytest.fixture
def keys(client: redis.Redis) -> Iterator[Keys]:
    prefix = f"test-delivery:{uuid.uuid4().hex[:10]}:"
    yield Keys(prefix)
    for key in client.scan_iter(match=prefix + "*", count=1000):
        client.delete(key)


def make_connection(
    cid: str = "acme",
    *,
    rate: int | None = None,
    window_seconds: int = 4 * 3600,
    segment: bool = True,
    rps: int = 1000,
    quota: QuotaSettings | None = None,
    bulk: int = 0,
) -> Connection:
    """A connection for the delivery unit tests.  ``quota``: by default ``rate`` calls a minute
    (None: no budget, only what Voucherify's answers say can stop it) and ``bulk`` bulk calls an
    hour, all the connector's (share 1), with no hold window and no unchanged skip (every request
    as it comes); the tests of SPEC 10's fewer-calls work pass their own."""
    if quota is None:
        quota = QuotaSettings(
            api_calls_per_minute=rate,
            bulk_calls_per_hour=bulk,
            share=1.0,
            coalesce_window_seconds=0,
            unchanged_memory_days=0,
        )
    vf = VoucherifySettings(
        app_id=Secret("app-id-1"),
        secret_key=Secret("secret-key-1"),
        region="eu",
        api_url=None,
        mode="rest",
        base_url=VF_URL,
        queue="voucherify.eu",
        rate_limit_per_minute=rate,
        quota=quota,
    )
    seg = (
        SegmentSettings(
            write_key=Secret("seg-write-key"),
            region="us",
            api_url=None,
            base_url=SEG_URL,
            queue="segment.us",
            requests_per_second=rps,
        )
        if segment
        else None
    )
    return Connection(
        id=cid, write_keys=(Secret("wk"),), voucherify=vf, segment=seg, retry_window_seconds=window_seconds
    )


Reply = int | tuple[int, dict[str, str]] | tuple[int, dict[str, str], str] | TransportFailure


@dataclass
class Call:
    method: str
    url: str
    headers: dict[str, str]
    body: Any


@dataclass
class FakeTransport:
    """Answers from a script (then ``default``), records every call."""

    default: Reply = 200
    script: deque[Reply] = field(default_factory=deque)
    calls: list[Call] = field(default_factory=list)
    by_url: dict[str, deque[Reply]] = field(default_factory=dict)
    lock: threading.Lock = field(default_factory=threading.Lock)
    delay: float = 0.0

    def reply(self, *replies: Reply) -> FakeTransport:
        self.script.extend(replies)
        return self

    def send(
        self, method: str, url: str, headers: dict[str, str], body: bytes | None, timeout: tuple[float, float]
    ) -> HTTPResult:
        with self.lock:
            self.calls.append(Call(method, url, dict(headers), orjson.loads(body) if body else None))
            queue = self.by_url.get(url)
            answer = queue.popleft() if queue else self.script.popleft() if self.script else self.default
        if self.delay:
            time.sleep(self.delay)
        if isinstance(answer, TransportFailure):
            raise answer
        if isinstance(answer, int):
            return HTTPResult(answer, {}, "", 0.01)
        status, headers, *rest = answer
        return HTTPResult(status, {k.lower(): v for k, v in headers.items()}, rest[0] if rest else "", 0.01)


FAST = Tuning(retry_base=2.0, retry_cap=60.0, task_budget=20.0, concurrency=8)


@pytest.fixture
def transport() -> FakeTransport:
    return FakeTransport()


@pytest.fixture
def connection() -> Connection:
    return make_connection()


@pytest.fixture
def rt(
    client: redis.Redis, redis_db_url: str, keys: Keys, transport: FakeTransport, connection: Connection
) -> Runtime:
    settings = Settings(redis_url=redis_db_url, connections=(connection,), _by_id={connection.id: connection})
    return Runtime(settings=settings, redis=client, keys=keys, transport=transport, tuning=FAST)


def request(
    key: str,
    *,
    customer: str | None = "cust-1",
    action: str = "add_custom_event",
    event_time: str | None = None,
    body: Any = None,
) -> OutboundRequest:
    return OutboundRequest(
        method="POST",
        path="/v1/customers" if action == "upsert_customer" else "/v1/events",
        body=body if body is not None else {"n": key},
        idempotency_key=f"acme:v:{key}:{action}",
        action=action,
        headers={"Idempotency-Key": f"acme:v:{key}:{action}"},
        customer=customer,
        event_time=event_time,
        message_id=key,
    )


def upsert(mid: str, customer: str, t: str, **fields: Any) -> OutboundRequest:
    """The request an identify maps to (``POST /v1/customers``), as the coalescing tests build it."""
    key = f"acme:v:{mid}:upsert_customer"
    return OutboundRequest(
        method="POST",
        path="/v1/customers",
        body={"source_id": customer, **fields},
        idempotency_key=key,
        action="upsert_customer",
        headers={"Idempotency-Key": key},
        customer=customer,
        event_time=t,
        message_id=mid,
    )


def simple_mapper(event: dict[str, Any], connection: Connection) -> list[OutboundRequest]:
    """A stand-in for workers.mapping.destination.map_event: one request per event."""
    from connector.errors import MappingError, SkipEvent

    if event.get("skip"):
        raise SkipEvent(event["skip"])
    if event.get("bad"):
        raise MappingError("The root value is missing the required field 'source_id'.")
    action = "upsert_customer" if event.get("type") == "identify" else "add_custom_event"
    return [
        request(
            event["messageId"],
            customer=event.get("userId"),
            action=action,
            event_time=event.get("timestamp"),
            body={"n": event["messageId"]},
        )
    ]


def sent_ids(transport: FakeTransport) -> list[str]:
    return [c.body["n"] for c in transport.calls if isinstance(c.body, dict) and "n" in c.body]
