"""The documented claims about the ingest (README, docs/interfaces.md, docs/choices.md), each
checked at the HTTP level.

- The JSON nesting bound is 64 levels: an event nested 64 deep is accepted, 65 deep refused with
  ``nesting_too_deep`` -- on the single-event endpoints (whole request, 400) and inside a batch
  (that item, listed in ``rejected``), through the Tracking API and the Segment webhooks door.
- ``429 backlog_full`` with ``Retry-After`` when a connection's queued work is over its
  ``backlog_limit``; nothing of a refused request is enqueued; once workers drain the backlog,
  the same request is accepted.
- ``STATUS_PAGE=off`` disables ``/`` and ``/status.json`` and nothing else.
- An internal error answers ``503 internal_error`` with ``Retry-After`` (never a 500), on every
  door, and enqueues nothing.

Real gunicorn, Redis and (for the backlog) a Celery worker and the fake Voucherify; the internal
error is provoked in process (nothing a client sends can cause one, by design).
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import requests
from flask.testing import FlaskClient

from app import create_app
from connector.config import load_settings
from tests.conftest import make_stack
from tests.support.broker import queued_events
from tests.support.fakes import FakeVoucherify
from tests.support.faultkit import idem_key
from tests.support.processes import Stack, wait_until
from tests.support.webhooks import iso_now, load_example, signed_request, wrap

WRITE_KEY = "wk_claims_write_key"
SEGMENT_SECRET = "segment-webhook-secret-claims"
VF_SECRET = "voucherify-webhook-secret-claims"
MAX_DEPTH = 64  # docs/choices.md: "The JSON nesting bound is 64 levels"


def connections(voucherify_url: str = "http://127.0.0.1:9", backlog_limit: int = 100_000) -> str:
    return f"""
[[connection]]
id = "claims"
write_keys = ["{WRITE_KEY}"]
segment_webhook_secret = "{SEGMENT_SECRET}"
backlog_limit = {backlog_limit}
[connection.voucherify]
app_id = "app-id-claims"
secret_key = "secret-key-claims"
region = "eu"
api_url = "{voucherify_url}"
webhook_secret = "{VF_SECRET}"
[connection.segment]
write_key = "segment-write-key-claims"
api_url = "http://127.0.0.1:9"
"""


def auth() -> dict[str, str]:
    return {"Authorization": "Basic " + base64.b64encode(f"{WRITE_KEY}:".encode()).decode()}


def depth(value: Any) -> int:
    """Containers on the deepest path (an object with scalars only is 1)."""
    if isinstance(value, dict):
        return 1 + max((depth(v) for v in value.values()), default=0)
    if isinstance(value, list):
        return 1 + max((depth(v) for v in value), default=0)
    return 0


def event_of_depth(levels: int, message_id: str) -> dict[str, Any]:
    """A valid track call whose JSON nests exactly ``levels`` deep (the event itself is level 1)."""
    inner: dict[str, Any] = {"leaf": True}
    for _ in range(levels - 2):  # the event (1) and `properties` (2) are two levels
        inner = {"x": inner}
    event = {
        "type": "track",
        "userId": "deep-user",
        "event": "Deep",
        "messageId": message_id,
        "properties": inner,
    }
    assert depth(event) == levels
    return event


def no_server_error(answer: requests.Response) -> dict[str, Any]:
    assert answer.status_code < 500, answer.text
    body: dict[str, Any] = answer.json()
    return body


@pytest.fixture
def web(tmp_path: Path, redis_url: str, stack_factory: list) -> Stack:
    path = tmp_path / "connections.toml"
    path.write_text(connections())
    stack = make_stack(stack_factory, tmp_path, redis_url, path)
    stack.web()
    return stack


# ---------------------------------------------------------------------------------------------
# Nesting: 64 accepted, 65 refused


@pytest.mark.integration
def test_nesting_boundary_is_64_levels_single_events_and_batches(web: Stack, redis_url: str) -> None:
    url = web.web_url
    ok, too_deep = event_of_depth(MAX_DEPTH, "deep-64"), event_of_depth(MAX_DEPTH + 1, "deep-65")

    # Single-event endpoints: the whole request.
    answer = requests.post(url + "/v1/track", json=ok, headers=auth(), timeout=10)
    assert answer.status_code == 200 and no_server_error(answer) == {"success": True}, answer.text
    answer = requests.post(url + "/v1/track", json=too_deep, headers=auth(), timeout=10)
    body = no_server_error(answer)
    assert answer.status_code == 400 and body["code"] == "nesting_too_deep" and body["message"], answer.text

    # A batch: the item 65 deep is refused and listed; its 64-deep neighbour goes through.
    batch = [event_of_depth(MAX_DEPTH, "deep-64-b"), event_of_depth(MAX_DEPTH + 1, "deep-65-b")]
    answer = requests.post(url + "/v1/batch", json={"batch": batch}, headers=auth(), timeout=10)
    body = no_server_error(answer)
    assert answer.status_code == 200, answer.text
    assert [(r["index"], r["code"]) for r in body["rejected"]] == [(1, "nesting_too_deep")]
    # ...and a batch of only that item is a whole-request refusal naming it.
    answer = requests.post(
        url + "/v1/batch", json={"batch": [too_deep, too_deep]}, headers=auth(), timeout=10
    )
    body = no_server_error(answer)
    assert answer.status_code == 400 and body["code"] == "no_valid_events", answer.text
    assert [(r["index"], r["code"]) for r in body["rejected"]] == [
        (0, "nesting_too_deep"),
        (1, "nesting_too_deep"),
    ]

    # The Segment webhooks door: one event, and an array (the Actions batch).
    for payload, status in ((ok | {"messageId": "deep-64-w"}, 200), (too_deep, 400)):
        raw = json.dumps(payload).encode()
        signature = hmac.new(SEGMENT_SECRET.encode(), raw, hashlib.sha1).hexdigest()
        answer = requests.post(
            url + "/webhooks/segment/claims", data=raw, headers={"X-Signature": signature}, timeout=10
        )
        body = no_server_error(answer)
        assert answer.status_code == status, answer.text
        if status == 400:
            assert body["code"] == "nesting_too_deep"
    raw = json.dumps([event_of_depth(MAX_DEPTH, "deep-64-wa"), too_deep]).encode()
    signature = hmac.new(SEGMENT_SECRET.encode(), raw, hashlib.sha1).hexdigest()
    answer = requests.post(
        url + "/webhooks/segment/claims", data=raw, headers={"X-Signature": signature}, timeout=10
    )
    body = no_server_error(answer)
    assert answer.status_code == 200 and [(r["index"], r["code"]) for r in body["rejected"]] == [
        (1, "nesting_too_deep")
    ], answer.text

    # Exactly the 64-deep events reached the broker, whole.
    queued = {e["messageId"]: e for e in queued_events(redis_url, "voucherify.eu")}
    assert sorted(queued) == ["deep-64", "deep-64-b", "deep-64-w", "deep-64-wa"]
    assert all(depth(e["properties"]) == MAX_DEPTH - 1 for e in queued.values())


# ---------------------------------------------------------------------------------------------
# Backlog: 429 backlog_full, then accepted once drained


@pytest.mark.integration
def test_backlog_full_is_429_with_retry_after_and_clears_when_drained(
    tmp_path: Path, redis_url: str, stack_factory: list
) -> None:
    limit = 3
    with FakeVoucherify(
        app_id="app-id-claims", secret_key="secret-key-claims", log_dir=tmp_path / "fakes"
    ) as fake:
        path = tmp_path / "connections.toml"
        path.write_text(connections(fake.url, backlog_limit=limit))
        stack = make_stack(stack_factory, tmp_path, redis_url, path, CONNECTOR_SCHEDULER_INTERVAL="0.2")
        stack.web()  # no worker yet: accepted work stays queued

        def track(message_id: str) -> dict[str, Any]:
            return {"type": "track", "userId": f"u-{message_id}", "event": "E", "messageId": message_id}

        for i in range(limit):
            answer = requests.post(
                stack.web_url + "/v1/track", json=track(f"b-{i}"), headers=auth(), timeout=10
            )
            assert answer.status_code == 200, answer.text
        refused = [
            requests.post(stack.web_url + "/v1/track", json=track("b-over"), headers=auth(), timeout=10),
            requests.post(
                stack.web_url + "/v1/batch",
                json={"batch": [track("b-over-1"), track("b-over-2")]},
                headers=auth(),
                timeout=10,
            ),
        ]
        for answer in refused:
            body = no_server_error(answer)
            assert answer.status_code == 429 and body["code"] == "backlog_full" and body["message"], (
                answer.text
            )
            assert float(answer.headers["Retry-After"]) > 0
        # Nothing of the refused requests was enqueued.
        assert sorted(e["messageId"] for e in queued_events(redis_url, "voucherify.eu")) == [
            "b-0",
            "b-1",
            "b-2",
        ]

        # Workers drain the backlog; the refused request, sent again, is accepted and delivered.
        stack.worker(concurrency=4)
        stack.scheduler()
        wait_until(
            lambda: len(fake.requests(path="/v1/events")) >= limit, timeout=30, what="the backlog drained"
        )

        def accepted_again() -> bool:
            answer = requests.post(
                stack.web_url + "/v1/track", json=track("b-over"), headers=auth(), timeout=10
            )
            assert answer.status_code in (200, 429), answer.text
            return answer.status_code == 200

        wait_until(accepted_again, timeout=30, interval=0.5, what="ingest accepting again")
        wait_until(
            lambda: any(
                idem_key(r) == "claims:v:b-over:add_custom_event" and r["status"] == 200
                for r in fake.requests(path="/v1/events")
            ),
            timeout=30,
            what=f"the once-refused event delivered: {[(idem_key(r), r['status']) for r in fake.requests()]}",
        )


# ---------------------------------------------------------------------------------------------
# STATUS_PAGE=off


@pytest.mark.integration
def test_status_page_off_disables_the_page_and_status_json_only(
    tmp_path: Path, redis_url: str, stack_factory: list
) -> None:
    path = tmp_path / "connections.toml"
    path.write_text(connections())
    stack = make_stack(stack_factory, tmp_path, redis_url, path, STATUS_PAGE="off")
    stack.web()
    for page in ("/", "/status.json"):
        answer = requests.get(stack.web_url + page, timeout=10)
        body = no_server_error(answer)
        assert answer.status_code == 404 and body["code"] and body["message"], (page, answer.text)
        assert "claims" not in answer.text  # no connection listed
    # Everything else still answers.
    assert requests.get(stack.web_url + "/healthz", timeout=10).status_code == 200
    assert requests.get(stack.web_url + "/readyz", timeout=10).status_code == 200
    assert requests.get(stack.web_url + "/metrics", timeout=10).status_code == 200
    event = {"type": "track", "userId": "u", "event": "E", "messageId": "still-open"}
    assert (
        requests.post(stack.web_url + "/v1/track", json=event, headers=auth(), timeout=10).status_code == 200
    )


# ---------------------------------------------------------------------------------------------
# An internal error: 503 internal_error with Retry-After


class RecordingEnqueuer:
    def suppressed(self, connection: Any, user_ids: Any) -> set[str]:
        return set()  # no regulation in these tests

    def __init__(self) -> None:
        self.calls: list[Any] = []

    def segment_events(self, connection: Any, events: Any) -> None:
        self.calls.append(events)

    def voucherify_webhook(self, connection: Any, payload: Any, received_at: float) -> None:
        self.calls.append(payload)


@pytest.fixture
def app_client(tmp_path: Path) -> Iterator[tuple[FlaskClient, RecordingEnqueuer]]:
    path = tmp_path / "c.toml"
    path.write_text(connections())
    app = create_app(load_settings({"CONNECTIONS_FILE": str(path), "REDIS_URL": "redis://127.0.0.1:1/0"}))
    queue = RecordingEnqueuer()
    app.extensions["connector.enqueuer"] = queue
    yield app.test_client(), queue


def test_an_internal_error_is_503_internal_error_with_retry_after_on_every_door(
    app_client: tuple[FlaskClient, RecordingEnqueuer], monkeypatch: pytest.MonkeyPatch
) -> None:
    client, queue = app_client

    def bug(*_args: Any, **_kwargs: Any) -> Any:
        raise RuntimeError("a bug of ours")

    # The ingest rules and the webhook parser blow up: nothing the client did.
    monkeypatch.setattr("app.views.ingest_body", bug)
    monkeypatch.setattr("connector.envelope.parse_webhook", bug)
    event = {"type": "track", "userId": "u", "event": "E"}
    raw_event = json.dumps(event).encode()
    webhook = wrap(load_example("customer.rewarded"), "customer.rewarded", "2024-01-01", "ev-bug", iso_now())
    raw_hook, hook_headers = signed_request(webhook, VF_SECRET)
    doors = [
        ("/v1/track", raw_event, auth()),
        ("/v1/batch", json.dumps({"batch": [event]}).encode(), auth()),
        (
            "/webhooks/segment/claims",
            raw_event,
            {"X-Signature": hmac.new(SEGMENT_SECRET.encode(), raw_event, hashlib.sha1).hexdigest()},
        ),
        ("/webhooks/voucherify/claims", raw_hook, hook_headers),
    ]
    for path, raw, headers in doors:
        answer = client.post(path, data=raw, headers={"Content-Type": "application/json", **headers})
        body = answer.get_json()
        assert answer.status_code == 503, (path, answer.status_code, body)
        assert body["code"] == "internal_error" and body["message"], (path, body)
        assert "a bug of ours" not in answer.get_data(as_text=True)  # no exception text to clients
        assert int(answer.headers["Retry-After"]) > 0, path
    assert queue.calls == []
