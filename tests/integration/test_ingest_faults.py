"""The ingest under bad input and without its broker, against real gunicorn and Redis."""

from __future__ import annotations

import base64
import gzip
import hashlib
import hmac
import json
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
import redis
import requests
from segment.analytics import request as segment_request
from segment.analytics.client import Client

from ops.embedded import free_port, start_redis
from tests.conftest import make_stack
from tests.support.broker import queued_events, queued_tasks
from tests.support.processes import wait_until

pytestmark = pytest.mark.integration

CONNECTIONS = """
[[connection]]
id = "acme"
write_keys = ["wk_acme_live"]
segment_webhook_secret = "seg-secret"
[connection.voucherify]
coalesce_window_seconds = 0  # not about the hold window: every request as it comes
api_calls_per_minute = 10000000  # not about quotas: no budget in the way
bulk_calls_per_hour = 10000000
app_id = "app-id-acme"
secret_key = "secret-key-acme"
region = "eu"
api_url = "http://127.0.0.1:9"
webhook_secret = "vf-secret"
[connection.segment]
write_key = "segment-out-key"
api_url = "http://127.0.0.1:9"

[[connection]]
id = "nosig"
write_keys = ["wk_nosig"]
[connection.voucherify]
coalesce_window_seconds = 0  # not about the hold window: every request as it comes
api_calls_per_minute = 10000000  # not about quotas: no budget in the way
bulk_calls_per_hour = 10000000
app_id = "nosig-app-id"
secret_key = "nosig-secret-key"
region = "eu"
api_url = "http://127.0.0.1:9"
"""


def auth(key: str = "wk_acme_live") -> dict[str, str]:
    return {"Authorization": "Basic " + base64.b64encode(f"{key}:".encode()).decode()}


def event(**extra: Any) -> dict[str, Any]:
    return {"type": "track", "userId": "u1", "event": "E", **extra}


def gzip_bomb() -> bytes:
    # 50 MB of zeros inside a valid JSON string: ~50 KB compressed.
    payload = b'{"batch": [{"type": "track", "userId": "u", "event": "' + b"0" * (50 * 1024 * 1024) + b'"}]}'
    return gzip.compress(payload, 9)


def deep(depth: int) -> dict[str, Any]:
    node: dict[str, Any] = {}
    root = node
    for _ in range(depth):
        child: dict[str, Any] = {}
        node["x"] = child
        node = child
    return root


def sign_sha1(raw: bytes, secret: str) -> str:
    return hmac.new(secret.encode(), raw, hashlib.sha1).hexdigest()


def sign_sha256(raw: bytes, secret: str) -> str:
    return hmac.new(secret.encode(), raw, hashlib.sha256).hexdigest()


# (name, method path, headers, raw body, expected status, expected code)
def battery() -> list[tuple[str, str, dict[str, str], bytes, int, str]]:
    j = lambda obj: json.dumps(obj).encode()  # noqa: E731
    big_props = {"blob": "x" * (33 * 1024)}
    cases: list[tuple[str, str, dict[str, str], bytes, int, str]] = []
    for path in ("/v1/track", "/v1/t", "/v1/batch", "/v1/import", "/v1/identify", "/v1/b"):
        is_batch = path in ("/v1/batch", "/v1/import", "/v1/b")
        cases += [
            (f"{path} invalid json", path, auth(), b"{not json", 400, "invalid_json"),
            (f"{path} not an object", path, auth(), b"[1, 2]", 400, "not_an_object"),
            (f"{path} empty body", path, auth(), b"", 400, "invalid_json"),
            (f"{path} unknown key", path, auth("wk_nope"), j(event()), 401, "invalid_write_key"),
            (f"{path} missing key", path, {}, j(event()), 401, "missing_write_key"),
            (
                f"{path} gzip bomb",
                path,
                {**auth(), "Content-Encoding": "gzip"},
                gzip_bomb(),
                400,
                "request_too_large",
            ),
            (
                f"{path} bad gzip",
                path,
                {**auth(), "Content-Encoding": "gzip"},
                b"\x1f\x8bnot gzip",
                400,
                "invalid_gzip",
            ),
            (
                f"{path} deep nesting",
                path,
                auth(),
                j({"batch": [event(properties=deep(200))]} if is_batch else event(properties=deep(200))),
                400,
                "nesting_too_deep",
            ),
        ]
        if is_batch:
            cases += [
                (
                    f"{path} oversize event only",
                    path,
                    auth(),
                    j({"batch": [event(properties=big_props)]}),
                    400,
                    "event_too_large",
                ),
                (
                    f"{path} oversize batch",
                    path,
                    auth(),
                    j({"batch": [event(properties={"b": "y" * 20_000}) for _ in range(30)]}),
                    400,
                    "request_too_large",
                ),
                (
                    f"{path} 2501 events",
                    path,
                    auth(),
                    j({"batch": [{"type": "track", "userId": 1, "event": "E"}] * 2501}),
                    400,
                    "too_many_events",
                ),
                (f"{path} batch not a list", path, auth(), j({"batch": {"a": 1}}), 400, "invalid_batch"),
                (
                    f"{path} all invalid",
                    path,
                    auth(),
                    j({"batch": [{"type": "track", "event": "E"}, {"type": "nope", "userId": "u"}]}),
                    400,
                    "no_valid_events",
                ),
            ]
        else:
            cases += [
                (
                    f"{path} oversize event",
                    path,
                    auth(),
                    j(event(properties=big_props)),
                    400,
                    "request_too_large",
                ),
                (
                    f"{path} missing ids",
                    path,
                    auth(),
                    j({"type": "track", "event": "E"}),
                    400,
                    "missing_identity",
                ),
            ]
    cases += [
        (
            "track wrong types: event",
            "/v1/track",
            auth(),
            j({"userId": "u", "event": [12]}),
            400,
            "invalid_field",
        ),
        (
            "track wrong types: properties",
            "/v1/track",
            auth(),
            j({"userId": "u", "event": "E", "properties": [1]}),
            400,
            "invalid_field",
        ),
        (
            "track wrong types: userId",
            "/v1/track",
            auth(),
            j({"userId": {"a": 1}, "event": "E"}),
            400,
            "invalid_field",
        ),
        (
            "track bad timestamp",
            "/v1/track",
            auth(),
            j({"userId": "u", "event": "E", "timestamp": "yesterday"}),
            400,
            "invalid_timestamp",
        ),
        # A track without `event` is accepted (SPEC 3.4c); an object can never be an event name.
        (
            "track object event",
            "/v1/track",
            auth(),
            j({"userId": "u", "event": {"a": 1}}),
            400,
            "invalid_field",
        ),
        ("page array name", "/v1/page", auth(), j({"userId": "u", "name": ["a"]}), 400, "invalid_field"),
        ("group missing groupId", "/v1/group", auth(), j({"userId": "u"}), 400, "missing_group_id"),
        ("alias missing previousId", "/v1/alias", auth(), j({"userId": "u"}), 400, "missing_previous_id"),
        (
            "alias missing userId",
            "/v1/alias",
            auth(),
            j({"previousId": "p", "anonymousId": "a"}),
            400,
            "missing_user_id",
        ),
        (
            "messageId too long",
            "/v1/track",
            auth(),
            j(event(messageId="m" * 101)),
            400,
            "message_id_too_long",
        ),
        (
            "unknown type",
            "/v1/batch",
            auth(),
            j({"batch": [{"type": "purchase", "userId": "u"}]}),
            400,
            "invalid_type",
        ),
        ("unknown endpoint", "/v1/nope", auth(), j(event()), 404, "not_found"),
        (
            "unsupported encoding",
            "/v1/track",
            {**auth(), "Content-Encoding": "br"},
            j(event()),
            415,
            "unsupported_encoding",
        ),
        ("writeKey in body unknown", "/v1/track", {}, j(event(writeKey="bad")), 401, "invalid_write_key"),
        (
            "segment webhook bad signature",
            "/webhooks/segment/acme",
            {"X-Signature": "00" * 20},
            j(event()),
            401,
            "invalid_signature",
        ),
        ("segment webhook no signature", "/webhooks/segment/acme", {}, j(event()), 401, "invalid_signature"),
        (
            "segment webhook unknown connection",
            "/webhooks/segment/nope",
            {},
            j(event()),
            401,  # as a known id without a signature: the door does not say which ids exist
            "invalid_signature",
        ),
        (
            "segment webhook invalid json",
            "/webhooks/segment/acme",
            {"X-Signature": sign_sha1(b"{x", "seg-secret")},
            b"{x",
            400,
            "invalid_json",
        ),
        (
            "segment webhook invalid event",
            "/webhooks/segment/acme",
            {"X-Signature": sign_sha1(j({"type": "track", "event": "E"}), "seg-secret")},
            j({"type": "track", "event": "E"}),
            400,
            "missing_identity",
        ),
        (
            "segment webhook signed with other secret",
            "/webhooks/segment/acme",
            {"X-Signature": sign_sha1(j(event()), "vf-secret")},
            j(event()),
            401,
            "invalid_signature",
        ),
        (
            "voucherify webhook no signature",
            "/webhooks/voucherify/acme",
            {},
            j({"id": "evt_1"}),
            401,
            "invalid_signature",
        ),
        (
            "voucherify webhook bad signature",
            "/webhooks/voucherify/acme",
            {"x-voucherify-signature": "ab" * 32},
            j({"id": "evt_1"}),
            401,
            "invalid_signature",
        ),
        (
            "voucherify webhook signed with segment secret",
            "/webhooks/voucherify/acme",
            {"x-voucherify-signature": sign_sha256(b'{"id":"evt_1"}', "seg-secret")},
            b'{"id":"evt_1"}',
            401,
            "invalid_signature",
        ),
        (
            "voucherify webhook unknown connection",
            "/webhooks/voucherify/nope",
            {},
            b"{}",
            401,
            "invalid_signature",
        ),
        (
            "voucherify webhook invalid json",
            "/webhooks/voucherify/acme",
            {"x-voucherify-signature": sign_sha256(b"{x", "vf-secret")},
            b"{x",
            400,
            "invalid_json",
        ),
        (
            "voucherify webhook not a webhook",
            "/webhooks/voucherify/acme",
            {"x-voucherify-signature": sign_sha256(b'{"a":1}', "vf-secret")},
            b'{"a":1}',
            400,
            "invalid_webhook",
        ),
        (
            "voucherify webhook gzip bomb",
            "/webhooks/voucherify/acme",
            {"Content-Encoding": "gzip", "x-voucherify-signature": "ab" * 32},
            gzip_bomb(),
            400,
            "request_too_large",
        ),
        (
            "voucherify webhook gzip bomb without a signature: refused unread",
            "/webhooks/voucherify/acme",
            {"Content-Encoding": "gzip"},
            gzip_bomb(),
            401,
            "invalid_signature",
        ),
    ]
    cases += hardening_cases()
    return cases


def multi_member_bomb() -> bytes:
    # Each gzip member stays under the bound; together they inflate past it.
    return gzip.compress(b'{"batch": [') + gzip.compress(b" " * 300_000) * 3


def hardening_cases() -> list[tuple[str, str, dict[str, str], bytes, int, str]]:
    """Issue 10: the classes of the adversarial review, in other shapes and on other doors."""
    j = lambda obj: json.dumps(obj).encode()  # noqa: E731
    now = time.time()

    def vf(created_at: str | None, event_id: str = "evt_h") -> tuple[dict[str, str], bytes]:
        body: dict[str, Any] = {
            "id": event_id,
            "object": "event",
            "webhook_id": "wh_1",
            "type": "customer.rewarded",
            "data": {"customer": {"source_id": "c1"}},
        }
        if created_at is not None:
            body["created_at"] = created_at
        raw = j(body)
        return {"x-voucherify-signature": sign_sha256(raw, "vf-secret")}, raw

    cases: list[tuple[str, str, dict[str, str], bytes, int, str]] = []
    for field, value in (
        ("timestamp", "0001-01-01T00:00:00+01:00"),
        ("sentAt", "9999-12-31T23:59:59-05:00"),
        ("originalTimestamp", "2024-02-30T00:00:00Z"),
        ("timestamp", 1714564800000),
    ):
        for path in ("/v1/identify", "/v1/p"):
            cases.append(
                (
                    f"{path} unusable {field}",
                    path,
                    auth(),
                    j({"userId": "u", "name": "P", field: value}),
                    400,
                    "invalid_timestamp",
                )
            )
        cases.append(
            (
                f"batch: every item with an unusable {field}",
                "/v1/batch",
                auth(),
                j({"batch": [event(**{field: value}), {"type": "identify", "userId": "u", field: value}]}),
                400,
                "no_valid_events",
            )
        )
    cases += [
        (
            "batch: skew arithmetic out of range",
            "/v1/batch",
            auth(),
            j({"batch": [event(timestamp="0001-01-02T00:00:00Z", sentAt="9999-12-30T00:00:00Z")]}),
            400,
            "invalid_timestamp",
        ),
        ("2000-deep array", "/v1/batch", auth(), b"[" * 2000 + b"]" * 2000, 400, "nesting_too_deep"),
        (
            "2000-deep object on a webhook",
            "/webhooks/segment/acme",
            {"X-Signature": sign_sha1(b'{"a":' * 2000 + b"1" + b"}" * 2000, "seg-secret")},
            b'{"a":' * 2000 + b"1" + b"}" * 2000,
            400,
            "nesting_too_deep",
        ),
        (
            "integer above 2^64 (single event)",
            "/v1/track",
            auth(),
            b'{"userId": "u", "event": "E", "properties": {"total": 99999999999999999999999}}',
            400,
            "number_out_of_range",
        ),
        (
            "integer below -2^63 as an identity",
            "/v1/identify",
            auth(),
            b'{"userId": -9223372036854775809}',
            400,
            "number_out_of_range",
        ),
        (
            "multi-member gzip past the bound",
            "/v1/batch",
            {**auth(), "Content-Encoding": "gzip"},
            multi_member_bomb(),
            400,
            "request_too_large",
        ),
        (
            "batch-level context over 32 KB merged into the item",
            "/v1/batch",
            auth(),
            j({"batch": [event()], "context": {"blob": "c" * (33 * 1024)}}),
            400,
            "event_too_large",
        ),
        (
            "segment webhook, connection without a secret",
            "/webhooks/segment/nosig",
            {},
            j(event()),
            401,
            "invalid_signature",
        ),
        (
            "segment webhook, no secret, array with a made-up signature",
            "/webhooks/segment/nosig",
            {"X-Signature": sign_sha1(j([event()]), "")},
            j([event()]),
            401,
            "invalid_signature",
        ),
    ]
    for name, created in (
        ("missing created_at", None),
        ("unreadable created_at", "the day before yesterday"),
        ("created_at year 1 with an offset", "0001-01-01T00:00:00+02:00"),
        ("created_at an hour ahead", datetime.fromtimestamp(now + 3600, UTC).isoformat()),
        ("created_at in 2999", "2999-01-01T00:00:00Z"),
    ):
        headers, raw = vf(created)
        code = "invalid_webhook" if created is None else "invalid_created_at"
        cases.append((f"voucherify webhook {name}", "/webhooks/voucherify/acme", headers, raw, 400, code))
    headers, raw = vf(datetime.fromtimestamp(now, UTC).isoformat())
    raw = raw.replace(b'"c1"}', b'"c1", "points": 123456789012345678901234}')
    cases.append(
        (
            "voucherify webhook with an integer above 2^64",
            "/webhooks/voucherify/acme",
            {"x-voucherify-signature": sign_sha256(raw, "vf-secret")},
            raw,
            400,
            "number_out_of_range",
        )
    )
    return cases


def test_bad_input_battery(tmp_path: Path, redis_url: str, stack_factory: list) -> None:
    path = tmp_path / "c.toml"
    path.write_text(CONNECTIONS)
    stack = make_stack(stack_factory, tmp_path, redis_url, path)
    stack.web()
    failures = []
    for name, url_path, headers, raw, status, code in battery():
        answer = requests.post(
            stack.web_url + url_path,
            data=raw,
            headers={"Content-Type": "application/json", **headers},
            timeout=30,
        )
        try:
            body = answer.json()
        except ValueError:
            body = {}
        if answer.status_code != status or body.get("code") != code or not body.get("message"):
            failures.append(f"{name}: {answer.status_code} {answer.text[:200]}")
        assert answer.status_code != 500, name
    assert not failures, "\n".join(failures)
    # Nothing invalid reached the broker.
    client = redis.Redis.from_url(redis_url)
    assert [k for k in client.keys("*") if not k.startswith(b"connector:")] == [], client.keys("*")
    assert queued_tasks(redis_url, "voucherify.eu") == []
    assert queued_tasks(redis_url, "segment.us") == []


def test_partial_batch_rejections_are_listed(tmp_path: Path, redis_url: str, stack_factory: list) -> None:
    path = tmp_path / "c.toml"
    path.write_text(CONNECTIONS)
    stack = make_stack(stack_factory, tmp_path, redis_url, path)
    stack.web()
    batch = [
        event(messageId="ok-1"),
        {"type": "track", "event": "E"},
        event(messageId="ok-2", properties={"blob": "x" * (33 * 1024)}),
        {"type": "group", "userId": "u"},
        {"type": "identify", "anonymousId": "anon", "messageId": "ok-3"},
        "not an object",
    ]
    answer = requests.post(stack.web_url + "/v1/batch", json={"batch": batch}, headers=auth(), timeout=10)
    assert answer.status_code == 200, answer.text
    body = answer.json()
    assert body["success"] is True
    assert [(r["index"], r["code"]) for r in body["rejected"]] == [
        (1, "missing_identity"),
        (2, "event_too_large"),
        (3, "missing_group_id"),
        (5, "not_an_object"),
    ]
    assert sorted(e["messageId"] for e in queued_events(redis_url, "voucherify.eu")) == ["ok-1", "ok-3"]


def test_segment_webhook_signed_single_and_array(tmp_path: Path, redis_url: str, stack_factory: list) -> None:
    path = tmp_path / "c.toml"
    path.write_text(CONNECTIONS)
    stack = make_stack(stack_factory, tmp_path, redis_url, path)
    stack.web()
    single = json.dumps(event(messageId="w-1")).encode()
    many = json.dumps(
        [event(messageId="w-2"), {"type": "identify", "userId": "u2", "messageId": "w-3"}]
    ).encode()
    for raw in (single, many):
        answer = requests.post(
            stack.web_url + "/webhooks/segment/acme",
            data=raw,
            headers={"X-Signature": sign_sha1(raw, "seg-secret")},
            timeout=10,
        )
        assert answer.status_code == 200, answer.text
    assert sorted(e["messageId"] for e in queued_events(redis_url, "voucherify.eu")) == ["w-1", "w-2", "w-3"]


def test_auth_styles(tmp_path: Path, redis_url: str, stack_factory: list) -> None:
    path = tmp_path / "c.toml"
    path.write_text(CONNECTIONS)
    stack = make_stack(stack_factory, tmp_path, redis_url, path)
    stack.web()
    no_colon = {"Authorization": "Basic " + base64.b64encode(b"wk_acme_live").decode()}
    for headers, body in (
        (auth(), event(messageId="a-1")),
        (no_colon, event(messageId="a-2")),
        ({}, event(messageId="a-3", writeKey="wk_acme_live")),
        # analytics.js posts text/plain
        ({"Content-Type": "text/plain"}, event(messageId="a-4", writeKey="wk_acme_live")),
    ):
        answer = requests.post(stack.web_url + "/v1/t", data=json.dumps(body), headers=headers, timeout=10)
        assert answer.status_code == 200, answer.text
    assert sorted(e["messageId"] for e in queued_events(redis_url, "voucherify.eu")) == [
        "a-1",
        "a-2",
        "a-3",
        "a-4",
    ]


def test_redis_down_gives_503_and_the_client_retry_succeeds(tmp_path: Path, stack_factory: list) -> None:
    port = free_port()
    redis_proc, url = start_redis(tmp_path / "redis", port, appendonly=True)
    try:
        path = tmp_path / "c.toml"
        path.write_text(CONNECTIONS)
        stack = make_stack(stack_factory, tmp_path, url, path)
        stack.web()
        assert requests.get(stack.web_url + "/readyz", timeout=5).status_code == 200
        redis_proc.terminate()
        redis_proc.wait(10)

        answer = requests.post(stack.web_url + "/v1/track", json=event(), headers=auth(), timeout=10)
        assert answer.status_code == 503
        assert answer.headers["Retry-After"].isdigit()
        assert answer.json()["code"] == "broker_unavailable"
        assert requests.get(stack.web_url + "/readyz", timeout=5).status_code == 503

        # Segment's client gets the 503 with Retry-After, waits, and retries the same batch.  What
        # the client received is recorded through its own HTTP session (a response hook), so the
        # test shows the 503 reached it -- and Redis comes back only after it did.
        seen: list[tuple[int, list[str]]] = []  # (status, messageIds of the batch sent)

        def record(response: requests.Response, *_args: Any, **_kwargs: Any) -> None:
            if response.url.startswith(stack.web_url):
                raw = response.request.body or b"{}"
                sent = json.loads(gzip.decompress(raw) if raw[:2] == b"\x1f\x8b" else raw)
                seen.append((response.status_code, [e["messageId"] for e in sent.get("batch", [])]))

        hooks = segment_request._session.hooks["response"]
        hooks.append(record)
        try:
            errors: list[Exception] = []
            client = Client(
                "wk_acme_live", host=stack.web_url, on_error=lambda e, _b: errors.append(e), max_retries=10
            )
            client.track("retry-user", "Retried Event", {"n": 1})
            wait_until(lambda: seen and seen[0][0] == 503, timeout=20, what="the client's first answer: 503")
            redis_proc, _ = start_redis(tmp_path / "redis", port, appendonly=True)
            wait_until(
                lambda: [e for e in queued_events(url, "voucherify.eu") if e.get("event") == "Retried Event"],
                timeout=40,
                what="the retried event in the broker",
            )
            client.flush()
            client.join()
        finally:
            hooks.remove(record)
        assert errors == []
        # 503s (one or more, while Redis was down), then the same batch retried and accepted once.
        statuses = [status for status, _ids in seen]
        assert statuses[0] == 503 and statuses[-1] == 200 and set(statuses) == {503, 200}, seen
        assert statuses.count(200) == 1, seen
        assert len({tuple(ids) for _status, ids in seen}) == 1 and len(seen[0][1]) == 1, seen  # one batch
        assert len([e for e in queued_events(url, "voucherify.eu") if e.get("event") == "Retried Event"]) == 1
    finally:
        redis_proc.terminate()
        redis_proc.wait(10)
