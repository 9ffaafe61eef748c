"""The connector's Lua scripts (connector/lua/*.lua), each called directly through its wrapper
against a real redis-server: its effect, its reply, and an edge case each.  Their callers'
tests cover them too; these pin each script's own contract (the keys and arguments its header
names)."""

from __future__ import annotations

import re
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis

from connector import backlog, kept, regulations, tracestore
from connector.lua import Lua

LUA = Path(backlog.__file__).parent / "lua"
LUA_DIRS = (LUA, Path(backlog.__file__).parents[1] / "workers" / "delivery" / "lua")


@pytest.fixture
def client(redis_url: str) -> Iterator[redis.Redis]:
    c = redis.Redis.from_url(redis_url)
    yield c
    c.close()


def test_lua_files_joins_libraries_before_the_script(tmp_path: Path) -> None:
    (tmp_path / "a.lua").write_text("local function f() return 7 end")
    (tmp_path / "b.lua").write_text("return f()")
    script = Lua.files(tmp_path, "a.lua", "b.lua")
    assert script.source == "local function f() return 7 end\nreturn f()"


def test_lua_files_sends_code_not_the_files_comments(tmp_path: Path, client: redis.Redis) -> None:
    # The header documents KEYS/ARGV for readers; Redis gets empty lines in its place (scripts
    # sent whole with EVAL in a pipeline would carry it on every call), line numbers kept.
    (tmp_path / "s.lua").write_text(
        "-- KEYS[1]  key: a counter\n  -- indented note\nreturn redis.call('INCR', KEYS[1])"
    )
    script = Lua.files(tmp_path, "s.lua")
    assert script.source == "\n\nreturn redis.call('INCR', KEYS[1])"
    key = f"lua-test:{uuid.uuid4().hex}"
    assert script(client, [key], []) == 1
    assert client.eval(script.source, 1, key) == 2
    client.delete(key)
    shipped = [Lua.files(d, p.name).source for d in LUA_DIRS for p in sorted(d.glob("*.lua"))]
    assert shipped and not any(line.lstrip().startswith("--") for src in shipped for line in src.split("\n"))


def test_backlog_reserve_counts_within_the_bounds_and_refuses_past_them(client: redis.Redis) -> None:
    keys = ["t:events", "t:bytes", "t:flow"]
    assert backlog._RESERVE(client, keys, [3, 100, 5, 1000, 60]) == 1
    assert client.mget(keys[:2]) == [b"3", b"100"]
    assert client.hget("t:flow", "in") == b"3" and 0 < client.ttl("t:flow") <= 60
    # Past the event bound: refused, nothing changed.
    assert backlog._RESERVE(client, keys, [3, 1, 5, 1000, 60]) == 0
    assert backlog._RESERVE(client, keys, [1, 901, 5, 1000, 60]) == 0
    assert client.mget(keys[:2]) == [b"3", b"100"] and client.hget("t:flow", "in") == b"3"
    # Edge: an empty backlog admits one request larger than both bounds (else it never could),
    # without the flow key (KEYS[3] is optional); zero bytes leave the byte counter alone.
    assert backlog._RESERVE(client, ["u:events", "u:bytes"], [9, 0, 5, 10, 60]) == 1
    assert client.get("u:events") == b"9" and client.exists("u:bytes") == 0
    assert client.ttl("u:events") == -1  # the counters never expire


def test_backlog_release_clamps_at_zero_and_counts_the_flow(client: redis.Redis) -> None:
    client.mset({"t:events": 5, "t:bytes": 50})
    assert backlog._RELEASE(client, ["t:events", "t:bytes", "t:flow"], [2, 20, 3, 60]) == 3
    assert client.mget("t:events", "t:bytes") == [b"3", b"30"]
    assert client.hgetall("t:flow") == {b"out": b"2", b"calls": b"3"}
    # Edge: releasing more than is left deletes the counters (drift down is clamped).
    assert backlog._RELEASE(client, ["t:events", "t:bytes"], [7, 99]) == 0
    assert client.exists("t:events", "t:bytes") == 0
    # Bytes only: the events left are answered.
    client.mset({"t:events": 4, "t:bytes": 8})
    assert backlog._RELEASE(client, ["t:events", "t:bytes"], [0, 8]) == 4


def test_backlog_flow_ttl_is_set_by_a_fields_first_write_only(client: redis.Redis) -> None:
    """Redis counts commands: the hour's flow counters get their TTL when a field is first
    written (the hour's first batch), not an EXPIRE per batch; a counter recreated after it was
    lost (a Redis restart without persistence) gets it again."""
    client.mset({"t:events": 100, "t:bytes": 100})
    keys = ["t:events", "t:bytes", "t:flow"]
    before = calls(client)
    assert backlog._RESERVE(client, keys, [1, 1, 500, 5000, 60]) == 1  # 'in' first written
    backlog._RESERVE(client, keys, [1, 1, 500, 5000, 60])
    backlog._RELEASE(client, keys, [1, 1, 2, 60])  # 'out' and 'calls' first written
    backlog._RELEASE(client, keys, [1, 1, 2, 60])
    assert calls(client).get("expire", 0) - before.get("expire", 0) == 2
    assert 0 < client.ttl("t:flow") <= 60
    client.delete("t:flow")
    backlog._RELEASE(client, keys, [0, 0, 1, 60])  # only 'calls': recreated, with its TTL
    assert 0 < client.ttl("t:flow") <= 60


def test_backlog_reset_if_resets_only_unmoved_counters(client: redis.Redis) -> None:
    client.mset({"t:events": 4, "t:bytes": 40})
    assert backlog._RESET_IF(client, ["t:events", "t:bytes"], [b"4", b"39"]) == 0
    assert client.get("t:events") == b"4"
    assert backlog._RESET_IF(client, ["t:events", "t:bytes"], [b"4", b"40"]) == 1
    assert client.exists("t:events", "t:bytes") == 0
    # Edge: absent counters read as '0'.
    assert backlog._RESET_IF(client, ["t:events", "t:bytes"], [b"0", b"0"]) == 1


def test_regulation_finished_counts_down_and_settles_the_part(client: redis.Redis) -> None:
    client.hset("t:reg", mapping={"c1:left": 2, "c1:status": "RUNNING"})
    args = ["c1", "", "2026-01-01T00:00:00.000Z"]
    assert regulations._FINISHED_LUA(client, ["t:reg"], args) == b"RUNNING"
    assert regulations._FINISHED_LUA(client, ["t:reg"], args) == b"FINISHED"
    assert client.hmget("t:reg", "c1:status", "c1:done") == [b"FINISHED", b"2026-01-01T00:00:00.000Z"]
    # A refused deletion fails the part when it settles, with the answer as its detail.
    client.hset("t:reg", mapping={"c2:left": 2})
    assert regulations._FINISHED_LUA(client, ["t:reg"], ["c2", "refused: 400", "x"]) == b"RUNNING"
    assert regulations._FINISHED_LUA(client, ["t:reg"], ["c2", "", "y"]) == b"FAILED"
    assert client.hmget("t:reg", "c2:detail", "c2:status") == [b"refused: 400", b"FAILED"]
    # Edge: no such regulation -> nil, and nothing is created.
    assert regulations._FINISHED_LUA(client, ["t:gone"], args) is None
    assert client.exists("t:gone") == 0


def test_kept_extend_ttl_only_ever_grows_a_ttl(client: redis.Redis) -> None:
    client.set("t:count", 1, ex=100)
    assert client.eval(kept._EXTEND_TTL, 1, "t:count", 500) == 1
    assert 400 < client.ttl("t:count") <= 500
    assert client.eval(kept._EXTEND_TTL, 1, "t:count", 50) == 0  # never shortened
    assert client.ttl("t:count") > 400
    # Edge: a key without expiry (TTL -1) is given one; no key (-2) answers 0 (EXPIRE of none).
    client.set("t:forever", 1)
    assert client.eval(kept._EXTEND_TTL, 1, "t:forever", 30) == 1 and client.ttl("t:forever") > 0
    assert client.eval(kept._EXTEND_TTL, 1, "t:none", 30) == 0


def test_trace_write_keeps_the_first_head_and_last_step_lines(client: redis.Redis) -> None:
    bucket = "t:bucket"
    args = [60, 2, 2, 1, b"d:x", b"shared", b"i:e1", b"h1\nh2\nh3\n", b"s1\ns2\ns3\n"]
    charged, size = client.eval(tracestore._WRITE_LUA, 1, bucket, *args)
    value = client.hget(bucket, "i:e1")
    assert value == b"h1\nh2\n\x1es2\ns3\n"
    overhead = tracestore.FIELD_OVERHEAD_BYTES
    assert charged == size == (3 + 6 + overhead) + len(value) + len(b"i:e1") + overhead
    assert 0 < client.ttl(bucket) <= 60
    # Edge: a second write appends to the event's lines (cut again) and shares the body once.
    more = [60, 2, 2, 1, b"d:x", b"shared", b"i:e1", b"h4\n", b"s4\n"]
    charged2, size2 = client.eval(tracestore._WRITE_LUA, 1, bucket, *more)
    assert client.hget(bucket, "i:e1") == b"h1\nh2\n\x1es3\ns4\n"
    assert charged2 == 0 and size2 == size and client.hget(bucket, "z") == str(size).encode()


def calls(client: redis.Redis) -> dict[str, int]:
    """Commands this server ran so far, by name (``INFO commandstats``; a script's own count)."""
    return {k.removeprefix("cmdstat_"): int(v["calls"]) for k, v in client.info("commandstats").items()}


def test_trace_write_reads_and_writes_a_whole_batch_in_a_few_commands(client: redis.Redis) -> None:
    """Redis counts commands: a batch's trace costs one HMGET and one HSET per thousand fields,
    never a read and a write per event; an event twice in a batch and a body shared twice come
    out as if written one after the other."""
    bucket = "t:many"
    events = 2500
    args: list[object] = [60, 5, 5, 2, b"d:x", b"body", b"d:x", b"other"]
    for n in range(events):
        args += [f"i:e{n}".encode(), b"h\n", f"s{n}\n".encode()]
    args += [b"i:e7", b"h2\n", b"again\n"]
    before = calls(client)
    charged, size = client.eval(tracestore._WRITE_LUA, 1, bucket, *args)
    after = calls(client)
    ran = {k: after.get(k, 0) - before.get(k, 0) for k in ("hget", "hset", "hsetnx", "hmget")}
    assert ran == {"hget": 0, "hset": 3, "hsetnx": 0, "hmget": 3}  # 2,503 fields read, 2,502 written
    assert client.hget(bucket, "d:x") == b"body"  # the first of a shared body's copies
    assert client.hget(bucket, "i:e7") == b"h\nh2\n\x1es7\nagain\n"
    assert client.hget(bucket, "i:e2499") == b"h\n\x1es2499\n"
    assert client.hlen(bucket) == events + 2  # the events, the body and the size
    stored = sum(
        len(k) + len(v) + tracestore.FIELD_OVERHEAD_BYTES
        for k, v in client.hgetall(bucket).items()
        if k != b"z"
    )
    assert charged == size == stored


def test_trace_budget_forgets_expired_buckets_and_gives_up_the_oldest(client: redis.Redis) -> None:
    k = ["t:zset", "t:sizes", "t:total"]
    now = 1_000_000
    triples = ["m:c:1", 100, now - 1, "m:c:2", 100, now + 10, "m:c:3", 100, now + 20]
    # m:c:1 expired by now: forgotten (not given up); over a budget of 150: the oldest live one.
    assert client.eval(tracestore._BUDGET_LUA, 3, *k, 150, now, *triples) == [b"m:c:2"]
    assert client.zrange("t:zset", 0, -1) == [b"m:c:3"]
    assert client.get("t:total") == b"100" and client.hkeys("t:sizes") == [b"m:c:3"]
    # Edge: no triples (the total read back): a smaller budget gives up the last bucket, and
    # with the total at zero its key is deleted.
    assert client.eval(tracestore._BUDGET_LUA, 3, *k, 50, now) == [b"m:c:3"]
    assert client.exists(*k) == 0
    # Expired buckets are forgotten (not given up) however large the budget.
    client.eval(tracestore._BUDGET_LUA, 3, *k, 10**9, now, "m:c:4", 70, now + 5)
    assert client.eval(tracestore._BUDGET_LUA, 3, *k, 10**9, now + 30) == []
    assert client.exists(*k) == 0


def test_trace_scripts_constants_are_the_modules(client: redis.Redis) -> None:
    write = (LUA / "tracestore_write.lua").read_text()
    budget = (LUA / "tracestore_budget.lua").read_text()
    assert re.search(r"local overhead = (\d+)", write)[1] == str(tracestore.FIELD_OVERHEAD_BYTES)  # type: ignore[index]
    assert re.search(r"local max_evicted = (\d+)", budget)[1] == str(tracestore.MAX_EVICTED_PER_WRITE)  # type: ignore[index]
