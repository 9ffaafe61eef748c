"""The suite's own redis-servers, and a fresh database per test on one of them.

The suite never uses a Redis it did not start: the machine's (127.0.0.1:6379) holds a
developer's data, and another test run on the same machine (another worktree) would consume
our queues and flush our databases.  Every server here is started on a free port, checked to be
the process we started (not another run's server that took the port first), and registered;
:func:`fresh_database` flushes databases of registered servers only.
"""

from __future__ import annotations

import contextlib
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import redis

from ops.embedded import start_redis

# The machine's Redis, which the suite must never reach (see tests/conftest.py's guard).
MACHINE_REDIS_PORT = 6379


@dataclass(frozen=True)
class OwnRedis:
    """A redis-server this test session started: ``base`` is ``redis://127.0.0.1:PORT``."""

    base: str
    port: int
    pid: int


_STARTED: dict[str, OwnRedis] = {}


def owned(url: str) -> OwnRedis | None:
    """The suite's server that ``url`` (with or without a ``/db``) names, if any."""
    base = url.rstrip("/")
    if base.count("/") > 2:  # redis://host:port/db
        base = base.rsplit("/", 1)[0]
    return _STARTED.get(base)


@contextlib.contextmanager
def own_redis_server(directory: Path, attempts: int = 5) -> Iterator[OwnRedis]:
    """Start a redis-server of the session's own on a free port; stop it on exit.

    ``start_redis`` fails when another program takes the free port first (our server cannot
    bind): then another free port is tried.
    """
    failures: list[str] = []
    for attempt in range(attempts):
        try:
            proc, url = start_redis(directory / f"try-{attempt}", appendonly=False)
        except RuntimeError as exc:
            failures.append(str(exc))
            continue
        break
    else:
        raise RuntimeError(f"no redis-server of our own started: {failures}")
    base = url.rsplit("/", 1)[0]
    server = OwnRedis(base=base, port=int(base.rsplit(":", 1)[1]), pid=proc.pid)
    _STARTED[base] = server
    try:
        yield server
    finally:
        _STARTED.pop(base, None)
        _stop(proc)


def _stop(proc: subprocess.Popen[bytes]) -> None:
    proc.terminate()
    try:
        proc.wait(10)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(5)


@contextlib.contextmanager
def fresh_database(base: str, pool: list[int]) -> Iterator[str]:
    """The next database of ``pool`` on the suite's server ``base``, empty before and after use."""
    if owned(base) is None:
        raise RuntimeError(f"refusing to flush {base}: not a redis-server this test session started")
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
