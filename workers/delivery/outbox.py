"""The Segment outbox's Redis side: append with dedupe, peek, guarded trim, the flusher lock,
retry state, and the scheduler's sweep.

Pure Redis (no HTTP client): the scheduler process imports it without the delivery engine.
The flushing logic lives in :mod:`workers.delivery.flusher`.
"""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import orjson
import redis

from connector.keys import Keys
from connector.lua import Lua

LOCK_TTL = 60.0  # > one request (connect + read + slow body); refreshed between batches
SWEEP_MARK_TTL = 2.0

# The scripts (workers/delivery/lua/outbox_*.lua name their keys and arguments).
_LUA = Path(__file__).parent / "lua"
_APPEND = Lua.files(_LUA, "outbox_append.lua")
_APPEND_MANY = Lua.files(_LUA, "outbox_append_many.lua")
_TRIM_IF_OWNER = Lua.files(_LUA, "outbox_trim_if_owner.lua")
_REFRESH = Lua.files(_LUA, "outbox_refresh.lua")
_UNLOCK = Lua.files(_LUA, "outbox_unlock.lua")
_SWEEP = Lua.files(_LUA, "outbox_sweep.lua")


def _text(value: bytes | str | None) -> str:
    if value is None:
        return ""
    return value.decode() if isinstance(value, bytes) else value


class Outbox:
    def __init__(self, client: redis.Redis, keys: Keys, connection_id: str) -> None:
        self.client = client
        self.keys = keys
        self.connection_id = connection_id
        self.list_key = keys.outbox(connection_id)
        self.state_key = keys.outbox_state(connection_id)
        self.lock_key = keys.outbox_lock(connection_id)

    def append(self, item: Mapping[str, Any], queue: str, *, dedupe_key: str | None, keep: float) -> bool:
        """Append one item; with ``dedupe_key`` only the first append of that key counts."""
        ledger = self.keys.ledger(self.connection_id, dedupe_key) if dedupe_key else self.list_key
        appended = _APPEND(
            self.client,
            [self.list_key, self.keys.outboxes, self.state_key, ledger],
            [orjson.dumps(item), self.connection_id, queue, str(max(1, int(keep))) if dedupe_key else "0"],
        )
        return int(appended) == 1

    def append_many(self, items: Sequence[Mapping[str, Any]], queue: str) -> int:
        if not items:
            return 0
        return int(
            _APPEND_MANY(
                self.client,
                [self.list_key, self.keys.outboxes, self.state_key],
                [self.connection_id, queue, *(orjson.dumps(i) for i in items)],
            )
        )

    def length(self) -> int:
        return int(self.client.llen(self.list_key))

    def peek(self, count: int) -> list[bytes]:
        return [
            r if isinstance(r, bytes) else r.encode()
            for r in self.client.lrange(self.list_key, 0, max(0, count - 1))
        ]

    def lock(self, token: str, ttl: float = LOCK_TTL) -> bool:
        return bool(self.client.set(self.lock_key, token, nx=True, px=int(ttl * 1000)))

    def refresh(self, token: str, ttl: float = LOCK_TTL) -> bool:
        return int(_REFRESH(self.client, [self.lock_key], [token, int(ttl * 1000)])) == 1

    def unlock(self, token: str) -> None:
        _UNLOCK(self.client, [self.lock_key], [token])

    def remove(self, raws: Sequence[bytes]) -> int:
        """Take these exact items out of the list, wherever they are (each is unique: it
        carries its event's id).  Called by the flusher holding the lock."""
        pipe = self.client.pipeline(transaction=True)
        for raw in raws:
            pipe.lrem(self.list_key, 1, raw)  # type: ignore[arg-type]  # bytes are fine
        return sum(int(n) for n in pipe.execute())

    def trim(self, token: str, count: int) -> bool:
        """Drop the first ``count`` items, only while we hold the lock."""
        return int(_TRIM_IF_OWNER(self.client, [self.list_key, self.lock_key], [token, count])) >= 0

    def state(self) -> dict[str, str]:
        return {_text(k): _text(v) for k, v in self.client.hgetall(self.state_key).items()}

    def set_state(self, **fields: Any) -> None:
        self.client.hset(self.state_key, mapping={k: str(v) for k, v in fields.items()})

    def clear_retry_state(self) -> None:
        self.client.hdel(self.state_key, "attempts", "next_at", "delay", "first_failure_at", "history")

    def forget_ledger(self, idempotency_key: str) -> None:
        self.client.delete(self.keys.ledger(self.connection_id, idempotency_key))


def sweep(client: redis.Redis, keys: Keys, *, now: float | None = None) -> list[tuple[str, str]]:
    """(connection id, queue) of outboxes that want a flush task now; marks them for a moment so
    that concurrent schedulers and quick successive sweeps publish one flush, not many."""
    now = time.time() if now is None else now
    due: list[tuple[str, str]] = []
    for raw in client.smembers(keys.outboxes):
        cid = _text(raw)
        queue = _SWEEP(
            client,
            [
                keys.outbox(cid),
                keys.outboxes,
                keys.outbox_lock(cid),
                keys.outbox_state(cid),
                keys.outbox_swept(cid),
            ],
            [cid, now, int(SWEEP_MARK_TTL * 1000)],
        )
        if queue:
            due.append((cid, _text(queue)))
    return due


def unmark_swept(client: redis.Redis, keys: Keys, connection_id: str) -> None:
    client.delete(keys.outbox_swept(connection_id))
