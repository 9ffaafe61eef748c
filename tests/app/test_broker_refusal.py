"""The broker refuses the work: the ingest answers 503 with Retry-After and ``{code, message}``.

Answering 2xx means the broker holds the work (SPEC 2.1); a client that got a 200 for work that
was dropped never sends it again.  In process, on the suite's own redis-server: the app is the
real one (real backlog counters, real Celery publisher); only the step under test is made to
fail, with the exceptions a real broker gives (tests/integration/test_broker_refusal_e2e.py
makes a real redis-server refuse).  Each test first shows the same request accepted, so that
the refusal it then checks is the only difference.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
import redis
from flask import Flask
from flask.testing import FlaskClient
from kombu.exceptions import OperationalError
from prometheus_client import REGISTRY
from redis.exceptions import OutOfMemoryError, ReadOnlyError

from app import create_app
from app import enqueue as enqueue_module
from connector.config import Connection, load_settings
from connector.keys import Keys
from tests.support.webhooks import iso, load_example, signed_request, wrap

WRITE_KEY = "wk_refusal"
HOOK_SECRET = "hook-refusal-secret"
OOM = "OOM command not allowed when used memory > 'maxmemory'."
READONLY = "READONLY You can't write against a read only replica."

# As they reach the ingest: Celery re-raises the broker's errors as kombu's OperationalError
# (seen with a real redis-server refusing a publish); redis-py's own classes, should a version
# or another path (the backlog reservation, a Lua script) let them through unwrapped.
REFUSALS: dict[str, Callable[[], BaseException]] = {
    "connection-refused": lambda: OperationalError(
        "Error 111 connecting to 127.0.0.1:6390. Connection refused."
    ),
    "oom-wrapped": lambda: OperationalError("command not allowed when used memory > 'maxmemory'."),
    "readonly-wrapped": lambda: OperationalError(
        f"Command # 1 (SADD _kombu.binding.q q) caused error: {READONLY}"
    ),
    "connection-refused-raw": lambda: redis.ConnectionError("Error 111 connecting to 127.0.0.1:6390."),
    "oom-raw": lambda: OutOfMemoryError(OOM),
    "readonly-raw": lambda: ReadOnlyError(READONLY),
    "timeout-raw": lambda: redis.TimeoutError("Timeout reading from socket"),
}


@dataclass
class Ingest:
    app: Flask
    client: FlaskClient
    redis: redis.Redis
    connection: Connection
    keys: Keys

    def queued(self, queue: str) -> int:
        """Messages on a broker queue (kombu's lists for it, every priority)."""
        return sum(
            int(self.redis.llen(key))
            for key in self.redis.scan_iter(match=f"{queue}*")
            if self.redis.type(key) == b"list"
        )

    def backlog(self) -> tuple[int, int]:
        """The connection's reserved events and bytes (SPEC 5): what the ingest counted accepted."""
        events = self.redis.get(self.keys.backlog(self.connection.id))
        stored = self.redis.get(self.keys.backlog_bytes(self.connection.id))
        return int(events or 0), int(stored or 0)

    def received(self, source: str, direction: str) -> float:
        labels = {"connection": self.connection.id, "direction": direction, "source": source}
        return sum(
            sample.value
            for metric in REGISTRY.collect()
            if metric.name == "connector_events_received"
            for sample in metric.samples
            if sample.name == "connector_events_received_total"
            and all(sample.labels.get(k) == v for k, v in labels.items())
        )


@pytest.fixture
def ingest(tmp_path: Path, redis_url: str) -> Iterator[Ingest]:
    path = tmp_path / "connections.toml"
    path.write_text(
        f"""
[[connection]]
id = "refusal"
write_keys = ["{WRITE_KEY}"]
[connection.voucherify]
app_id = "a"
secret_key = "s"
region = "eu"
webhook_secret = "{HOOK_SECRET}"
[connection.segment]
write_key = "seg"
"""
    )
    settings = load_settings({"CONNECTIONS_FILE": str(path), "REDIS_URL": redis_url})
    app = create_app(settings)
    client = redis.Redis.from_url(redis_url)
    (connection,) = settings.connections
    try:
        yield Ingest(app, app.test_client(), client, connection, Keys(settings.key_prefix))
    finally:
        client.close()


def _send_task_raising(error: Callable[[], BaseException]) -> Callable[..., Any]:
    def send_task(*args: Any, **kwargs: Any) -> Any:
        raise error()

    return send_task


def _assert_refused(answer: Any) -> None:
    assert answer.status_code == 503, (answer.status_code, answer.get_data(as_text=True))
    retry_after = answer.headers.get("Retry-After")
    assert retry_after is not None and retry_after.isdigit() and int(retry_after) > 0, retry_after
    body = answer.get_json()
    assert set(body) == {"code", "message"}, body
    assert body["code"] == "broker_unavailable"
    assert isinstance(body["message"], str) and body["message"]


def _track(message_id: str) -> dict[str, Any]:
    return {"type": "track", "userId": "u-1", "event": "Order Completed", "messageId": message_id}


@pytest.mark.parametrize("stage", ["publish", "reserve"])
@pytest.mark.parametrize("refusal", list(REFUSALS), ids=list(REFUSALS))
def test_a_refused_publish_is_503_with_retry_after_and_nothing_accepted(
    ingest: Ingest, monkeypatch: pytest.MonkeyPatch, refusal: str, stage: str
) -> None:
    queue = ingest.connection.voucherify.queue
    accepted = ingest.client.post("/v1/track", json=_track("m-accepted"), auth=(WRITE_KEY, ""))
    assert accepted.status_code == 200, accepted.get_json()
    assert ingest.queued(queue) == 1
    before = (ingest.backlog(), ingest.received("tracking_api", "segment_to_voucherify"))
    assert before[0][0] == 1 and before[1] >= 1

    error = REFUSALS[refusal]
    if stage == "publish":  # the backlog is reserved, then the broker refuses the message
        monkeypatch.setattr(
            ingest.app.extensions["connector.enqueuer"].celery, "send_task", _send_task_raising(error)
        )
    else:  # Redis refuses the backlog reservation itself (an OOM reaches this first)
        monkeypatch.setattr(enqueue_module.backlog, "reserve", _send_task_raising(error))

    for path, body in (
        ("/v1/track", _track("m-refused")),
        ("/v1/batch", {"batch": [_track("m-b1"), _track("m-b2")]}),
    ):
        _assert_refused(ingest.client.post(path, json=body, auth=(WRITE_KEY, "")))
    # Nothing counted accepted: no message, the reservation given back, no received count.
    assert ingest.queued(queue) == 1
    assert (ingest.backlog(), ingest.received("tracking_api", "segment_to_voucherify")) == before

    monkeypatch.undo()  # the broker takes work again: the client's retry is accepted
    retried = ingest.client.post("/v1/track", json=_track("m-refused"), auth=(WRITE_KEY, ""))
    assert retried.status_code == 200, retried.get_json()
    assert ingest.queued(queue) == 2


def test_a_refused_voucherify_webhook_is_503_with_retry_after(
    ingest: Ingest, monkeypatch: pytest.MonkeyPatch
) -> None:
    assert ingest.connection.segment is not None
    queue = ingest.connection.segment.queue

    def webhook(event_id: str) -> Any:
        body = wrap(
            load_example("customer.rewarded"),
            "customer.rewarded",
            "2024-01-01",
            event_id,
            iso(datetime.now(UTC).timestamp() - 60),
        )
        raw, headers = signed_request(body, HOOK_SECRET)
        return ingest.client.post(f"/webhooks/voucherify/{ingest.connection.id}", data=raw, headers=headers)

    assert webhook("ev-accepted").status_code == 202
    assert ingest.queued(queue) == 1
    before = ingest.backlog()
    enqueuer = ingest.app.extensions["connector.enqueuer"]
    monkeypatch.setattr(enqueuer.celery, "send_task", _send_task_raising(REFUSALS["oom-wrapped"]))
    _assert_refused(webhook("ev-refused"))
    assert ingest.queued(queue) == 1 and ingest.backlog() == before
    monkeypatch.undo()
    assert webhook("ev-refused").status_code == 202
    assert ingest.queued(queue) == 2
