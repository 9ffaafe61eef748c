"""A process's Redis client serves as many concurrent users as it has: a gevent worker runs
hundreds of greenlets that each hold a connection for a round trip (redis-py 8 caps a pool at 100
and raises MaxConnectionsError past it: make bench's 12,000-event delivery requeued tasks)."""

from __future__ import annotations

import threading
import uuid

import redis

from connector import redisconn

HOLDERS = 250  # more than redis-py 8's default cap of 100


def test_many_concurrent_holders_share_one_client_without_running_out(redis_base: str) -> None:
    client = redisconn.client(f"{redis_base}/0", socket_timeout=10)
    errors: list[BaseException] = []
    start = threading.Barrier(HOLDERS)

    def hold() -> None:
        try:
            start.wait(10)
            client.blpop([f"test-pool-{uuid.uuid4().hex}"], timeout=1)  # holds its connection 1 s
        except (redis.RedisError, threading.BrokenBarrierError) as exc:
            errors.append(exc)

    threads = [threading.Thread(target=hold) for _ in range(HOLDERS)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    assert errors == []
    client.close()
