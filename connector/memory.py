"""Redis memory is a budget (SPEC 16): the ingest's look at how full Redis is.

Every structure that grows with input has its own bound (the backlog, dead letters, traces),
but those are per connection or per kind; this is the last fence for the whole deployment: when
Redis' ``used_memory`` passes ``REDIS_MEMORY_HIGH_WATER`` (a fraction of ``maxmemory``, default
0.85) the ingest answers 503 ``redis_memory_full`` (Retry-After) instead of accepting work that
the workers could then not store -- with ``maxmemory-policy noeviction`` a refused write kills a
Celery worker (OutOfMemoryError) and loses the task's progress.  The room left above the high
water is the workers': they finish what was accepted (release counters, write dead letters).

Pure Redis, no HTTP client: the web process imports this module.  ``INFO memory`` is read at
most once a second per process; a Redis without ``maxmemory`` (or where INFO is not allowed)
has no high water, and the per-structure bounds still hold.
"""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass

import redis

log = logging.getLogger("connector.memory")

DEFAULT_HIGH_WATER = 0.85


@dataclass(frozen=True)
class Memory:
    used: int
    maxmemory: int  # 0: no limit

    def over(self, fraction: float) -> bool:
        return self.maxmemory > 0 and self.used >= fraction * self.maxmemory


def read(client: redis.Redis) -> Memory | None:
    """``used_memory`` and ``maxmemory`` (None when Redis does not tell)."""
    try:
        info = client.info("memory")
    except redis.ResponseError:  # INFO renamed or refused (a managed Redis): no high water
        return None
    return Memory(int(info.get("used_memory") or 0), int(info.get("maxmemory") or 0))


class MemoryGuard:
    """Whether Redis is over the high water, looked at most once per ``every`` seconds."""

    def __init__(
        self, client: redis.Redis, high_water: float = DEFAULT_HIGH_WATER, every: float = 1.0
    ) -> None:
        self.client = client
        self.high_water = high_water
        self.every = every
        self._lock = threading.Lock()
        self._seen: Memory | None = None
        self._at = -float("inf")

    def full(self) -> Memory | None:
        """The memory seen when it is over the high water, else None.  Raises a Redis error
        when Redis cannot be asked at all (the caller answers 503 as for any broker error)."""
        now = time.monotonic()
        with self._lock:
            if now - self._at >= self.every:
                self._seen, self._at = read(self.client), now
            seen = self._seen
        if seen is not None and seen.over(self.high_water):
            return seen
        return None
