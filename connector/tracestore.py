"""Where event traces live in Redis (SPEC 12, 16): a few hashes ("buckets"), not keys per event.

A key per event cost Redis ~100 bytes of its own plus an expiry entry, and repeated JSON key
names cost more than the records' content: a 2,000-event batch made ~2.5 MB of traces.  Now a
connection's traces are written to its current bucket, one hash per (kind, connection, bucket)::

    i:{id}       the event's lines: head lines (received, mapping; the first MAX_HEAD kept),
                 a 0x1e, step lines (attempts, waits, outcomes; the newest MAX_STEPS kept)
    d:{digest}   a record body that several lines of one write share (a batch's "received",
                 "mapping" and "outcome" records are alike but for the time and the subject)
    z            what the bucket has been charged (its size, for the roll-over)

A line is ``{t: ms, base 36} TAB {JSON | @digest} [TAB {the event's own fields: subject}]``.
Kinds: ``m`` main (delivered, retried, dead-lettered), ``n`` minor (skipped), ``r`` refused at
the ingest (minor too, kept an hour).  A bucket is full at its class's budget / BUCKETS_PER_CLASS
and a new one starts; each class's buckets are a zset by expiry, and over its budget the oldest
buckets are given up whole -- traces are diagnostics and give way first.  A bucket expires its
retention after its last write.
"""

from __future__ import annotations

import hashlib
import logging
import time
from collections import Counter
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any, Final

import orjson
import redis

from connector.keys import Keys
from connector.lua import Lua

log = logging.getLogger("connector.trace")

MAIN: Final = "main"
MINOR: Final = "minor"
KIND_MAIN: Final = "m"
KIND_MINOR: Final = "n"
KIND_REFUSED: Final = "r"
CLASS_OF: Final = {KIND_MAIN: MAIN, KIND_MINOR: MINOR, KIND_REFUSED: MINOR}

EVENT: Final = b"i:"
SHARED: Final = b"d:"
STEPS: Final = b"\x1e"  # between head and step lines (orjson never writes a raw control char)
# What a hash field costs Redis besides its name and value (its entry, two string headers).
FIELD_OVERHEAD_BYTES: Final = 64
BUCKETS_PER_CLASS: Final = 32
MIN_BUCKET_BYTES: Final = 512
MAX_BUCKET_BYTES: Final = 1 << 20
# An event's own fields: kept out of the shared bodies (a subject differs per event).
OWN_FIELDS: Final = ("subject",)
# At most this many buckets given up per write (the rest at the next one).
MAX_EVICTED_PER_WRITE: Final = 64

Traced = tuple[str, str]  # (connection id, event id)

# The scripts (connector/lua/tracestore_*.lua name their keys and arguments), sent with EVAL:
# the writes run in a pipeline, where a missing EVALSHA script cannot be retried.  Their
# constants are FIELD_OVERHEAD_BYTES and MAX_EVICTED_PER_WRITE (a test checks they agree).
_LUA: Final = Path(__file__).parent / "lua"
_WRITE_LUA: Final = Lua.files(_LUA, "tracestore_lines.lua", "tracestore_write.lua").source
_BUDGET_LUA: Final = Lua.files(_LUA, "tracestore_budget.lua").source

_UNBOUNDED: Final = 1 << 62


def as_text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value


def _b36(n: int) -> bytes:
    digits = b"0123456789abcdefghijklmnopqrstuvwxyz"
    out = bytearray()
    while True:
        n, r = divmod(n, 36)
        out.append(digits[r])
        if not n:
            return bytes(reversed(out))


def class_budgets(budget_bytes: int, minor_share: float) -> dict[str, int]:
    """Each class's budget in bytes (``_UNBOUNDED`` with no budget)."""
    if budget_bytes <= 0:
        return {MAIN: _UNBOUNDED, MINOR: _UNBOUNDED}
    share = min(1.0, max(0.0, minor_share))
    return {MINOR: int(budget_bytes * share), MAIN: int(budget_bytes * (1 - share))}


def bucket_bytes(class_budget: int) -> int:
    """When a bucket is full: a small share of its class's budget (giving one up frees little)."""
    return max(MIN_BUCKET_BYTES, min(MAX_BUCKET_BYTES, class_budget // BUCKETS_PER_CLASS))


def encode(records: Iterable[bytes]) -> tuple[list[bytes], dict[bytes, bytes]]:
    """Lines of ``records`` (each a JSON object with ``t``), and the bodies several of them share
    (field -> body): a body written by more than one record is stored once per bucket."""
    split: list[tuple[int, bytes, bytes]] = []
    for raw in records:
        record = orjson.loads(raw)
        t = round(float(record.pop("t", 0) or 0) * 1000)
        own = {k: record.pop(k) for k in OWN_FIELDS if k in record}
        split.append((t, orjson.dumps(record), orjson.dumps(own) if own else b""))
    counts = Counter(body for _, body, _ in split)
    lines: list[bytes] = []
    shared: dict[bytes, bytes] = {}
    for t, body, mine in split:
        if counts[body] > 1:
            digest = hashlib.blake2b(body, digest_size=8).hexdigest().encode()
            shared[SHARED + digest] = body
            line = _b36(t) + b"\t@" + digest + (b"\t" + mine if mine else b"")
        else:
            inline = body if not mine else orjson.dumps({**orjson.loads(body), **orjson.loads(mine)})
            line = _b36(t) + b"\t" + inline
        lines.append(line + b"\n")
    return lines, shared


def write(
    client: redis.Redis,
    keys: Keys,
    groups: Mapping[tuple[str, str], Mapping[str, tuple[list[bytes], list[bytes]]]],
    *,
    ttls: Mapping[str, int],
    budgets: Mapping[str, int],
    max_head: int,
    max_steps: int,
) -> None:
    """Write each (kind, connection)'s events -- id -> (head records, step records), JSON --
    to its current bucket, then charge the budget and give up the oldest buckets over it."""
    if not groups:
        return
    now_ms = int(time.time() * 1000)
    order = list(groups)
    pointers = client.mget([keys.trace_current(kind, cid) for kind, cid in order])
    if not all(pointers):
        # No current bucket (the first write, or the last one's retention over): the first
        # writer names it; every writer then reads which one it is.  It lasts its retention
        # from then on, not renewed per write (a command per write): a new bucket follows.
        pipe = client.pipeline(transaction=False)
        for kind, cid in order:
            pipe.set(keys.trace_current(kind, cid), _b36(now_ms), nx=True, ex=ttls[kind])
            pipe.get(keys.trace_current(kind, cid))
        pointers = pipe.execute()[1::2]
    pipe = client.pipeline(transaction=False)
    buckets: list[str] = []
    for (kind, cid), seq in zip(order, pointers, strict=True):
        events = groups[(kind, cid)]
        ids = list(events)
        head_lines, head_shared = encode(r for i in ids for r in events[i][0])
        step_lines, step_shared = encode(r for i in ids for r in events[i][1])
        args: list[Any] = [ttls[kind], max_head, max_steps]
        shared = {**head_shared, **step_shared}
        args.append(len(shared))
        for field, body in shared.items():
            args.extend((field, body))
        h = s = 0
        for event_id in ids:
            nh, ns = len(events[event_id][0]), len(events[event_id][1])
            args.extend(
                (
                    EVENT + event_id.encode(),
                    b"".join(head_lines[h : h + nh]),
                    b"".join(step_lines[s : s + ns]),
                )
            )
            h, s = h + nh, s + ns
        seq_text = as_text(seq or _b36(now_ms))
        buckets.append(seq_text)
        pipe.eval(_WRITE_LUA, 1, keys.trace_bucket(kind, cid, seq_text), *args)
    results = pipe.execute()
    by_class: dict[str, list[Any]] = {MAIN: [], MINOR: []}
    roll = client.pipeline(transaction=False)
    rolled = False
    for (kind, cid), seq_text, (charged, size) in zip(order, buckets, results, strict=True):
        cls = CLASS_OF[kind]
        by_class[cls].extend((f"{kind}:{cid}:{seq_text}", int(charged), now_ms + ttls[kind] * 1000))
        if int(size) >= bucket_bytes(budgets[cls]):
            # Full: the next write starts a new bucket (a bucket given up frees a small share).
            roll.set(keys.trace_current(kind, cid), _b36(now_ms + 1), ex=ttls[kind])
            rolled = True
    if rolled:
        roll.execute()
    evicted: list[str] = []
    for cls, triples in by_class.items():
        if triples:
            k = [keys.traces(cls), keys.traces_sizes(cls), keys.traces_bytes(cls)]
            gone = client.eval(_BUDGET_LUA, 3, *k, min(budgets[cls], _UNBOUNDED), now_ms, *triples)
            evicted.extend(as_text(m) for m in gone or ())
    if evicted:
        client.unlink(*(keys.trace_bucket(*m.split(":", 2)) for m in evicted))
        log.info("trace budget: gave up the oldest traces", extra={"buckets": len(evicted)})


def buckets_of(
    client: redis.Redis, keys: Keys, connection: str | None = None
) -> dict[str, list[tuple[str, str]]]:
    """Each connection's (only ``connection``'s when given) buckets: (kind, key), oldest first
    within a class."""
    pipe = client.pipeline(transaction=False)
    for cls in (MAIN, MINOR):
        pipe.zrange(keys.traces(cls), 0, -1)
    found: dict[str, list[tuple[str, str]]] = {}
    for members in pipe.execute():
        for member in members:
            kind, cid, seq = as_text(member).split(":", 2)
            if connection is None or cid == connection:
                found.setdefault(cid, []).append((kind, keys.trace_bucket(kind, cid, seq)))
    return found


def _decode(value: bytes, shared: Mapping[bytes, bytes | None]) -> list[dict[str, Any]]:
    records: list[dict[str, Any]] = []
    for line in value.replace(STEPS, b"").split(b"\n"):
        if not line:
            continue
        parts = line.split(b"\t", 2)
        if len(parts) < 2:
            continue
        if parts[1].startswith(b"@"):
            body = shared.get(SHARED + parts[1][1:])
            if body is None:
                continue
            record = orjson.loads(body)
        else:
            record = orjson.loads(parts[1])
        if len(parts) == 3:
            record.update(orjson.loads(parts[2]))
        records.append({"t": int(parts[0], 36) / 1000, **record})
    return records


def find(
    client: redis.Redis, keys: Keys, event_id: str, connection: str | None = None
) -> dict[str, list[dict[str, Any]]]:
    """Every connection's records of ``event_id`` (only ``connection``'s when given), unordered;
    connections without records are left out."""
    field = EVENT + event_id.encode()
    where = [(cid, key) for cid, found in buckets_of(client, keys, connection).items() for _, key in found]
    if not where:
        return {}
    pipe = client.pipeline(transaction=False)
    for _, key in where:
        pipe.hget(key, field)
    values = pipe.execute()
    hits = [(cid, key, v) for (cid, key), v in zip(where, values, strict=True) if v]
    if not hits:
        return {}
    pipe = client.pipeline(transaction=False)
    wanted: list[list[bytes]] = []
    for _, key, value in hits:
        digests = sorted({SHARED + p.split(b"\t", 2)[1][1:] for p in value.split(b"\n") if b"\t@" in p})
        wanted.append(digests)
        if digests:
            pipe.hmget(key, digests)
    bodies = iter(pipe.execute())
    found: dict[str, list[dict[str, Any]]] = {}
    for (cid, _, value), digests in zip(hits, wanted, strict=True):
        shared = dict(zip(digests, next(bodies), strict=True)) if digests else {}
        records = _decode(value, shared)
        if records:
            found.setdefault(cid, []).extend(records)
    return found


def drop(client: redis.Redis, keys: Keys, traced: Iterable[Traced], newest: int = 4) -> None:
    """Delete the records of ``traced`` from the newest ``newest`` main buckets of their
    connections: delivered events sampled out, whose earlier records (received, mapping) were
    written moments before.  (Their bytes stay charged until the bucket goes: the budget errs
    on the safe side.)"""
    by_cid: dict[str, list[bytes]] = {}
    for cid, event_id in traced:
        by_cid.setdefault(cid, []).append(EVENT + event_id.encode())
    if not by_cid:
        return
    pipe = client.pipeline(transaction=False)
    for cid, found in buckets_of(client, keys).items():
        fields = by_cid.get(cid, [])
        main = [key for kind, key in found if kind == KIND_MAIN][-newest:]
        for key in main if fields else []:
            pipe.hdel(key, *fields)
    pipe.execute()


def forget(client: redis.Redis, keys: Keys, connection: str, ids: Iterable[str]) -> int:
    """Delete ``connection``'s traces of ``ids`` from every bucket; how many had records."""
    fields = sorted({EVENT + i.encode() for i in ids})
    found = [key for _, key in buckets_of(client, keys, connection).get(connection, [])]
    if not fields or not found:
        return 0
    pipe = client.pipeline(transaction=False)
    for key in found:
        for field in fields:
            pipe.hdel(key, field)
    results = pipe.execute()
    n = len(fields)
    return sum(1 for j in range(n) if any(results[b * n + j] for b in range(len(found))))


def with_subjects(client: redis.Redis, keys: Keys, connection: str, digests: Iterable[str]) -> set[str]:
    """The ids of ``connection``'s traces whose mapping names one of the subject ``digests``
    (a deletion forgets them, SPEC 14)."""
    markers = [b'"subject":"' + d.encode() + b'"' for d in digests]
    ids: set[str] = set()
    if not markers:
        return ids
    for _, key in buckets_of(client, keys, connection).get(connection, []):
        for field, value in client.hscan_iter(key, match=EVENT.decode() + "*", count=1000):
            if any(m in value for m in markers):
                ids.add(as_text(field)[len(EVENT) :])
    return ids
