"""Per-connection bound on accepted, unfinished work (SPEC 5, backpressure; SPEC 6).

Pure Redis, no HTTP client: the web process imports this module.

Two counters per connection: EVENTS (``{p}backlog:{c}``) and the BYTES they occupy in Redis
(``{p}backlog_bytes:{c}``).  The ingest ``reserve``s one event and the bytes of its broker
message before publishing (and ``release``s them if the publish fails); the workers ``release``
an event and its share of bytes when the event is finished -- delivered, skipped, a duplicate,
or dead-lettered.  Parked work (retries, throttling) keeps its reservation: it still occupies
Redis.  Over either bound ingest answers 429.

The counters never expire.  An expiring counter (the former 15-minute TTL refreshed by traffic)
lapsed during a long outage -- nothing finishes, nothing new comes in -- and the next burst was
admitted on top of everything still queued, many times the bound.

Drift, and how it heals:
- a worker killed after releasing but before acknowledging its task runs the task again and
  releases again: the counters drift *down* (admit a little more), bounded by crashes x batch;
  ``release`` clamps at zero;
- a reservation for work that vanished without release (an ingest process killed between
  reserve and publish, a Redis error between publish and release) drifts them *up*.
  :func:`reconcile` (run by the scheduler) resets a connection's counters when nothing of the
  deployment can hold its work -- its queues, the unacknowledged messages, the delayed store,
  its hold window (upserts held for coalescing, ``{p}holds:{c}``) and its Segment outbox all
  empty -- and the counters did not move between two looks some time
  apart (so an ingest between its reserve and its publish is never mistaken for drift).
The bound protects Redis memory; it is a fence, not an accounting ledger.
"""

from __future__ import annotations

import time
from pathlib import Path

import redis

from connector.keys import Keys
from connector.lua import Lua

# The scripts (connector/lua/backlog_*.lua name their keys and arguments).
_LUA = Path(__file__).parent / "lua"
_RESERVE = Lua.files(_LUA, "backlog_reserve.lua")
_RELEASE = Lua.files(_LUA, "backlog_release.lua")
_RESET_IF = Lua.files(_LUA, "backlog_reset_if.lua")

UNLIMITED = 2**62


def reserve(
    client: redis.Redis,
    connection_id: str,
    n: int,
    limit: int,
    *,
    stored_bytes: int = 0,
    bytes_limit: int = UNLIMITED,
    keys: Keys | None = None,
    flow: bool = False,
) -> bool:
    """Atomically add ``n`` events and ``stored_bytes`` bytes unless that would pass a bound;
    True when admitted.  ``flow``: count them as arrivals of this hour (the forecast)."""
    if n <= 0 and stored_bytes <= 0:
        return True
    k = keys or Keys.from_env()
    redis_keys = [k.backlog(connection_id), k.backlog_bytes(connection_id)]
    if flow:
        redis_keys.append(k.quota_hour(connection_id, hour_of(time.time())))
    admitted = _RESERVE(
        client,
        redis_keys,
        [max(0, int(n)), max(0, int(stored_bytes)), int(limit), int(bytes_limit), FLOW_TTL_SECONDS],
    )
    return int(admitted) == 1


def release(
    client: redis.Redis,
    connection_id: str,
    n: int,
    stored_bytes: int = 0,
    *,
    keys: Keys | None = None,
    calls: int | None = None,
) -> None:
    """``calls``: not None for work towards Voucherify -- the events finished and the calls
    made for them are counted in this hour's flow (the forecast's calls per event)."""
    if n <= 0 and stored_bytes <= 0 and not calls:
        return
    k = keys or Keys.from_env()
    redis_keys = [k.backlog(connection_id), k.backlog_bytes(connection_id)]
    args = [max(0, int(n)), max(0, int(stored_bytes))]
    if calls is not None:
        redis_keys.append(k.quota_hour(connection_id, hour_of(time.time())))
        args += [max(0, int(calls)), FLOW_TTL_SECONDS]
    _RELEASE(client, redis_keys, args)


# The forecast's hourly flow counters (arrivals, events finished, calls made) live two hours.
FLOW_TTL_SECONDS = 3 * 3600


def hour_of(epoch: float) -> int:
    return int(epoch // 3600)


def current(client: redis.Redis, connection_id: str, *, keys: Keys | None = None) -> int:
    raw = client.get((keys or Keys.from_env()).backlog(connection_id))
    return int(raw) if raw is not None else 0


def current_bytes(client: redis.Redis, connection_id: str, *, keys: Keys | None = None) -> int:
    raw = client.get((keys or Keys.from_env()).backlog_bytes(connection_id))
    return int(raw) if raw is not None else 0


def snapshot(client: redis.Redis, connection_id: str, *, keys: Keys | None = None) -> tuple[bytes, bytes]:
    """The raw counter values, for :func:`reset_if_unchanged`."""
    k = keys or Keys.from_env()
    events, stored = client.mget([k.backlog(connection_id), k.backlog_bytes(connection_id)])
    return (_raw(events), _raw(stored))


def reset_if_unchanged(
    client: redis.Redis, connection_id: str, seen: tuple[bytes, bytes], *, keys: Keys | None = None
) -> bool:
    k = keys or Keys.from_env()
    return (
        int(_RESET_IF(client, [k.backlog(connection_id), k.backlog_bytes(connection_id)], [seen[0], seen[1]]))
        == 1
    )


def reconcile(
    client: redis.Redis,
    connections: list[tuple[str, list[str]]],
    *,
    interval: float,
    keys: Keys | None = None,
) -> list[str]:
    """Reset the counters of connections that have drifted up (see the module doc).

    ``connections``: (connection id, the broker queues its work travels on).  Called every
    ``interval`` seconds; a connection is reset at the second consecutive look that finds it
    idle with unchanged counters.  Returns the ids reset now.
    """
    k = keys or Keys.from_env()
    if not connections:
        return []
    now = time.time()
    pipe = client.pipeline(transaction=False)
    pipe.hlen(k.broker_unacked)
    pipe.zcard(k.delayed)
    for connection_id, queues in connections:
        pipe.mget([k.backlog(connection_id), k.backlog_bytes(connection_id), k.backlog_idle(connection_id)])
        pipe.llen(k.outbox(connection_id))
        # Upserts waiting in the hold window are work too (reserved at ingest, released when
        # sent): uncounted here, a reset let the ingest admit them twice over the bound.
        pipe.zcard(k.holds(connection_id))
        for queue in queues:
            pipe.llen(k.broker_queue(queue))
    results = pipe.execute()
    deployment_busy = bool(results[0]) or bool(results[1])
    position = 2
    reset: list[str] = []
    for connection_id, queues in connections:
        (events, stored, idle_mark), outbox_len, held = results[position : position + 3]
        queue_lens = results[position + 3 : position + 3 + len(queues)]
        position += 3 + len(queues)
        seen = (_raw(events), _raw(stored))
        if seen == (b"0", b"0"):
            if idle_mark is not None:
                client.delete(k.backlog_idle(connection_id))
            continue
        idle = not deployment_busy and not outbox_len and not held and not any(queue_lens)
        if not idle:
            if idle_mark is not None:
                client.delete(k.backlog_idle(connection_id))
            continue
        mark = seen[0] + b"/" + seen[1]
        previous, _, marked_at = (_raw(idle_mark) if idle_mark else b"").partition(b"@")
        # The first look must be at least half an interval old (several schedulers may run).
        old_enough = previous == mark and now - _float(marked_at) >= interval / 2
        if old_enough and reset_if_unchanged(client, connection_id, seen, keys=k):
            client.delete(k.backlog_idle(connection_id))
            reset.append(connection_id)
            continue
        if previous != mark:
            client.set(
                k.backlog_idle(connection_id),
                mark + b"@" + f"{now:.3f}".encode(),
                px=max(1000, int(interval * 3000)),
            )
    return reset


def _raw(value: bytes | str | None) -> bytes:
    if value is None:
        return b"0"
    return value.encode() if isinstance(value, str) else value


def _float(raw: bytes) -> float:
    try:
        return float(raw)
    except ValueError:
        return float("inf")
