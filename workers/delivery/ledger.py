"""The idempotency ledger: each outbound call is sent at most once per idempotency key.

One Redis string per key, a three-state machine::

    (absent) ──claim──> inflight:<token>  (PX claim_ttl)
        ▲                    │      │
        └──release (retry,   │      └──complete──> done  (EX retry window + 24 h)
           permanent, park)  │
                             └── expires (worker died) ──> (absent): the next attempt may claim

``claim`` answers ``claimed`` (go ahead), ``duplicate`` (already delivered: skip) or ``busy``
(another attempt is in flight: park until the claim expires).  A claim lives longer than one
HTTP call, so a live attempt is never overtaken; a dead one frees the key by itself.
Completing after our claim expired still records ``done``: the call went out, and Voucherify's
``Idempotency-Key`` absorbs the rare overlapping second send.
"""

from __future__ import annotations

import enum
import uuid
from dataclasses import dataclass

import redis

from workers.delivery.keys import Keys
from workers.delivery.lua import Lua

_CLAIM = Lua(
    """
local v = redis.call('GET', KEYS[1])
local mine = 'inflight:' .. ARGV[1]
if not v or v == mine then
  redis.call('SET', KEYS[1], mine, 'PX', ARGV[2])
  return {1, 0}
end
if v == 'done' then return {2, 0} end
return {3, redis.call('PTTL', KEYS[1])}
"""
)

_RELEASE = Lua(
    """
if redis.call('GET', KEYS[1]) == 'inflight:' .. ARGV[1] then
  return redis.call('DEL', KEYS[1])
end
return 0
"""
)


class ClaimState(enum.Enum):
    CLAIMED = 1
    DUPLICATE = 2
    BUSY = 3


@dataclass(frozen=True)
class Claim:
    state: ClaimState
    wait: float = 0.0  # seconds until a busy claim expires


def new_token() -> str:
    return uuid.uuid4().hex


class Ledger:
    def __init__(self, client: redis.Redis, keys: Keys, connection_id: str) -> None:
        self.client = client
        self.keys = keys
        self.connection_id = connection_id

    def _key(self, idempotency_key: str) -> str:
        return self.keys.ledger(self.connection_id, idempotency_key)

    def claim(self, idempotency_key: str, token: str, ttl: float) -> Claim:
        state, pttl = _CLAIM(self.client, [self._key(idempotency_key)], [token, max(1, int(ttl * 1000))])
        result = ClaimState(int(state))
        return Claim(result, max(0.0, int(pttl) / 1000.0) if result is ClaimState.BUSY else 0.0)

    def complete(self, idempotency_key: str, keep: float) -> None:
        self.client.set(self._key(idempotency_key), "done", ex=max(1, int(keep)))

    def release(self, idempotency_key: str, token: str) -> None:
        _RELEASE(self.client, [self._key(idempotency_key)], [token])

    def complete_many(self, idempotency_keys: list[str], keep: float) -> None:
        """Several keys delivered by one call (a coalesced request): one round trip."""
        if not idempotency_keys:
            return
        pipe = self.client.pipeline(transaction=False)
        for key in idempotency_keys:
            pipe.set(self._key(key), "done", ex=max(1, int(keep)))
        pipe.execute()

    def done_many(self, idempotency_keys: list[str]) -> list[bool]:
        if not idempotency_keys:
            return []
        values = self.client.mget([self._key(k) for k in idempotency_keys])
        return [v == b"done" for v in values]

    def is_done(self, idempotency_key: str) -> bool:
        return self.client.get(self._key(idempotency_key)) == b"done"
