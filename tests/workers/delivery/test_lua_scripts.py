"""The delivery's Lua scripts (workers/delivery/lua/*.lua, but the budgets'), each called directly
through its wrapper against a real redis-server: its effect, its reply, and an edge case each.
Their callers' tests cover them too; these pin each script's own contract (the keys and
arguments its header names)."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import pytest
import redis

from workers.delivery import dlqscripts, holdscripts, ledger, outbox, stale, store


@pytest.fixture
def client(redis_url: str) -> Iterator[redis.Redis]:
    c = redis.Redis.from_url(redis_url)
    yield c
    c.close()


# --- stale ---------------------------------------------------------------------------------------


def test_stale_raise_never_lowers_the_record_and_counts_the_customer(client: redis.Redis) -> None:
    keys = ["t:stale", "t:customers"]
    assert stale._RAISE(client, keys, [2000, 100, "u1", 500]) == 1
    assert client.get("t:stale") == b"2000" and 0 < client.ttl("t:stale") <= 100
    assert client.pfcount("t:customers") == 1 and 400 < client.ttl("t:customers") <= 500
    # Edge: an older (or equal) time leaves the record, renews its TTL, answers 0.
    client.expire("t:stale", 5)
    assert stale._RAISE(client, keys, [1000, 100, "u1", 50]) == 0
    assert stale._RAISE(client, keys, [2000, 100, "u1", 50]) == 0
    assert client.get("t:stale") == b"2000" and client.ttl("t:stale") > 5
    assert client.ttl("t:customers") > 400  # the count's TTL only grows


def test_stale_check_lock_answers_stale_busy_queued_or_locked(client: redis.Redis) -> None:
    keys = ["t:stale", "t:lock", "t:out"]
    client.set("t:stale", 2000)
    assert stale._CHECK_LOCK(client, keys, [1999, "a", 5000, -1]) == [1, 0]  # stale
    assert client.exists("t:lock") == 0
    assert stale._CHECK_LOCK(client, keys, [2000, "a", 5000, -1]) == [0, 0]  # equal: locked
    assert client.get("t:lock") == b"a" and 0 < client.pttl("t:lock") <= 5000
    assert stale._CHECK_LOCK(client, keys, [2000, "a", 5000, -1]) == [0, 0]  # ours again
    state, wait = stale._CHECK_LOCK(client, keys, [3000, "b", 5000, -1])
    assert state == 2 and 0 < wait <= 5000  # another's
    # Edge: a bulk of the customer's is out ('queued') and this request is newer: held back;
    # with no time to compare (-1) it is never stale.
    client.set("t:out", "queued", px=7000)
    state, wait = stale._CHECK_LOCK(client, keys, [-1, "c", 5000, 2500])
    assert state == 3 and 5000 < wait <= 7000
    assert stale._CHECK_LOCK(client, keys, [-1, "a", 5000, 1500]) == [0, 0]  # not newer: ours


def test_stale_check_lock_holds_back_only_what_is_newer_than_a_bulk_sending(client: redis.Redis) -> None:
    keys = ["t:stale", "t:lock", "t:out"]
    client.set("t:stale", 1000)
    client.set("t:out", "sending:2000", px=7000)
    state, wait = stale._CHECK_LOCK(client, keys, [2500, "a", 5000, 2500])
    assert state == 3 and 5000 < wait <= 7000  # newer than the bulk's upsert: after it
    assert stale._CHECK_LOCK(client, keys, [2000, "a", 5000, 2000]) == [0, 0]  # the bulk's own
    # Edge: a bulk's upsert without a time ('sending:-1') holds back every newer timed one.
    client.set("t:out", "sending:-1", px=7000)
    assert stale._CHECK_LOCK(client, keys, [1500, "b", 5000, 1500])[0] == 3


def test_stale_lock_many_takes_the_locks_in_order_up_to_anothers(client: redis.Redis) -> None:
    locks = ["t:l1", "t:l2", "t:l3"]
    assert stale._LOCK_MANY(client, locks, ["a", 5000]) == [0, 0]
    assert [client.get(k) for k in locks] == [b"a"] * 3 and 0 < client.pttl("t:l3") <= 5000
    assert stale._LOCK_MANY(client, locks, ["a", 5000]) == [0, 0]  # ours already: taken again
    client.set("t:l5", "b", px=3000)
    at, wait = stale._LOCK_MANY(client, ["t:l4", "t:l5", "t:l6"], ["a", 5000])
    assert at == 2 and 0 < wait <= 3000  # stopped at the second, another's
    assert client.get("t:l4") == b"a" and client.exists("t:l6") == 0  # before it ours, after it untouched
    # Edge: another's lock without a TTL still answers a wait of at least 1 ms; once it is gone,
    # asking again from there takes the rest.
    client.persist("t:l5")
    assert stale._LOCK_MANY(client, ["t:l5", "t:l6"], ["a", 5000]) == [1, 1]
    client.delete("t:l5")
    assert stale._LOCK_MANY(client, ["t:l5", "t:l6"], ["a", 5000]) == [0, 0]
    assert client.get("t:l6") == b"a"


def test_stale_unlock_deletes_only_our_lock(client: redis.Redis) -> None:
    client.set("t:lock", "a")
    assert stale._UNLOCK(client, ["t:lock"], ["b"]) == 0
    assert client.get("t:lock") == b"a"
    assert stale._UNLOCK(client, ["t:lock"], ["a"]) == 0
    assert client.exists("t:lock") == 0
    # Several locks: ours go, another's stays.
    client.mset({"t:l1": "a", "t:l2": "b", "t:l3": "a"})
    assert stale._UNLOCK(client, ["t:l1", "t:l2", "t:l3"], ["a"]) == 0
    assert client.exists("t:l1", "t:l3") == 0 and client.get("t:l2") == b"b"


# --- ledger and delayed store --------------------------------------------------------------------


def test_ledger_claim_many_claims_absent_or_ours_and_reports_the_rest(client: redis.Redis) -> None:
    client.set("t:done", "done")
    client.set("t:other", "inflight:zz", px=9000)
    keys = ["t:new", "t:new", "t:done", "t:other"]
    flat = ledger._CLAIM_MANY(client, keys, ["tok", 4000, "tok", 4000, "tok", 4000, "tok", 4000])
    assert flat[:6] == [1, 0, 1, 0, 2, 0]  # a key listed twice: the second finds our claim
    assert flat[6] == 3 and 0 < flat[7] <= 9000
    assert client.get("t:new") == b"inflight:tok" and 0 < client.pttl("t:new") <= 4000
    # Edge: no keys at all -> an empty answer.
    assert ledger._CLAIM_MANY(client, [], []) == []


def calls(client: redis.Redis) -> dict[str, int]:
    """Commands this server ran so far, by name (``INFO commandstats``: a script's own count)."""
    return {k.removeprefix("cmdstat_"): int(v["calls"]) for k, v in client.info("commandstats").items()}


def ran(client: redis.Redis, before: dict[str, int], *names: str) -> dict[str, int]:
    after = calls(client)
    return {n: after.get(n, 0) - before.get(n, 0) for n in names}


def test_ledger_first_claims_cost_one_command_each(client: redis.Redis) -> None:
    """Redis counts commands: a first claim (the common case) is a SET NX, nothing read."""
    keys = [f"t:first:{n}" for n in range(50)]
    before = calls(client)
    flat = ledger._CLAIM_MANY(client, keys, [a for _ in keys for a in ("tok", 4000)])
    assert flat == [1, 0] * 50
    assert ran(client, before, "set", "get", "pttl") == {"set": 50, "get": 0, "pttl": 0}
    # Claimed again by the same token (a retry of ours): read, then renewed.
    before = calls(client)
    assert ledger._CLAIM_MANY(client, keys[:1], ["tok", 9000]) == [1, 0]
    assert ran(client, before, "set", "get") == {"set": 2, "get": 1}
    assert 4000 < client.pttl(keys[0]) <= 9000


def test_ledger_release_gives_back_only_our_claim(client: redis.Redis) -> None:
    client.set("t:claim", "inflight:tok")
    assert ledger._RELEASE(client, ["t:claim"], ["other"]) == 0
    assert ledger._RELEASE(client, ["t:claim"], ["tok"]) == 1
    assert client.exists("t:claim") == 0
    # Edge: a call marked done is never given back.
    client.set("t:claim", "done")
    assert ledger._RELEASE(client, ["t:claim"], ["tok"]) == 0 and client.get("t:claim") == b"done"


def test_store_claim_due_leases_due_entries_and_drops_ones_without_data(client: redis.Redis) -> None:
    client.zadd("t:delayed", {"a": 100, "b": 200, "gone": 150, "later": 900})
    client.hset("t:data", mapping={"a": "A", "b": "B", "later": "L"})
    flat = store._CLAIM_DUE(client, ["t:delayed", "t:data"], [500, 10, 5000])
    assert flat == [b"a", b"A", b"b", b"B"]
    assert client.zscore("t:delayed", "a") == 5000 and client.zscore("t:delayed", "gone") is None
    # Edge: the limit bounds the claim; a leased entry is not due again before its lease ends.
    assert store._CLAIM_DUE(client, ["t:delayed", "t:data"], [1000, 10, 6000]) == [b"later", b"L"]
    assert store._CLAIM_DUE(client, ["t:delayed", "t:data"], [7000, 1, 8000]) == [b"a", b"A"]


# --- outbox --------------------------------------------------------------------------------------

OUT = ["t:outbox", "t:outboxes", "t:state"]


def test_outbox_append_dedupes_by_its_mark(client: redis.Redis) -> None:
    assert outbox._APPEND(client, [*OUT, "t:mark"], ["i1", "c", "q", "60"]) == 1
    assert outbox._APPEND(client, [*OUT, "t:mark"], ["i1", "c", "q", "60"]) == 0
    assert client.lrange("t:outbox", 0, -1) == [b"i1"]
    assert client.smembers("t:outboxes") == {b"c"} and client.hget("t:state", "queue") == b"q"
    assert 0 < client.ttl("t:mark") <= 60
    # Edge: keep '0' -> no dedupe, every append counts.
    assert outbox._APPEND(client, [*OUT, "t:mark2"], ["i2", "c", "q", "0"]) == 1
    assert outbox._APPEND(client, [*OUT, "t:mark2"], ["i2", "c", "q", "0"]) == 1
    assert client.llen("t:outbox") == 3 and client.exists("t:mark2") == 0


def test_outbox_append_many_appends_in_order(client: redis.Redis) -> None:
    assert outbox._APPEND_MANY(client, OUT, ["c", "q", "a", "b"]) == 2
    assert client.lrange("t:outbox", 0, -1) == [b"a", b"b"] and client.smembers("t:outboxes") == {b"c"}
    # Edge: no items still registers the outbox, answers 0.
    assert outbox._APPEND_MANY(client, ["t:o2", "t:outboxes", "t:s2"], ["d", "q2"]) == 0
    assert client.smembers("t:outboxes") == {b"c", b"d"} and client.exists("t:o2") == 0


def test_outbox_trim_refresh_unlock_act_only_for_the_lock_owner(client: redis.Redis) -> None:
    client.rpush("t:outbox", "a", "b", "c")
    client.set("t:lock", "tok", px=1000)
    assert outbox._TRIM_IF_OWNER(client, ["t:outbox", "t:lock"], ["other", 2]) == -1
    assert outbox._TRIM_IF_OWNER(client, ["t:outbox", "t:lock"], ["tok", 2]) == 1
    assert client.lrange("t:outbox", 0, -1) == [b"c"]
    assert outbox._REFRESH(client, ["t:lock"], ["other", 60000]) == 0
    assert outbox._REFRESH(client, ["t:lock"], ["tok", 60000]) == 1 and client.pttl("t:lock") > 1000
    assert outbox._UNLOCK(client, ["t:lock"], ["other"]) == 0 and client.exists("t:lock") == 1
    assert outbox._UNLOCK(client, ["t:lock"], ["tok"]) == 1 and client.exists("t:lock") == 0
    # Edge: with no lock at all nothing is trimmed (a lost lock is not ours).
    assert outbox._TRIM_IF_OWNER(client, ["t:outbox", "t:lock"], ["tok", 1]) == -1
    assert client.llen("t:outbox") == 1


def test_outbox_sweep_marks_an_outbox_that_wants_a_flush(client: redis.Redis) -> None:
    keys = ["t:outbox", "t:outboxes", "t:lock", "t:state", "t:swept"]
    client.sadd("t:outboxes", "c")
    client.rpush("t:outbox", "a")
    client.hset("t:state", mapping={"queue": "q", "next_at": "100"})
    assert outbox._SWEEP(client, keys, ["c", 50, 2000]) is None  # backing off until 100
    assert outbox._SWEEP(client, keys, ["c", 150, 2000]) == b"q"
    assert 0 < client.pttl("t:swept") <= 2000
    assert outbox._SWEEP(client, keys, ["c", 150, 2000]) is None  # marked a moment ago
    client.delete("t:swept")
    client.set("t:lock", "tok")
    assert outbox._SWEEP(client, keys, ["c", 150, 2000]) is None  # a flusher runs
    # Edge: an empty outbox is unregistered.
    client.delete("t:outbox")
    assert outbox._SWEEP(client, keys, ["c", 150, 2000]) is None
    assert client.smembers("t:outboxes") == set()


# --- hold window ---------------------------------------------------------------------------------

HOLD_KEYS = ["t:holds:c", "t:index", "t:held:c", "t:bases:c", "t:lists:c"]
BASE = b'"received_at":1\n"method":"POST"'
SHORT = b'{"b":"b1","request":{"x":1},"y":2}'
WHOLE = b'{"received_at":1,"request":{"method":"POST","x":1},"y":2}'


def hold(client: redis.Redis, *customers: tuple[str, list[bytes]], most: int = 1000) -> list[Any]:
    referring = sum(line.startswith(b'{"b":"b1"') for _, lines in customers for line in lines)
    args: list[Any] = [0, "c", '{"head":1', most, 1, 0, "b1", BASE, referring]
    for customer, lines in customers:
        args += [customer, f"t:hold:c:{customer}", len(lines), *lines]
    return holdscripts.HOLD(client, HOLD_KEYS, args)


def test_hold_appends_to_the_field_counts_bases_and_keeps_the_first_due(client: redis.Redis) -> None:
    dues = hold(client, ("u1", [SHORT, b'{"z":1}']), ("u2", [SHORT]))
    assert len(dues) == 2 and dues[0] == dues[1]
    assert client.hget("t:held:c", "u1") == SHORT + b'\n{"z":1}'
    assert client.hgetall("t:bases:c") == {b"b1": BASE, b"n:b1": b"2"}
    assert client.hget("t:index", "c") == b'{"head":1'
    # Edge: a field past ``most`` bytes: further items go to the customer's list; the due stays.
    again = hold(client, ("u1", [b'{"z":2}']), most=10)
    assert again == [dues[0]] and client.lrange("t:hold:c:u1", 0, -1) == [b'{"z":2}']


def test_take_moves_customers_into_one_entry_and_answers_the_busy(client: redis.Redis) -> None:
    hold(client, ("u1", [SHORT]), ("u2", [b'{"z":1}']))
    client.set("t:out:u2", "queued")
    args = ["e1", '{"head":1', 5000, "u1", "t:hold:c:u1", "t:out:u1", "u2", "t:hold:c:u2", "t:out:u2"]
    keys = ["t:holds:c", "t:delayed", "t:data", "t:held:c", "t:bases:c", "t:lists:c"]
    assert holdscripts.TAKE(client, keys, args) == [b"e1", WHOLE, b"|", b"u2"]
    entry = json.loads(client.hget("t:data", "e1"))
    assert entry["head"] == 1 and entry["items"] == [json.loads(WHOLE)] and entry["reason"] == "held"
    assert client.zscore("t:delayed", "e1") == pytest.approx(entry["due"] * 1000)
    assert client.hkeys("t:held:c") == [b"u2"] and client.exists("t:bases:c") == 0  # base released
    # Edge: nothing to take -> '' and no entry.
    assert holdscripts.TAKE(client, keys, ["e2", "{", 5000, "u9", "t:hold:c:u9", "t:out:u9"]) == [b"", b"|"]
    assert client.hexists("t:data", "e2") == 0


def test_hold_and_take_cost_commands_per_call_not_per_customer(client: redis.Redis) -> None:
    """Redis counts commands: holding new customers reads and writes them all in a few commands
    (their lists looked for only once they are held); taking a task's customers, most holding
    nothing, reads who is held and who is busy per thousand customers."""
    customers = [(f"u{n}", [b'{"z":%d}' % n]) for n in range(300)]
    before = calls(client)
    dues = hold(client, *customers)
    assert len(dues) == 300 and len(set(dues)) == 1
    assert ran(client, before, "hmget", "zmscore", "hset", "zadd", "exists", "hget", "zscore") == {
        "hmget": 2,  # the fields and the list marks
        "zmscore": 1,
        "hset": 2,  # the customers' fields and the index
        "zadd": 1,
        "exists": 0,
        "hget": 0,
        "zscore": 0,
    }
    assert client.zcard("t:holds:c") == 300 and client.hget("t:held:c", "u7") == b'{"z":7}'
    # Held again: the field appended to, the first due kept, no list looked for.
    before = calls(client)
    assert hold(client, *customers[:10]) == dues[:10]
    assert ran(client, before, "exists", "hset", "zadd") == {"exists": 0, "hset": 2, "zadd": 0}
    assert client.hget("t:held:c", "u7") == b'{"z":7}\n{"z":7}'
    # A field past ``most``: its list is started and marked, and followed with no look for it.
    hold(client, ("u1", [b'{"z":"a"}']), most=5)
    assert client.hget("t:lists:c", "u1") == b"1" and client.llen("t:hold:c:u1") == 1
    client.hset("t:held:c", "u1", '{"z":1}\n{"z":1}')  # short again: the mark still sends it on
    before = calls(client)
    hold(client, ("u1", [b'{"z":"b"}']))
    assert ran(client, before, "exists", "rpush") == {"exists": 0, "rpush": 1}
    assert client.lrange("t:hold:c:u1", 0, -1) == [b'{"z":"a"}', b'{"z":"b"}']
    # A take of 2,500 customers, three of them held, one of those busy.
    client.set("t:out:u2", "queued")
    args: list[Any] = ["e1", '{"head":1', 5000]
    for n in [0, 1, 2, *range(1000, 3497)]:
        args += [f"u{n}", f"t:hold:c:u{n}", f"t:out:u{n}"]
    keys = ["t:holds:c", "t:delayed", "t:data", "t:held:c", "t:bases:c", "t:lists:c"]
    before = calls(client)
    flat = holdscripts.TAKE(client, keys, args)
    assert flat == [
        b"e1",
        b'{"z":0}',
        b'{"z":0}',
        b'{"z":1}',
        b'{"z":1}',
        b'{"z":"a"}',
        b'{"z":"b"}',
        b"|",
        b"u2",
    ]
    assert ran(client, before, "zmscore", "mget", "exists", "lrange", "hmget", "hget") == {
        "zmscore": 3,
        "mget": 3,
        "exists": 0,
        "lrange": 2,  # the two customers taken
        "hmget": 1,
        "hget": 0,
    }
    assert client.zscore("t:holds:c", "u2") and not client.zscore("t:holds:c", "u1")
    assert not client.exists("t:lists:c", "t:hold:c:u1")  # u1's list taken, its mark gone
    # A release of the other 298 customers (all due: a zero window), one of them (u9) still out.
    client.set("t:holdout:c:u9", "queued")
    before = calls(client)
    assert (
        int(holdscripts.RELEASE(client, RELEASE_KEYS, ["c", "t:", "r", 1000, 1000, 7000, 3000, 1000, 1000]))
        == 297
    )
    assert ran(client, before, "mget", "hmget", "hdel", "zrem", "lrange", "set", "exists", "hget") == {
        "mget": 1,
        "hmget": 1,
        "hdel": 2,  # the fields and the list marks
        "zrem": 1,
        "lrange": 297,  # a list is looked for per customer released
        "set": 297,  # its marker
        "exists": 0,
        "hget": 1,  # the index's entry head
    }
    assert client.zrange("t:holds:c", 0, -1) == [b"u9"] and client.hkeys("t:held:c") == [b"u9"]


def test_drop_removes_a_customers_items_field_then_list(client: redis.Redis) -> None:
    hold(client, ("u1", [SHORT]))
    client.rpush("t:hold:c:u1", b'{"late":1}')
    keys = ["t:holds:c", "t:held:c", "t:bases:c", "t:lists:c"]
    assert holdscripts.DROP(client, keys, ["u1", "t:hold:c:u1"]) == [WHOLE, b'{"late":1}']
    assert client.exists("t:held:c", "t:hold:c:u1", "t:bases:c", "t:holds:c") == 0
    # Edge: a customer holding nothing -> no items.
    assert holdscripts.DROP(client, keys, ["u1", "t:hold:c:u1"]) == []


RELEASE_KEYS = ["t:holds:c", "t:delayed", "t:data", "t:index", "t:held:c", "t:bases:c", "t:lists:c"]


def release(client: redis.Redis, entry_customers: int = 100) -> int:
    args = ["c", "t:", "held-x", 100, 100, 7000, 3000, entry_customers, 100]
    return int(holdscripts.RELEASE(client, RELEASE_KEYS, args))


def test_release_moves_due_customers_into_entries_and_marks_them_out(client: redis.Redis) -> None:
    replayed = b'{"replay":true,"n":1}'
    hold(client, ("u1", [SHORT]), ("u2", [b'{"z":1}']), ("u3", [b'{"z":3}']), ("r1", [replayed]))
    client.set("t:holdout:c:u3", "queued")  # a bulk of u3's still out: looked at again later
    assert release(client, entry_customers=1) == 3
    entries = {k.decode(): json.loads(v) for k, v in client.hgetall("t:data").items()}
    items = sorted(json.dumps(e["items"]) for e in entries.values())
    # One customer per entry (ARGV[8]); the replayed customer in an entry of its own.
    assert sorted(entries) == ["held-x-1", "held-x-2", "held-x-3"]
    assert items == sorted(json.dumps([json.loads(x)]) for x in (WHOLE, b'{"z":1}', replayed))
    assert client.get("t:holdout:c:u1") == b"released" and 0 < client.pttl("t:holdout:c:u1") <= 7000
    assert client.zrange("t:holds:c", 0, -1) == [b"u3"] and client.get("t:holdout:c:u3") == b"queued"
    # Edge: no entry head for the connection -> -1 while customers are held, 0 when none.
    client.hdel("t:index", "c")
    assert release(client) == -1
    client.delete("t:holds:c")
    assert release(client) == 0


def test_del_if_deletes_only_the_keys_holding_the_value(client: redis.Redis) -> None:
    client.mset({"t:a": "queued", "t:b": "released"})
    assert holdscripts.DEL_IF(client, ["t:a", "t:b", "t:none"], ["queued"]) == 0
    assert client.exists("t:a") == 0 and client.get("t:b") == b"released"
    # A value per key: each key is compared with its own.
    client.mset({"t:a": "sending:1", "t:b": "sending:2", "t:c": "queued"})
    assert holdscripts.DEL_IF(client, ["t:a", "t:b", "t:c"], ["sending:1", "sending:9", "sending:3"]) == 0
    assert client.exists("t:a") == 0 and client.get("t:b") == b"sending:2" and client.get("t:c") == b"queued"


def test_mark_sets_each_marker_but_a_queued_one(client: redis.Redis) -> None:
    client.set("t:b", "queued", px=90000)
    client.set("t:c", "released", px=500)
    assert holdscripts.MARK(client, ["t:a", "t:b", "t:c"], [7000, "sending:1", "sending:2", "sending:3"]) == 2
    assert client.get("t:a") == b"sending:1" and 0 < client.pttl("t:a") <= 7000
    assert client.get("t:b") == b"queued" and client.pttl("t:b") > 7000  # an older bulk's: kept
    assert client.get("t:c") == b"sending:3" and client.pttl("t:c") > 500


# --- dead letters --------------------------------------------------------------------------------

DLQ = ["t:dlq", "t:dlq:data", "t:dlq:counts", "t:dlq:bytes", "t:dlq:shared", "t:dlq:refs"]
RECORD = json.dumps({"connection_id": "c", "base": "b:d1"})


def add_args(letter_id: str, record: str = RECORD) -> list[Any]:
    return [letter_id, 1, record, "c", "c:s1", "SHARED", "c:b:d1", '{"shared":"s1"}']


def test_dlq_add_counts_the_record_and_its_shared_copies_once(client: redis.Redis) -> None:
    assert dlqscripts.ADD(client, DLQ, add_args("l1")) == 1
    assert dlqscripts.ADD(client, DLQ, add_args("l2")) == 1
    base_len, shared_len = len('{"shared":"s1"}'), len("SHARED")
    assert client.hget("t:dlq:counts", "c") == b"2"
    assert int(client.hget("t:dlq:bytes", "c")) == 2 * len(RECORD) + base_len + shared_len
    assert client.hgetall("t:dlq:refs") == {b"c:b:d1": b"2", b"c:s1": b"1"}  # a new base refers them
    # Edge: written again under its id, a record replaces the old one (no count, no ref growth).
    assert dlqscripts.ADD(client, DLQ, add_args("l1")) == 1
    assert client.hget("t:dlq:counts", "c") == b"2" and client.hget("t:dlq:refs", "c:b:d1") == b"2"
    assert int(client.hget("t:dlq:bytes", "c")) == 2 * len(RECORD) + base_len + shared_len


def test_dlq_remove_releases_the_copies_with_the_last_letter(client: redis.Redis) -> None:
    dlqscripts.ADD(client, DLQ, add_args("l1"))
    dlqscripts.ADD(client, DLQ, add_args("l2"))
    assert dlqscripts.REMOVE(client, DLQ, ["l1", "unknown"]) == 1
    assert client.hget("t:dlq:counts", "c") == b"1" and client.hexists("t:dlq:shared", "c:b:d1")
    assert dlqscripts.REMOVE(client, DLQ, ["l2"]) == 1
    # The base released the batch's objects in turn: nothing left at all.
    assert client.exists(*DLQ) == 0
    # Edge: nothing to remove.
    assert dlqscripts.REMOVE(client, DLQ, ["l2"]) == 0


def test_dlq_add_then_trim_is_all_or_nothing_on_the_lock(client: redis.Redis) -> None:
    client.rpush("t:list", "a", "b", "c")
    client.set("t:lock", "tok")
    keys = [*DLQ, "t:list", "t:lock"]
    assert dlqscripts.ADD_THEN_TRIM(client, keys, ["other", 2, *add_args("l1")]) == -1
    assert client.exists("t:dlq", "t:dlq:data") == 0 and client.llen("t:list") == 3
    assert dlqscripts.ADD_THEN_TRIM(client, keys, ["tok", 2, *add_args("l1"), *add_args("l2")]) == 1
    assert client.zcard("t:dlq") == 2 and client.lrange("t:list", 0, -1) == [b"c"]
