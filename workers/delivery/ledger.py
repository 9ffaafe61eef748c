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
import threading
import uuid
import weakref
from dataclasses import dataclass
from pathlib import Path

import redis

from connector import kept
from connector.keys import Keys
from connector.lua import Lua
from workers.delivery.batching import Coalescer

# The scripts (workers/delivery/lua/ledger_*.lua name their keys and arguments): claims many at
# once (the claims of concurrent greenlets, workers.delivery.batching), and a claim given back.
_LUA = Path(__file__).parent / "lua"
_CLAIM_MANY = Lua.files(_LUA, "ledger_claim.lua")
_RELEASE = Lua.files(_LUA, "ledger_release.lua")


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


class _Batched:
    """A process's claims and completions, merged across concurrent greenlets (one per client)."""

    def __init__(self, client: redis.Redis) -> None:
        ref = weakref.ref(client)

        def claim_many(calls: list[tuple[str, str, int]]) -> list[tuple[int, int]]:
            flat = _CLAIM_MANY(
                _alive(ref),
                [key for key, _, _ in calls],
                [a for _, token, ttl in calls for a in (token, ttl)],
            )
            return [(int(flat[i]), int(flat[i + 1])) for i in range(0, len(flat), 2)]

        def complete_many(calls: list[tuple[str, int]]) -> list[None]:
            pipe = _alive(ref).pipeline(transaction=False)
            for key, keep in calls:
                pipe.set(key, "done", ex=keep)
            pipe.execute()
            return [None] * len(calls)

        self.claim: Coalescer[tuple[str, str, int], tuple[int, int]] = Coalescer(claim_many)
        self.complete: Coalescer[tuple[str, int], None] = Coalescer(complete_many)


def _alive(ref: weakref.ReferenceType[redis.Redis]) -> redis.Redis:
    client = ref()
    if client is None:  # pragma: no cover - a batch outliving its client
        raise redis.ConnectionError("redis client gone")
    return client


_batched: weakref.WeakKeyDictionary[redis.Redis, _Batched] = weakref.WeakKeyDictionary()


def _batched_for(client: redis.Redis) -> _Batched:
    batched = _batched.get(client)
    if batched is None:
        batched = _batched[client] = _Batched(client)
    return batched


class Ledger:
    """Claims and completions of concurrent greenlets share round trips
    (:mod:`workers.delivery.batching`); each call still returns only once its own key is set."""

    def __init__(self, client: redis.Redis, keys: Keys, connection_id: str) -> None:
        self.client = client
        self.keys = keys
        self.connection_id = connection_id
        self._batched = _batched_for(client)
        # Records completed and not yet counted against the connection's bound (connector.kept):
        # counted once per task (flush_charges), not per call -- Redis counts commands.
        self._uncharged: dict[int, int] = {}  # keep (s) -> records
        self._charge_lock = threading.Lock()

    def _count(self, records: int, keep: int) -> None:
        with self._charge_lock:
            self._uncharged[keep] = self._uncharged.get(keep, 0) + records

    def flush_charges(self) -> None:
        """Count the records completed since the last flush (connector.kept): one round trip."""
        with self._charge_lock:
            uncharged, self._uncharged = self._uncharged, {}
        if uncharged:
            pipe = self.client.pipeline(transaction=False)
            for keep, records in uncharged.items():
                kept.charge_ledger(pipe, self.keys, self.connection_id, records, keep)
            pipe.execute()

    def _key(self, idempotency_key: str) -> str:
        return self.keys.ledger(self.connection_id, idempotency_key)

    def claim(self, idempotency_key: str, token: str, ttl: float) -> Claim:
        state, pttl = self._batched.claim((self._key(idempotency_key), token, max(1, int(ttl * 1000))))
        result = ClaimState(int(state))
        return Claim(result, max(0.0, int(pttl) / 1000.0) if result is ClaimState.BUSY else 0.0)

    def claim_many(self, idempotency_keys: list[str], token: str, ttl: float) -> list[Claim]:
        """Claims for several keys with one token (the parts of a coalesced request), one round
        trip.  A key listed twice is claimed once (the second answer is ours too)."""
        if not idempotency_keys:
            return []
        ms = max(1, int(ttl * 1000))
        flat = _CLAIM_MANY(
            self.client,
            [self._key(k) for k in idempotency_keys],
            [a for _ in idempotency_keys for a in (token, ms)],
        )
        claims = []
        for i in range(0, len(flat), 2):
            state = ClaimState(int(flat[i]))
            claims.append(
                Claim(state, max(0.0, int(flat[i + 1]) / 1000.0) if state is ClaimState.BUSY else 0.0)
            )
        return claims

    def complete(self, idempotency_key: str, keep: float) -> None:
        self._batched.complete((self._key(idempotency_key), max(1, int(keep))))
        self._count(1, max(1, int(keep)))

    def release(self, idempotency_key: str, token: str, *more: str) -> None:
        """Give back our claims (``more``: further keys claimed with the same token)."""
        for key in (idempotency_key, *more):
            _RELEASE(self.client, [self._key(key)], [token])

    def complete_many(
        self, idempotency_keys: list[str], keep: float, pipe: redis.client.Pipeline | None = None
    ) -> None:
        """Several keys delivered by one call (a coalesced request): one round trip; or written
        by ``pipe`` when given, a caller's transaction with what must not be without them."""
        if not idempotency_keys:
            return
        own = pipe is None
        pipe = self.client.pipeline(transaction=False) if pipe is None else pipe
        for key in idempotency_keys:
            pipe.set(self._key(key), "done", ex=max(1, int(keep)))
        if own:
            pipe.execute()
        self._count(len(idempotency_keys), max(1, int(keep)))

    def done_many(self, idempotency_keys: list[str]) -> list[bool]:
        if not idempotency_keys:
            return []
        values = self.client.mget([self._key(k) for k in idempotency_keys])
        return [v == b"done" for v in values]

    def is_done(self, idempotency_key: str) -> bool:
        return self.client.get(self._key(idempotency_key)) == b"done"
