# ruff: noqa: F811 - pytest fixtures imported from tests.support.delivery
"""The scheduler: due work back to its queue, publish-before-ack, concurrent schedulers, outages."""

from __future__ import annotations

import threading
import time
from typing import Any

import redis

from connector.contract import TASK_DELIVER, TASK_SEGMENT_FLUSH
from connector.keys import Keys
from tests.support.delivery import (  # noqa: F401 - fixtures
    FakeTransport,
    client,
    connection,
    keys,
    redis_db_url,
    rt,
    sent_ids,
    simple_mapper,
    transport,
)
from workers import mapped, pipeline
from workers.delivery.outbox import Outbox
from workers.delivery.scheduler import Scheduler, SchedulerConfig
from workers.delivery.store import DelayedStore, Parked
from workers.runtime import Runtime


class Recorder:
    def __init__(self, fail: bool = False) -> None:
        self.calls: list[tuple[str, list[Any], str]] = []
        self.fail = fail
        self.lock = threading.Lock()

    def __call__(self, task: str, args: list[Any], queue: str) -> None:
        if self.fail:
            raise ConnectionError("broker away")
        with self.lock:
            self.calls.append((task, args, queue))


def _entry(n: int, due: float) -> Parked:
    return Parked("acme", "segment_to_voucherify", "voucherify.eu", [{"n": n}], due)


def test_tick_publishes_due_work_then_acks(client: redis.Redis, keys: Keys) -> None:
    store = DelayedStore(client, keys)
    store.add([_entry(1, time.time() - 1), _entry(2, time.time() + 3600)])
    publish = Recorder()
    result = Scheduler(client, keys, publish, SchedulerConfig()).tick()
    assert result.published == 1
    assert publish.calls == [(TASK_DELIVER, ["acme", "segment_to_voucherify", [{"n": 1}]], "voucherify.eu")]
    assert store.size() == 1  # the future one stays


def test_publish_failure_keeps_the_entry_for_after_the_lease(client: redis.Redis, keys: Keys) -> None:
    store = DelayedStore(client, keys)
    store.add([_entry(1, time.time() - 1)])
    config = SchedulerConfig(lease=0.2)
    assert Scheduler(client, keys, Recorder(fail=True), config).tick().failed == 1
    assert store.size() == 1
    publish = Recorder()
    assert Scheduler(client, keys, publish, config).tick().published == 0  # still leased
    time.sleep(0.25)
    assert Scheduler(client, keys, publish, config).tick().published == 1
    assert store.size() == 0


def test_concurrent_schedulers_publish_each_entry_once(
    client: redis.Redis, keys: Keys, redis_db_url: str
) -> None:
    DelayedStore(client, keys).add([_entry(i, time.time() - 1) for i in range(300)])
    publish = Recorder()

    def run_one() -> None:
        own = redis.Redis.from_url(redis_db_url)
        scheduler = Scheduler(own, keys, publish, SchedulerConfig(batch=10, lease=60))
        while scheduler.tick().published:
            pass

    threads = [threading.Thread(target=run_one) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    published = sorted(args[2][0]["n"] for _, args, _ in publish.calls)
    assert published == list(range(300))


def test_sweep_publishes_outbox_flushes(client: redis.Redis, keys: Keys) -> None:
    Outbox(client, keys, "acme").append_many([{"request": {"body": {}}}], "segment.eu")
    publish = Recorder()
    assert Scheduler(client, keys, publish, SchedulerConfig()).tick().flushes == 1
    assert publish.calls == [(TASK_SEGMENT_FLUSH, ["acme"], "segment.eu")]


def test_run_loop_survives_redis_outage_and_stops_on_request(keys: Keys) -> None:
    from redis.backoff import NoBackoff
    from redis.retry import Retry

    dead = redis.Redis(host="127.0.0.1", port=1, socket_connect_timeout=0.1, retry=Retry(NoBackoff(), 0))
    scheduler = Scheduler(dead, keys, Recorder(), SchedulerConfig(interval=0.05, max_backoff=0.1))
    thread = threading.Thread(target=scheduler.run)
    thread.start()
    time.sleep(0.5)
    assert thread.is_alive()  # logging and backing off, not dead
    scheduler.stop_event.set()
    thread.join(2)
    assert not thread.is_alive()


def test_parked_retry_comes_back_through_the_scheduler(
    rt: Runtime, transport: FakeTransport, keys: Keys, monkeypatch: Any
) -> None:
    monkeypatch.setattr(mapped, "map_event", simple_mapper)
    conn = rt.settings.connections[0]
    transport.reply(503)
    pipeline.process_segment_events(rt, conn, conn.id, [{"type": "track", "messageId": "m1", "userId": "u1"}])
    publish = Recorder()
    scheduler = Scheduler(rt.redis, keys, publish, SchedulerConfig())
    assert scheduler.tick().published == 0  # not due yet
    assert scheduler.tick(now=time.time() + 3600).published == 1
    [(_task, args, _queue)] = publish.calls
    pipeline.process_deliveries(rt, conn, *args)  # what the connector.deliver task does
    assert sent_ids(transport) == ["m1", "m1"]
    assert DelayedStore(rt.redis, keys).size() == 0
