"""What a connection's long-lived per-event and per-customer records occupy (SPEC 16, issue #20).

The ledger (one record per delivered call, kept the retry window + 24 h), the stale rule's times
and the "unchanged" digests (one per customer, kept days) are keyed by ids the client chooses:
a flood of distinct ``userId``s, each event cheap to send, leaves records that outlive the
backlog by days.  Each has a TTL; on top, each connection's are accounted here, and over
``CUSTOMER_RECORDS_MB`` (per connection, default 256) the ingest answers 429
``customer_records_full`` -- before Redis is full, and without touching what is kept::

    {p}kept:{c}             hash    hour (epoch hours) the records expire in -> ledger records
    {p}kept:{c}:u:{day}     HLL     the customers given records that day (TTL: their keep + 1 d)

An estimate that errs high: a customer's records count once per day it is written (distinct
within the day by HyperLogLog, ~1% error), a ledger record until the hour it expires in.
"""

from __future__ import annotations

import logging
import math
import threading
import time
from pathlib import Path
from typing import Any, Final

import redis

from connector.keys import Keys
from connector.lua import Lua

log = logging.getLogger("connector.kept")

# What Redis spends on one record, measured (redis 7, jemalloc): a ledger record ("done" under a
# ~60-character key, its expiry entry); a customer's stale time and unchanged digest together.
LEDGER_RECORD_BYTES: Final = 130
CUSTOMER_RECORD_BYTES: Final = 260
DEFAULT_LIMIT_MB: Final = 256.0
# Customers are counted per day over this many days at most (the longest keep of their records).
MAX_DAYS: Final = 31


# A count lives at least as long as the longest-kept record it counts: its TTL only grows
# (connector/lua/kept_extend_ttl.lua; Redis 6.2 has no ``EXPIRE ... GT``).  Its source is sent
# with EVAL: it runs in the caller's pipeline, where a missing EVALSHA script cannot be retried.
_EXTEND_TTL = Lua.files(Path(__file__).parent / "lua", "kept_extend_ttl.lua").source


def _extend_ttl(pipe: Any, key: str, seconds: int) -> None:
    pipe.eval(_EXTEND_TTL, 1, key, seconds)


def _day(now: float) -> int:
    return int(now // 86400)


def charge_ledger(pipe: Any, keys: Keys, connection_id: str, records: int, keep: float) -> None:
    """Count ``records`` ledger records kept ``keep`` seconds (in the caller's pipeline)."""
    if records <= 0:
        return
    hour = int((time.time() + keep) // 3600) + 1
    pipe.hincrby(keys.kept(connection_id), str(hour), records)
    _extend_ttl(pipe, keys.kept(connection_id), int(keep) + 7200)


def customers_key(keys: Keys, connection_id: str) -> str:
    """Today's count of ``connection_id``'s customers given records."""
    return keys.kept_customers(connection_id, _day(time.time()))


def charge_customers(pipe: Any, keys: Keys, connection_id: str, customers: list[str], keep: float) -> None:
    """Count ``customers`` given records kept ``keep`` seconds (in the caller's pipeline)."""
    if not customers:
        return
    key = customers_key(keys, connection_id)
    pipe.pfadd(key, *customers)
    _extend_ttl(pipe, key, int(keep) + 86400)


def used(client: redis.Redis, keys: Keys, connection_id: str, now: float | None = None) -> int:
    """The bytes ``connection_id``'s ledger and customer records are estimated to occupy."""
    now = time.time() if now is None else now
    today = _day(now)
    pipe = client.pipeline(transaction=False)
    pipe.hgetall(keys.kept(connection_id))
    pipe.pfcount(*(keys.kept_customers(connection_id, today - d) for d in range(MAX_DAYS)))
    counts, customers = pipe.execute()
    hour = int(now // 3600)
    live = 0
    gone: list[bytes] = []
    for field, value in counts.items():
        if int(field) >= hour:
            live += int(value)
        else:
            gone.append(field)
    if gone:  # expired with their records
        client.hdel(keys.kept(connection_id), *gone)
    return live * LEDGER_RECORD_BYTES + int(customers) * CUSTOMER_RECORD_BYTES


class KeptGuard:
    """Whether a connection's kept records are over the bound, looked at most once per
    ``every`` seconds per connection (the ingest asks on every request)."""

    def __init__(self, client: redis.Redis, keys: Keys, limit: int, every: float = 1.0) -> None:
        self.client = client
        self.keys = keys
        self.limit = limit
        self.every = every
        self._lock = threading.Lock()
        self._seen: dict[str, tuple[float, int]] = {}

    def over(self, connection_id: str) -> int | None:
        """The bytes used when over the bound, else None."""
        if self.limit <= 0:
            return None
        now = time.monotonic()
        with self._lock:
            at, seen = self._seen.get(connection_id, (-math.inf, 0))
        if now - at >= self.every:
            seen = used(self.client, self.keys, connection_id)
            with self._lock:
                self._seen[connection_id] = (now, seen)
        return seen if seen >= self.limit else None
