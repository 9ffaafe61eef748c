"""connector.broker.QoS: an ack or reject that cannot reach Redis still frees its prefetch slot,
and a message taken just as Redis goes away (BRPOP answered, the unacked record refused) is not lost.

A redis-server of the test's own, with AOF: "Redis away" is that server shut down (the ack or
reject fails as in an outage), and started again on the same files to see what it kept.
The end-to-end case, with a worker and a restarted Redis, is
tests/integration/test_faults_redis.py::test_worker_resumes_after_every_task_slot_failed_to_requeue_during_the_outage.
"""

from __future__ import annotations

import contextlib
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import redis
from kombu import Connection
from kombu.transport import redis as kombu_redis

from ops.embedded import free_port, start_redis

QUEUE = "qos-test"


class Server:
    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self.port = free_port()
        self.proc: subprocess.Popen[bytes] | None = None
        self.url = ""

    def start(self) -> None:
        self.proc, self.url = start_redis(self.directory, self.port, appendonly=True)

    def shutdown(self) -> None:
        """``SHUTDOWN``: the AOF written, the process gone."""
        assert self.proc is not None
        with contextlib.suppress(redis.ConnectionError):
            redis.Redis.from_url(self.url).shutdown()
        self.proc.wait(15)

    def kept(self) -> redis.Redis:
        """What the server holds after a restart on its own files."""
        self.start()
        return redis.Redis.from_url(self.url)


@pytest.fixture
def server(tmp_path: Path) -> Iterator[Server]:
    own = Server(tmp_path / "redis")
    own.start()
    try:
        yield own
    finally:
        if own.proc is not None and own.proc.poll() is None:
            own.proc.terminate()
            own.proc.wait(15)


@pytest.fixture
def channel(server: Server) -> Iterator[Any]:
    connection = Connection(server.url, transport="connector.broker:Transport")
    chan = connection.channel()
    chan.queue_declare(QUEUE)
    chan.basic_qos(prefetch_count=1)
    try:
        yield chan
    finally:
        with contextlib.suppress(Exception):  # the server may be gone
            connection.release()


def _take_one(chan: Any) -> Any:
    chan.basic_publish(chan.prepare_message("{}"), exchange="", routing_key=QUEUE)
    message = chan.basic_get(QUEUE, no_ack=False)
    assert message is not None
    assert not chan.qos.can_consume()  # the one slot is taken
    return message


@pytest.mark.parametrize("requeue", [True, False], ids=["reject-requeue", "reject-drop"])
def test_a_failed_reject_frees_the_slot_and_keeps_the_message_for_the_sweep(
    channel: Any, server: Server, requeue: bool
) -> None:
    message = _take_one(channel)
    server.shutdown()
    with pytest.raises(redis.ConnectionError):  # still raised: Celery logs "Couldn't reject"
        channel.basic_reject(message.delivery_tag, requeue=requeue)
    assert channel.qos.can_consume()
    # Nothing lost: still unacknowledged in Redis, where the visibility sweep finds it.
    assert server.kept().hexists("unacked", message.delivery_tag)


def test_a_failed_ack_frees_the_slot(channel: Any, server: Server) -> None:
    message = _take_one(channel)
    server.shutdown()
    with pytest.raises(redis.ConnectionError):
        channel.basic_ack(message.delivery_tag)
    assert channel.qos.can_consume()
    assert server.kept().hexists("unacked", message.delivery_tag)


def test_acks_and_rejects_that_reach_redis_are_kombus(channel: Any, server: Server) -> None:
    client = redis.Redis.from_url(server.url)
    message = _take_one(channel)
    channel.basic_reject(message.delivery_tag, requeue=True)
    assert channel.qos.can_consume()
    assert not client.hexists("unacked", message.delivery_tag)
    assert client.llen(QUEUE) == 1  # back in the queue
    again = channel.basic_get(QUEUE, no_ack=False)
    channel.basic_ack(again.delivery_tag)
    assert channel.qos.can_consume()
    assert client.llen(QUEUE) == 0 and client.hlen("unacked") == 0


def test_a_message_taken_as_redis_goes_away_is_delivered_once_redis_is_back(
    server: Server, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The identify fault test's loss, made certain: BRPOP has taken the message off its queue and
    Redis stops before kombu records it as unacknowledged (its ZADD + HSET refused).  The AOF
    keeps the pop, so after the restart the message is in no queue and no unacked hash: only
    the worker process holds it, and the next consumer (as Celery's after reconnecting) must
    get it."""
    first = Connection(server.url, transport="connector.broker:Transport")
    chan = first.channel()
    chan.queue_declare(QUEUE)
    chan.basic_publish(chan.prepare_message('{"n": 1}'), exchange="", routing_key=QUEUE)

    record = kombu_redis.QoS.append  # kombu's record of a taken message (ZADD + HSET)

    def redis_goes_first(qos: Any, message: Any, delivery_tag: str) -> None:
        monkeypatch.setattr(kombu_redis.QoS, "append", record)  # once
        server.shutdown()
        record(qos, message, delivery_tag)

    monkeypatch.setattr(kombu_redis.QoS, "append", redis_goes_first)
    taken: list[Any] = []
    chan.basic_consume(QUEUE, no_ack=False, callback=taken.append, consumer_tag="t")
    with pytest.raises(first.connection_errors):
        first.drain_events(timeout=5)
    assert taken == []  # never handed to the consumer
    with contextlib.suppress(Exception):
        first.release()

    client = server.kept()  # restarted on its AOF: the pop was kept, the record never made
    assert client.llen(QUEUE) == 0 and client.hlen("unacked") == 0

    again = Connection(server.url, transport="connector.broker:Transport")
    try:
        chan = again.channel()
        chan.basic_consume(QUEUE, no_ack=False, callback=taken.append, consumer_tag="t")
        again.drain_events(timeout=5)
        assert [m.body for m in taken] == [b'{"n": 1}']
        taken[0].ack()
        # Delivered once: nothing left in the queue or unacknowledged.
        assert client.llen(QUEUE) == 0 and client.hlen("unacked") == 0
    finally:
        again.release()


def test_a_kept_message_that_cannot_go_back_yet_stays_kept(
    server: Server, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Putting a kept message back while Redis is still away fails and keeps it for the next
    try (the consumer's next BRPOP, after its next reconnect)."""
    from connector import broker

    first = Connection(server.url, transport="connector.broker:Transport")
    chan = first.channel()
    chan.queue_declare(QUEUE)
    chan.basic_publish(chan.prepare_message('{"n": 2}'), exchange="", routing_key=QUEUE)
    record = kombu_redis.QoS.append

    def redis_goes_first(qos: Any, message: Any, delivery_tag: str) -> None:
        monkeypatch.setattr(kombu_redis.QoS, "append", record)
        server.shutdown()
        record(qos, message, delivery_tag)

    monkeypatch.setattr(kombu_redis.QoS, "append", redis_goes_first)
    chan.basic_consume(QUEUE, no_ack=False, callback=lambda m: None, consumer_tag="t")
    with pytest.raises(first.connection_errors):
        first.drain_events(timeout=5)
    assert len(broker.ORPHANS) == 1
    with pytest.raises(first.connection_errors):
        broker.ORPHANS.put_back(chan)  # Redis still away
    assert len(broker.ORPHANS) == 1
    with contextlib.suppress(Exception):
        first.release()

    client = server.kept()
    again = Connection(server.url, transport="connector.broker:Transport")
    try:
        message = again.channel().basic_get(QUEUE, no_ack=False)  # puts it back, then takes it
        assert message is not None and message.body == b'{"n": 2}'
        assert len(broker.ORPHANS) == 0
        message.ack()
        assert client.llen(QUEUE) == 0 and client.hlen("unacked") == 0
    finally:
        again.release()
