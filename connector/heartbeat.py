"""Worker heartbeats: which Celery workers are alive, and for which queues (the "workers absent"
alert, ``connector_workers_alive{queue}``).

Each worker process writes its name and the time into a sorted set every
:data:`INTERVAL_SECONDS` (and its queues into a hash); the web reads them when ``/metrics`` is
scraped.  A worker that stops beating (SIGKILL, a lost host) drops out after
:data:`ALIVE_WITHIN_SECONDS`; entries older than a day are pruned by the beats of the others.
Two small keys per deployment, whatever the number of events.
"""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Iterable
from typing import Final

import redis

from connector.keys import Keys

INTERVAL_SECONDS: Final = 10.0
ALIVE_WITHIN_SECONDS: Final = 60.0
PRUNE_AFTER_SECONDS: Final = 86400.0


def beat(client: redis.Redis, keys: Keys, name: str, queues: Iterable[str], now: float | None = None) -> None:
    now = time.time() if now is None else now
    pipe = client.pipeline(transaction=False)
    pipe.zadd(keys.workers, {name: int(now * 1000)})
    pipe.hset(keys.workers_queues, name, ",".join(sorted(queues)))
    pipe.zremrangebyscore(keys.workers, "-inf", int((now - PRUNE_AFTER_SECONDS) * 1000))
    pipe.execute()


def gone(client: redis.Redis, keys: Keys, name: str) -> None:
    """A worker stopping on purpose says so (its absence is then not a failure to wait for)."""
    pipe = client.pipeline(transaction=False)
    pipe.zrem(keys.workers, name)
    pipe.hdel(keys.workers_queues, name)
    pipe.execute()


def alive_per_queue(client: redis.Redis, keys: Keys, now: float | None = None) -> dict[str, int]:
    """``{queue: workers that beat within ALIVE_WITHIN_SECONDS}`` (queues of live workers only)."""
    now = time.time() if now is None else now
    found = client.zrangebyscore(keys.workers, int((now - ALIVE_WITHIN_SECONDS) * 1000), "+inf")
    names = [n if isinstance(n, bytes | str) else str(n) for n in found]
    if not names:
        return {}
    counts: dict[str, int] = {}
    for raw in client.hmget(keys.workers_queues, names):
        text = raw.decode() if isinstance(raw, bytes) else (raw or "")
        for queue in filter(None, text.split(",")):
            counts[queue] = counts.get(queue, 0) + 1
    return counts


def start(
    client: redis.Redis, keys: Keys, name: str, queues: Iterable[str], stop: threading.Event | None = None
) -> threading.Event:
    """Beat from a daemon thread until ``stop`` is set (then say goodbye)."""
    stop = stop or threading.Event()
    wanted = list(queues)

    def loop() -> None:
        while not stop.is_set():
            with contextlib.suppress(redis.RedisError):  # Redis restarting: the next beat
                beat(client, keys, name, wanted)
            stop.wait(INTERVAL_SECONDS)
        with contextlib.suppress(redis.RedisError):
            gone(client, keys, name)

    threading.Thread(target=loop, name="heartbeat", daemon=True).start()
    return stop
