"""A fresh Redis database per test, on a server the suite uses."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import redis


@contextlib.contextmanager
def fresh_database(base: str, pool: list[int]) -> Iterator[str]:
    """The next database of ``pool`` on the server ``base``, empty before and after use."""
    db = pool.pop(0)
    pool.append(db)
    url = f"{base}/{db}"
    client = redis.Redis.from_url(url)
    client.flushdb()
    try:
        yield url
    finally:
        with contextlib.suppress(redis.RedisError):  # a test may have stopped that server
            client.flushdb()
        client.close()
