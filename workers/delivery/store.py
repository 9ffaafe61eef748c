"""Delayed work in Redis: retries, throttled calls, busy keys and budget overruns wait here.

Never Celery countdowns/ETAs: with the Redis transport an unacknowledged message is redelivered
after the visibility timeout, so a long ETA would run many times.  Instead::

    park ──> ZADD {p}delayed <due ms> <id>  +  HSET {p}delayed:data <id> <json>   (one MULTI)
                    │
    scheduler ── claim_due (Lua, atomic): due ids get score now+lease, payloads returned
                    │
                 publish connector.deliver to the entry's queue
                    │
                 ack: ZREM + HDEL (MULTI)

Publishing happens BEFORE the ack: a scheduler that dies in between leaves the entry leased; once
the lease runs out it is due again and published a second time, which the ledger absorbs.  The
lease also makes concurrent schedulers safe: an entry claimed by one is invisible to the others
until its lease expires.
"""

from __future__ import annotations

import time
import uuid
from dataclasses import dataclass
from pathlib import Path

import orjson
import redis
from redis.client import Pipeline

from connector.contract import DeliveryItem
from connector.keys import Keys
from connector.lua import Lua

# Claims the due entries (workers/delivery/lua/store_claim_due.lua).
_CLAIM_DUE = Lua.files(Path(__file__).parent / "lua", "store_claim_due.lua")


@dataclass(frozen=True)
class Parked:
    connection_id: str
    direction: str
    queue: str
    items: list[DeliveryItem]
    due: float  # epoch seconds
    reason: str = "retry"
    id: str = ""

    def to_json(self) -> bytes:
        return orjson.dumps(
            {
                "connection_id": self.connection_id,
                "direction": self.direction,
                "queue": self.queue,
                "items": self.items,
                "due": self.due,
                "reason": self.reason,
            }
        )

    @classmethod
    def from_json(cls, entry_id: str, raw: bytes | str) -> Parked:
        data = orjson.loads(raw)
        return cls(
            connection_id=data["connection_id"],
            direction=data["direction"],
            queue=data["queue"],
            items=data["items"],
            due=float(data.get("due") or 0.0),
            reason=data.get("reason") or "retry",
            id=entry_id,
        )


def _ms(seconds: float) -> int:
    return int(seconds * 1000)


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value


class DelayedStore:
    def __init__(self, client: redis.Redis, keys: Keys) -> None:
        self.client = client
        self.keys = keys

    def add(self, entries: list[Parked], pipe: Pipeline | None = None) -> list[str]:
        """The entries stored (their ids), in one transaction; or by ``pipe`` when given, a
        caller's transaction that stores them together with what they must not be without."""
        if not entries:
            return []
        ids: list[str] = []
        own = pipe is None
        pipe = self.client.pipeline(transaction=True) if pipe is None else pipe
        for entry in entries:
            entry_id = entry.id or uuid.uuid4().hex
            ids.append(entry_id)
            pipe.hset(self.keys.delayed_data, entry_id, entry.to_json())
            pipe.zadd(self.keys.delayed, {entry_id: _ms(entry.due)})
        if own:
            pipe.execute()
        return ids

    def claim_due(self, *, now: float | None = None, limit: int = 100, lease: float = 30.0) -> list[Parked]:
        now = time.time() if now is None else now
        flat = _CLAIM_DUE(
            self.client,
            [self.keys.delayed, self.keys.delayed_data],
            [_ms(now), int(limit), _ms(now + lease)],
        )
        return [Parked.from_json(_text(flat[i]), flat[i + 1]) for i in range(0, len(flat), 2)]

    def ack(self, entry_ids: list[str]) -> None:
        if not entry_ids:
            return
        pipe = self.client.pipeline(transaction=True)
        pipe.zrem(self.keys.delayed, *entry_ids)
        pipe.hdel(self.keys.delayed_data, *entry_ids)
        pipe.execute()

    def size(self) -> int:
        return int(self.client.zcard(self.keys.delayed))

    def next_due(self) -> float | None:
        first = self.client.zrange(self.keys.delayed, 0, 0, withscores=True)
        return float(first[0][1]) / 1000.0 if first else None

    def get(self, entry_id: str) -> Parked | None:
        raw = self.client.hget(self.keys.delayed_data, entry_id)
        return Parked.from_json(entry_id, raw) if raw is not None else None
