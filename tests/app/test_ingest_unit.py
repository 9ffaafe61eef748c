"""Unit tests of the ingest rules, in process (the end-to-end tests run the real processes)."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import pytest
from flask.testing import FlaskClient

from app import create_app
from app.ingest import ingest_body, normalize
from connector.config import load_settings
from tests.support.webhooks import iso, load_example, signed_request, wrap

RECEIVED = datetime(2024, 5, 1, 12, 0, 0, tzinfo=UTC)


class RecordingEnqueuer:
    def suppressed(self, connection: Any, user_ids: Any) -> set[str]:
        return set()  # no regulation in these tests

    def __init__(self) -> None:
        self.events: list[tuple[str, list[dict[str, Any]]]] = []
        self.webhooks: list[tuple[str, Any]] = []

    def segment_events(
        self, connection: Any, events: list[dict[str, Any]], shared: dict[str, Any], stored_bytes: int
    ) -> None:
        self.events.append((connection.id, events))

    def voucherify_webhook(
        self, connection: Any, payload: Any, received_at: float, stored_bytes: int
    ) -> None:
        self.webhooks.append((connection.id, payload))


@pytest.fixture
def client_and_queue(tmp_path: Any) -> tuple[FlaskClient, RecordingEnqueuer]:
    path = tmp_path / "c.toml"
    path.write_text(
        """
[[connection]]
id = "acme"
write_keys = ["wk"]
[connection.voucherify]
app_id = "a"
secret_key = "s"
region = "eu"
webhook_secret = "hook"
[connection.segment]
write_key = "seg"

[[connection]]
id = "nohooks"
write_keys = ["wk2"]
[connection.voucherify]
app_id = "a"
secret_key = "s"
region = "us1"

[[connection]]
id = "nosegment"
write_keys = ["wk3"]
[connection.voucherify]
app_id = "a"
secret_key = "s"
region = "as1"
webhook_secret = "hook3"
"""
    )
    app = create_app(load_settings({"CONNECTIONS_FILE": str(path), "REDIS_URL": "redis://127.0.0.1:1/0"}))
    queue = RecordingEnqueuer()
    app.extensions["connector.enqueuer"] = queue
    return app.test_client(), queue


def test_batch_context_merge_item_wins_and_sent_at_fallback() -> None:
    body = {
        "batch": [
            {
                "type": "track",
                "userId": "u",
                "event": "E",
                "context": {"ip": "item"},
                "timestamp": "2024-05-01T11:59:00Z",
            },
            {
                "type": "identify",
                "userId": "u",
                "sentAt": "2024-05-01T12:00:30Z",
                "timestamp": "2024-05-01T12:00:00Z",
            },
        ],
        "context": {"ip": "batch", "locale": "pl"},
        "integrations": {"All": False},
        "sentAt": "2024-05-01T12:01:00Z",
    }
    result = ingest_body(body, "batch", now=RECEIVED)
    first, second = result.expanded()
    assert first["context"] == {"ip": "item", "locale": "pl"}
    assert first["integrations"] == {"All": False}
    # the batch's sentAt is two minutes after the event: timestamp = receivedAt - 2 min
    assert first["timestamp"] == "2024-05-01T11:58:00.000Z"
    assert first["sentAt"] == "2024-05-01T12:01:00Z"
    # the item's own sentAt wins: 30 s between timestamp and sentAt
    assert second["timestamp"] == "2024-05-01T11:59:30.000Z"
    assert second["originalTimestamp"] == "2024-05-01T12:00:00Z"


def test_message_id_kept_or_assigned_and_received_at() -> None:
    result = ingest_body(
        {
            "batch": [
                {"type": "track", "userId": "u", "event": "E", "messageId": "keep-me"},
                {"type": "track", "userId": "u", "event": "E"},
            ]
        },
        "batch",
        now=RECEIVED,
    )
    kept, assigned = result.expanded()
    assert kept["messageId"] == "keep-me"
    assert assigned["messageId"].startswith("api-") and len(assigned["messageId"]) <= 100
    assert kept["receivedAt"] == kept["timestamp"] == "2024-05-01T12:00:00.000Z"


def test_path_gives_type_when_body_has_none() -> None:
    result = ingest_body({"userId": "u", "groupId": "g"}, "group", now=RECEIVED)
    assert result.accepted[0]["type"] == "group"


def test_normalize_does_not_forward_write_key() -> None:
    event = normalize({"type": "track", "writeKey": "secret", "userId": "u"}, RECEIVED)
    assert "writeKey" not in event


def test_voucherify_webhook_age_refusal_and_acceptance(
    client_and_queue: tuple[FlaskClient, RecordingEnqueuer],
) -> None:
    client, queue = client_and_queue
    example = load_example("customer.rewarded")
    old = wrap(
        example, "customer.rewarded", "2024-01-01", "ev-old", iso(datetime.now(UTC).timestamp() - 49 * 3600)
    )
    raw, headers = signed_request(old, "hook")
    answer = client.post("/webhooks/voucherify/acme", data=raw, headers=headers)
    assert answer.status_code == 400 and answer.get_json()["code"] == "event_too_old"
    fresh = wrap(
        example, "customer.rewarded", "2024-01-01", "ev-new", iso(datetime.now(UTC).timestamp() - 3600)
    )
    raw, headers = signed_request(fresh, "hook")
    answer = client.post("/webhooks/voucherify/acme", data=raw, headers=headers)
    assert answer.status_code == 202, answer.get_json()
    assert answer.get_json()["event_id"] == "ev-new"
    assert [cid for cid, _ in queue.webhooks] == ["acme"]


def test_voucherify_webhook_connection_states(
    client_and_queue: tuple[FlaskClient, RecordingEnqueuer],
) -> None:
    client, queue = client_and_queue
    body = wrap(
        load_example("customer.rewarded"),
        "customer.rewarded",
        "2024-01-01",
        "ev",
        iso(datetime.now(UTC).timestamp()),
    )
    raw, headers = signed_request(body, "hook")
    answer = client.post("/webhooks/voucherify/nohooks", data=raw, headers=headers)
    # No webhook_secret: refused like a wrong signature (strangers cannot tell the id exists).
    assert answer.status_code == 401 and answer.get_json()["code"] == "invalid_signature"
    raw, headers = signed_request(body, "hook3")
    answer = client.post("/webhooks/voucherify/nosegment", data=raw, headers=headers)
    assert answer.status_code == 409 and answer.get_json()["code"] == "segment_not_configured"
    assert queue.webhooks == []


def test_unknown_routes_and_methods_are_json(client_and_queue: tuple[FlaskClient, RecordingEnqueuer]) -> None:
    client, _ = client_and_queue
    answer = client.get("/v1/track")
    assert answer.status_code == 405 and answer.get_json()["code"] and answer.get_json()["message"]
    answer = client.post("/nope")
    assert answer.status_code == 404 and answer.get_json()["code"] == "not_found"


def test_redis_unreachable_readyz(client_and_queue: tuple[FlaskClient, RecordingEnqueuer]) -> None:
    client, _ = client_and_queue
    assert client.get("/healthz").status_code == 200
    answer = client.get("/readyz")
    assert answer.status_code == 503 and answer.get_json()["code"] == "redis_unavailable"
