# ruff: noqa: F811 - pytest fixtures imported from tests.support.delivery and test_fewer_calls
"""How the hold window stores its items (workers.delivery.holdscripts): one field per customer of
the connection's ``held`` hash, the items' fields at their defaults left out; a customer's list
key only past ``MAX_FIELD_BYTES`` or when written by the previous version (an upgrade keeps
them, in order).  Real Redis, the pipeline's own functions, a scripted transport."""

from __future__ import annotations

import time
from typing import Any

import orjson
import pytest

from connector.contract import DESTINATION
from tests.support.delivery import (  # noqa: F401 - fixtures
    FakeTransport,
    client,
    keys,
    redis_db_url,
    transport,
)
from tests.workers.test_fewer_calls import (  # noqa: F401 - fixtures
    WINDOW,
    _mapper,
    drain,
    ident,
    ingest,
    rt,
)
from workers.delivery import holds
from workers.delivery.store import DelayedStore
from workers.runtime import Runtime


def bodies(transport: FakeTransport) -> list[dict[str, object]]:
    return [c.body for c in transport.calls if isinstance(c.body, dict)]


def test_held_items_are_one_field_per_customer_without_their_defaults(rt: Runtime) -> None:
    # test_memory_budget_e2e: 2,000 customers held at once made 2,000 list keys (~150 B each of
    # Redis's own) of items repeating "attempts":0, "history":[] ... (~90 B).
    ingest(rt, ident("m1", "a", 1, name="A"), ident("m2", "b", 1, name="B"))
    ingest(rt, ident("m3", "a", 2, email="a@x"))
    assert not list(rt.redis.scan_iter(match=rt.keys.hold("acme", "*")))
    field = rt.redis.hget(rt.keys.held("acme"), "a") or b""
    lines = [orjson.loads(line) for line in field.split(b"\n")]
    assert [i["request"]["message_id"] for i in lines] == ["m1", "m3"]
    assert not {"attempts", "history", "first_attempt_at", "last_delay", "parked"} & set(lines[0])
    # What a batch's items repeat is stored once, counted per item referring it (here each
    # item's headers name its own key: a base each; a real batch shares one, test_memory_budget_e2e).
    assert "received_at" not in lines[0] and "path" not in lines[0]["request"]
    bases = rt.redis.hgetall(rt.keys.held_bases("acme"))
    assert sum(int(v) for k, v in bases.items() if k.startswith(b"n:")) == 3
    assert holds.Holds(rt.redis, rt.keys, "acme").size() == 2

    # Taken back whole (defaults filled in), in order.
    _, taken, _ = holds.Holds(rt.redis, rt.keys, "acme").take(DESTINATION, "voucherify.eu", ["a"])
    assert [i["request"]["message_id"] for i in taken] == ["m1", "m3"]
    assert taken[0]["attempts"] == 0 and taken[0]["history"] == [] and taken[0]["held"] is True
    assert taken[0]["request"]["path"] == "/v1/customers" and "received_at" in taken[0]
    assert not rt.redis.hexists(rt.keys.held("acme"), "a")
    # Their bases went with the last item referring them: b's alone is left.
    bases = rt.redis.hgetall(rt.keys.held_bases("acme"))
    assert sum(int(v) for k, v in bases.items() if k.startswith(b"n:")) == 1 and len(bases) == 2
    assert drain(rt) == 1
    assert not rt.redis.exists(rt.keys.held_bases("acme"), rt.keys.held("acme"))


def test_a_customer_past_the_field_bound_continues_in_its_list_in_order(
    rt: Runtime, transport: FakeTransport, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(holds, "MAX_FIELD_BYTES", 10)  # every append after the first goes to the list
    ingest(rt, ident("m1", "a", 1, name="A"))
    ingest(rt, ident("m2", "a", 2, email="a@x"))
    ingest(rt, ident("m3", "a", 3, name="A3"))
    assert rt.redis.llen(rt.keys.hold("acme", "a")) == 2 and rt.redis.hexists(rt.keys.held("acme"), "a")
    assert drain(rt) == 1
    # One merged upsert: the newest name wins, the earlier email kept (the order was kept).
    [body] = bodies(transport)
    assert body["name"] == "A3" and body["email"] == "a@x"
    assert not rt.redis.exists(rt.keys.hold("acme", "a"), rt.keys.held("acme"), rt.keys.held_bases("acme"))


def test_lists_written_before_the_hash_are_released_and_taken_after_an_upgrade(
    rt: Runtime, transport: FakeTransport
) -> None:
    # A customer's list as the previous version wrote it (whole items, "held" flagged).
    ingest(rt, ident("m1", "a", 1, name="A"))
    hs = holds.Holds(rt.redis, rt.keys, "acme")
    taken_id, [old], _ = hs.take(DESTINATION, "voucherify.eu", ["a"])
    DelayedStore(rt.redis, rt.keys).ack([taken_id or ""])
    assert old["held"] is True and old["request"]["path"] == "/v1/customers"
    rt.redis.rpush(rt.keys.hold("acme", "a"), orjson.dumps(old))
    rt.redis.zadd(rt.keys.holds("acme"), {"a": int((time.time() + WINDOW) * 1000)})
    # A new item of that customer goes behind the old list (never before it).
    ingest(rt, ident("m2", "a", 2, name="A2", email="a@x"))
    assert rt.redis.llen(rt.keys.hold("acme", "a")) == 2
    assert drain(rt) == 1
    [body] = bodies(transport)
    assert body["name"] == "A2" and body["email"] == "a@x"
    assert not rt.redis.exists(rt.keys.hold("acme", "a"))

    # An old list alone is taken in front of a custom event too.
    rt.redis.rpush(
        rt.keys.hold("acme", "b"), orjson.dumps({**old, "request": {**old["request"], "customer": "b"}})
    )
    rt.redis.zadd(rt.keys.holds("acme"), {"b": int((time.time() + 60) * 1000)})
    taken_id, taken, busy = holds.Holds(rt.redis, rt.keys, "acme").take(DESTINATION, "voucherify.eu", ["b"])
    assert taken_id and len(taken) == 1 and not busy
    [entry] = [
        e for e in DelayedStore(rt.redis, rt.keys).claim_due(now=time.time() + 3600) if e.id == taken_id
    ]
    assert entry.items[0]["request"]["customer"] == "b"


def test_forgetting_a_customer_drops_its_field_and_its_list(
    rt: Runtime, monkeypatch: pytest.MonkeyPatch
) -> None:
    # SPEC 14: a deleted subject's held upserts go, in both forms (field, then list), backlog released.
    from workers.delivery import forget
    from workers.runtime import context_for

    monkeypatch.setattr(holds, "MAX_FIELD_BYTES", 10)
    ingest(rt, ident("m1", "a", 1, name="A"), ident("m2", "b", 1, name="B"))
    ingest(rt, ident("m3", "a", 2, name="A2"))  # past the bound: into a's list
    assert rt.redis.llen(rt.keys.hold("acme", "a")) == 1
    left = int(rt.redis.get(rt.keys.backlog("acme")) or 0)
    ctx = context_for(rt, rt.settings.connections[0], DESTINATION)
    done = forget.forget(ctx, ["a"])
    ctx.flush_backlog()
    assert done.held == 2 and {"m1", "m3"} <= done.message_ids
    assert not rt.redis.exists(rt.keys.hold("acme", "a")) and not rt.redis.hexists(rt.keys.held("acme"), "a")
    assert rt.redis.hexists(rt.keys.held("acme"), "b") and holds.Holds(rt.redis, rt.keys, "acme").size() == 1
    assert int(rt.redis.get(rt.keys.backlog("acme")) or 0) == left - 2
    # b's items keep their base; a's bases went with them.
    bases = rt.redis.hgetall(rt.keys.held_bases("acme"))
    assert sum(int(v) for k, v in bases.items() if k.startswith(b"n:")) == 1 and len(bases) == 2


def test_a_line_the_base_cannot_shorten_is_held_whole() -> None:
    # The base form needs a request with fields of its own and the item fields of its own; an
    # item without a payload (or a request of only the repeated fields) is held as it is.
    from workers.delivery.holdscripts import held_items, lines

    bare: Any = {"request": {"method": "POST", "path": "/v1/customers"}, "received_at": 1.0, "held": True}
    full: Any = {**bare, "request": {**bare["request"], "customer": "a"}, "payload": {"userId": "a"}}
    bases: dict[str, list[Any]] = {}
    plain, based = lines([bare, full], bases)
    assert not plain.startswith(b'{"b":') and based.startswith(b'{"b":')
    assert held_items(plain) == [
        {**bare, "attempts": 0, "history": [], "first_attempt_at": None, "last_delay": None, "parked": False}
    ]
    [(text, count)] = bases.values()
    assert count == 1 and b"/v1/customers" in text and b"/v1/customers" not in based
