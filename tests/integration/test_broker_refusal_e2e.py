"""A real broker refusing writes: the real web answers 503 with Retry-After, then takes the retry.

A redis-server of the test's own (it is made to refuse, so it is shared with no other test) and
the real web process (gunicorn).  After start-up the server is made to refuse writes the ways a
production Redis does: out of memory under ``maxmemory-policy noeviction`` (``CONFIG SET
maxmemory 1``), or a read-only replica (``REPLICAOF`` a master that is not there).  The ingest
must refuse the request (503, ``Retry-After``, ``{code, message}``): a 200 would tell the client
its events are held when they are not.  Once the server accepts writes again, the client's retry
is accepted and its event is on the broker queue.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import redis
import requests

from ops.embedded import free_port, start_redis
from tests.conftest import make_stack
from tests.support.broker import queued_events
from tests.support.processes import wait_until

pytestmark = pytest.mark.integration

WRITE_KEY = "wk_refusal_live"
QUEUE = "voucherify.eu"
BACKLOG = "connector:backlog:refusal"  # the connection's reserved events (connector.backlog)
CONNECTIONS = f"""
[[connection]]
id = "refusal"
write_keys = ["{WRITE_KEY}"]
[connection.voucherify]
app_id = "refusal-app-id"
secret_key = "refusal-secret-key"
region = "eu"
api_url = "http://127.0.0.1:9"
"""


@pytest.fixture
def broker(tmp_path: Path) -> Iterator[str]:
    """``redis://127.0.0.1:PORT/0`` of a redis-server of this test's own."""
    proc, url = start_redis(tmp_path / "redis", free_port(), appendonly=False)
    try:
        yield url
    finally:
        proc.terminate()
        proc.wait(10)


@pytest.fixture
def client(broker: str) -> Iterator[redis.Redis]:
    """The test's own connection to the broker: it makes the server refuse, then accept again."""
    admin = redis.Redis.from_url(broker)
    try:
        yield admin
    finally:
        admin.close()


def _out_of_memory(client: redis.Redis) -> Callable[[], None]:
    client.config_set("maxmemory", "1")  # start_redis sets maxmemory-policy noeviction

    def recover() -> None:
        client.config_set("maxmemory", "0")

    return recover


def _read_only(client: redis.Redis) -> Callable[[], None]:
    client.execute_command("REPLICAOF", "127.0.0.1", str(free_port()))  # a master that is not there

    def recover() -> None:
        client.execute_command("REPLICAOF", "NO", "ONE")

    return recover


def _queue_off_limits(client: redis.Redis) -> Callable[[], None]:
    """The connector's own keys stay writable, the broker's are refused (an ACL): the backlog
    reservation succeeds and the publish itself is refused -- the branch that must give the
    reservation back and answer 503 (OOM and READONLY reach the reservation first)."""
    client.execute_command("ACL", "SETUSER", "default", "resetkeys", "~connector:*")

    def recover() -> None:
        client.execute_command("ACL", "SETUSER", "default", "allkeys")

    return recover


REFUSE: dict[str, Callable[[redis.Redis], Callable[[], None]]] = {
    "out-of-memory": _out_of_memory,
    "read-only-replica": _read_only,
    "publish-refused": _queue_off_limits,
}


def _track(message_id: str) -> dict[str, Any]:
    return {"type": "track", "userId": "u-1", "event": "Order Completed", "messageId": message_id}


def _post(web_url: str, message_id: str) -> requests.Response:
    return requests.post(web_url + "/v1/track", json=_track(message_id), auth=(WRITE_KEY, ""), timeout=10)


def _queued_ids(url: str) -> list[str]:
    return [e["messageId"] for e in queued_events(url, QUEUE)]


@pytest.mark.parametrize("refusal", list(REFUSE))
def test_a_broker_refusing_writes_gets_503_then_the_retry_is_queued(
    tmp_path: Path, stack_factory: list, broker: str, client: redis.Redis, refusal: str
) -> None:
    path = tmp_path / "connections.toml"
    path.write_text(CONNECTIONS)
    stack = make_stack(stack_factory, tmp_path, broker, path)
    stack.web()

    first = _post(stack.web_url, "before-the-refusal")
    assert first.status_code == 200, first.text
    assert _queued_ids(broker) == ["before-the-refusal"]

    recover = REFUSE[refusal](client)
    with pytest.raises(redis.ResponseError):  # the server refuses writes now
        client.set("probe", "1")
    reserved = client.get(BACKLOG)
    answer = _post(stack.web_url, "refused-then-retried")
    assert answer.status_code == 503, answer.text
    assert answer.headers["Retry-After"].isdigit() and int(answer.headers["Retry-After"]) > 0
    body = answer.json()
    assert set(body) == {"code", "message"} and body["code"] == "broker_unavailable", body
    assert body["message"]

    recover()
    wait_until(lambda: client.set("probe", "1"), timeout=10, what="the server takes writes again")
    # Nothing was counted accepted: the queue as it was, the backlog reservation given back.
    assert _queued_ids(broker) == ["before-the-refusal"]
    assert client.get(BACKLOG) == reserved == b"1"
    retried = _post(stack.web_url, "refused-then-retried")
    assert retried.status_code == 200, retried.text
    assert _queued_ids(broker) == ["before-the-refusal", "refused-then-retried"]
