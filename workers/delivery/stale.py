"""Stale-update protection for customer upserts (SPEC 5).

Per connection and customer, Redis keeps the event time (epoch ms) of the newest upsert that
Voucherify accepted.  Before sending an upsert we compare: strictly older -> not sent (skip
reason ``stale``); equal or newer -> sent.  After a 2xx the time is raised (never lowered) by a
compare-and-set script, so the record is right whatever order concurrent workers finish in.

Within a batch, per-customer order is kept by the pipeline; across tasks (two copies of one
customer's upserts coming due together, a retry and a fresh one) two upserts of one customer
could otherwise be in flight together, the older applied last.  So the check and a per-customer
*send lock* are one atomic step (:meth:`StaleGuard.check_and_lock`): the second attempt parks
``busy`` until the first one's answer raised the record, and then finds itself stale (or newer).
A call of several customers (a bulk) takes every one of their locks, in one order, before it
reads their records (:meth:`StaleGuard.lock_many`; none after a short wait): no single upsert
of theirs is applied between that read and the bulk's answer, and two bulks never wait for
each other.
The lock lives at most the ledger's claim TTL, so a killed worker never blocks a customer long.
An upsert without a usable time is never called stale (nothing to compare).

A recorded time is never later than the moment it is recorded (plus ``FUTURE_SKEW_SECONDS``):
the ingest clamps future event times already, and this holds for work accepted before that, or
replayed: one device with its clock in the year 2999 must not freeze a customer's updates.
"""

from __future__ import annotations

import time
from datetime import UTC, datetime
from pathlib import Path

import redis

from connector import kept
from connector.keys import Keys
from connector.lua import Lua

# The scripts (workers/delivery/lua/stale_*.lua name their keys and arguments).
_LUA = Path(__file__).parent / "lua"
_RAISE = Lua.files(_LUA, "stale_raise.lua")
_CHECK_LOCK = Lua.files(_LUA, "stale_check_lock.lua")
_LOCK_MANY = Lua.files(_LUA, "stale_lock_many.lua")
_UNLOCK = Lua.files(_LUA, "stale_unlock.lua")


def event_time_ms(value: str | None) -> int | None:
    """ISO 8601 (``Z`` or offset; naive taken as UTC) -> epoch milliseconds, or None."""
    if not value or not isinstance(value, str):
        return None
    try:
        parsed = datetime.fromisoformat(value.strip().replace("z", "Z"))
        if parsed.tzinfo is None:
            parsed = parsed.replace(tzinfo=UTC)
        return int(parsed.timestamp() * 1000)
    except (ValueError, OverflowError):
        return None


FUTURE_SKEW_SECONDS = 60.0
# A bulk waiting for its customers' locks asks again this often (a single upsert's call ends
# within a few of these; one that comes meanwhile finds the bulk's lock and waits).
LOCK_RETRY_SECONDS = 0.05


class StaleGuard:
    def __init__(self, client: redis.Redis, keys: Keys, connection_id: str) -> None:
        self.client = client
        self.keys = keys
        self.connection_id = connection_id

    def newest_many(self, customers: list[str]) -> list[int | None]:
        """The recorded newest upsert time of each customer (one round trip)."""
        if not customers:
            return []
        out: list[int | None] = []
        for raw in self.client.mget([self.keys.stale(self.connection_id, c) for c in customers]):
            try:
                out.append(int(raw) if raw is not None else None)
            except ValueError:
                out.append(None)
        return out

    def applied(self, customer: str, event_ms: int, ttl: float) -> None:
        latest = int((time.time() + FUTURE_SKEW_SECONDS) * 1000)
        keep = max(1, int(ttl))
        _RAISE(
            self.client,
            [
                self.keys.stale(self.connection_id, customer),
                kept.customers_key(self.keys, self.connection_id),
            ],
            [min(event_ms, latest), keep, customer, keep + 86400],
        )

    def check_and_lock(
        self, customer: str, event_ms: int | None, token: str, ttl: float, newest_ms: int | None = None
    ) -> tuple[str, float]:
        """``("locked", 0)``: this attempt may send the customer's upsert (unlock after);
        ``("stale", 0)``: older than the newest applied; ``("busy", seconds)``: another attempt
        is sending one of this customer's upserts now, for at most that long; ``("queued",
        seconds)``: a bulk with the customer is still running at Voucherify (the ``out`` marker
        ``queued``, :mod:`workers.delivery.pending`) and this upsert (its newest event,
        ``newest_ms``) is newer than the bulk's -- sent now, the bulk would overwrite it.  The
        bulk's own customers sent again singly (not newer) are not held back."""
        state, wait_ms = _CHECK_LOCK(
            self.client,
            [
                self.keys.stale(self.connection_id, customer),
                self.keys.customer_lock(self.connection_id, customer),
                self.keys.hold_out(self.connection_id, customer),
            ],
            [
                -1 if event_ms is None else event_ms,
                token,
                max(1, int(ttl * 1000)),
                -1 if newest_ms is None else newest_ms,
            ],
        )
        if int(state) == 1:
            return "stale", 0.0
        if int(state) == 2:
            return "busy", max(0.0, int(wait_ms) / 1000.0)
        if int(state) == 3:
            return "queued", max(0.0, int(wait_ms) / 1000.0)
        return "locked", 0.0

    def lock_many(self, customers: list[str], token: str, ttl: float, patience: float) -> bool:
        """Take the send locks of all ``customers`` (a bulk's), in their sorted order, each as
        the call holding it ends, for at most ``patience`` seconds: True when all are ours;
        False when one was still another's (the ones taken released)."""
        if not customers:
            return True
        ordered = sorted(set(customers))
        locks = [self.keys.customer_lock(self.connection_id, c) for c in ordered]
        give_up = time.monotonic() + patience
        while True:
            at, _ = _LOCK_MANY(self.client, locks, [token, max(1, int(ttl * 1000))])
            if int(at) == 0:
                return True
            if time.monotonic() >= give_up:
                self.unlock_many(ordered, token)
                return False
            time.sleep(LOCK_RETRY_SECONDS)
            locks = locks[int(at) - 1 :]  # those before it are ours (and stay ours)

    def unlock(self, customer: str, token: str) -> None:
        self.unlock_many([customer], token)

    def unlock_many(self, customers: list[str], token: str) -> None:
        """Give back the customers' send locks that are still ``token``'s."""
        if customers:
            locks = [self.keys.customer_lock(self.connection_id, c) for c in customers]
            _UNLOCK(self.client, locks, [token])
