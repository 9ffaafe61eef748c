"""Hardening (issue 10), in process: each class of defect the adversarial review found, with
other shapes, fields and paths than the examples of the report.  The same classes run against
real gunicorn and Redis in tests/test_ingest_faults.py and tests/test_hardening_e2e.py."""

from __future__ import annotations

import base64
import gzip
import json
import math
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import orjson
import pytest
from flask.testing import FlaskClient

from app import create_app
from app.body import OUT_OF_RANGE, parse_json
from app.errors import ApiError
from app.ingest import STORED_FACTOR, STORED_SLACK, ingest_body
from connector.config import ConfigError, load_settings
from connector.contract import backlog_shares, expand
from tests.app.test_ingest_unit import RecordingEnqueuer
from tests.support.webhooks import iso, load_example, signed_request, wrap
from workers.delivery.classify import parse_retry_after
from workers.delivery.retries import MAX_SERVER_WAIT_SECONDS, decide, next_delay
from workers.delivery.transport import HTTPResult
from workers.targets.voucherify import parse_rate_limit_retry, server_wait

RECEIVED = datetime(2024, 5, 1, 12, 0, 0, tzinfo=UTC)
STATUS_TOKEN = "status-token-for-tests-0123"
METRICS_TOKEN = "metrics-token-for-tests-0123"

TOML = """
[[connection]]
id = "acme"
write_keys = ["wk"]
segment_webhook_secret = "seg-hook"
[connection.voucherify]
app_id = "a"
secret_key = "s"
region = "eu"
webhook_secret = "hook"
[connection.segment]
write_key = "seg"

[[connection]]
id = "open"
write_keys = ["wk-open"]
segment_webhook_unsigned = true
[connection.voucherify]
app_id = "a"
secret_key = "s"
region = "us1"

[[connection]]
id = "nosecret"
write_keys = ["wk-nosecret"]
[connection.voucherify]
app_id = "a"
secret_key = "s"
region = "as1"
"""


def make_client(tmp_path: Path, **env: str) -> tuple[FlaskClient, RecordingEnqueuer]:
    path = tmp_path / "c.toml"
    path.write_text(TOML)
    settings = load_settings({"CONNECTIONS_FILE": str(path), "REDIS_URL": "redis://127.0.0.1:1/0", **env})
    app = create_app(settings)
    recorder = RecordingEnqueuer()
    app.extensions["connector.enqueuer"] = recorder
    return app.test_client(), recorder


def basic(user: str, password: str = "") -> dict[str, str]:
    return {"Authorization": "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()}


# --- every door authenticates -------------------------------------------------------------------


def test_segment_webhook_without_secret_is_refused_unless_explicitly_unsigned(tmp_path: Path) -> None:
    client, recorder = make_client(tmp_path)
    event = {"type": "identify", "userId": "u1", "traits": {"email": "x@y"}}
    # Refused as a wrong signature is (the door does not say the id exists; the log says why).
    answer = client.post("/webhooks/segment/nosecret", json=event)
    assert answer.status_code == 401 and answer.get_json()["code"] == "invalid_signature"
    answer = client.post("/webhooks/segment/nosecret", json=[event], headers={"X-Signature": "ab" * 20})
    assert answer.status_code == 401 and answer.get_json()["code"] == "invalid_signature"
    assert client.post("/webhooks/segment/open", json=event).status_code == 200
    # The signed connection: a missing signature is refused before the body is even read.
    answer = client.post("/webhooks/segment/acme", json=event)
    assert answer.status_code == 401 and answer.get_json()["code"] == "invalid_signature"
    assert [cid for cid, *_ in recorder.events] == ["open"]


def test_unsigned_and_secret_together_is_a_configuration_error(tmp_path: Path) -> None:
    path = tmp_path / "c.toml"
    path.write_text(
        TOML.replace(
            'segment_webhook_secret = "seg-hook"',
            'segment_webhook_secret = "seg-hook"\nsegment_webhook_unsigned = true',
        )
    )
    with pytest.raises(
        ConfigError, match="segment_webhook_unsigned: is true but segment_webhook_secret is set"
    ):
        load_settings({"CONNECTIONS_FILE": str(path)})


@pytest.mark.parametrize("path", ["/", "/status.json"])
def test_status_page_is_off_without_a_token_outside_the_sandbox(tmp_path: Path, path: str) -> None:
    client, _ = make_client(tmp_path)
    assert client.get(path).status_code == 404
    # The variable alone does not make a sandbox: these connections talk to real regions.
    # (make run's real sandbox: tests/app/test_isolation_unit.py.)
    sandbox, _ = make_client(tmp_path, CONNECTOR_SANDBOX_FAKES="voucherify=http://127.0.0.1:8100")
    assert sandbox.get(path).status_code == 404
    off, _ = make_client(tmp_path, STATUS_TOKEN=STATUS_TOKEN, STATUS_PAGE="off")
    assert off.get(path, headers={"Authorization": f"Bearer {STATUS_TOKEN}"}).status_code == 404


@pytest.mark.parametrize("path", ["/", "/status.json"])
def test_status_page_needs_the_token_as_bearer_or_basic_password(tmp_path: Path, path: str) -> None:
    client, _ = make_client(tmp_path, STATUS_TOKEN=STATUS_TOKEN)
    refused = client.get(path)
    assert refused.status_code == 401 and refused.get_json()["code"] == "missing_token"
    assert refused.headers["WWW-Authenticate"].startswith("Basic ")  # a browser shows a prompt
    for headers in (
        {"Authorization": "Bearer wrong-token-0123456789"},
        basic("admin", "wrong"),
        basic(STATUS_TOKEN),  # the token as the USER is not the password
        {"Authorization": "Basic !!!"},
        {"Authorization": f"Token {STATUS_TOKEN}"},
    ):
        answer = client.get(path, headers=headers)
        assert answer.status_code == 401, headers
        assert STATUS_TOKEN not in answer.get_data(as_text=True)
    for headers in ({"Authorization": f"Bearer {STATUS_TOKEN}"}, basic("anyone", STATUS_TOKEN)):
        assert client.get(path, headers=headers).status_code == 200
    # The sandbox marker does not open a page that has a token.
    sandbox, _ = make_client(
        tmp_path, STATUS_TOKEN=STATUS_TOKEN, CONNECTOR_SANDBOX_FAKES="x=http://127.0.0.1:1"
    )
    assert sandbox.get(path).status_code == 401


def test_metrics_token_is_optional(tmp_path: Path) -> None:
    open_client, _ = make_client(tmp_path)
    assert open_client.get("/metrics").status_code == 200
    client, _ = make_client(tmp_path, METRICS_TOKEN=METRICS_TOKEN)
    assert client.get("/metrics").status_code == 401
    assert client.get("/metrics", headers={"Authorization": f"Bearer {METRICS_TOKEN}"}).status_code == 200
    assert client.get("/metrics", headers=basic("prometheus", METRICS_TOKEN)).status_code == 200
    # Health checks stay open (load balancers call them without credentials).
    assert client.get("/healthz").status_code == 200


# --- configuration: secrets, ${VAR} only in TOML, every problem once ----------------------------


@pytest.mark.parametrize(
    "value",
    ["Zq9\n", " Zq9", "Zq9 ", "Z\tq9", "Zq9\r\n", "Z\x00q9", "Zq9\x7f", "\u00a0Zq9", "Zq9\u2028"],
)
def test_secrets_with_whitespace_or_control_characters_are_refused_without_their_value(value: str) -> None:
    env = {
        "INGEST_WRITE_KEYS": "wk-1",
        "VOUCHERIFY_APP_ID": "app",
        "VOUCHERIFY_SECRET_KEY": value,
        "VOUCHERIFY_WEBHOOK_SECRET": value,
        "SEGMENT_WRITE_KEY": value,
        "SEGMENT_WEBHOOK_SECRET": "fine-secret",
        "STATUS_TOKEN": value + "0123456789abcdef" if value.endswith("9") else value * 6,
    }
    with pytest.raises(ConfigError) as info:
        load_settings(env)
    text = str(info.value)
    for name in ("VOUCHERIFY_SECRET_KEY", "VOUCHERIFY_WEBHOOK_SECRET", "SEGMENT_WRITE_KEY", "STATUS_TOKEN"):
        assert name in text, name
    assert "SEGMENT_WEBHOOK_SECRET" not in text
    assert "Zq9" not in text and "q9" not in text


def test_write_keys_in_toml_are_checked_one_by_one(tmp_path: Path) -> None:
    path = tmp_path / "c.toml"
    path.write_text(TOML.replace('write_keys = ["wk"]', 'write_keys = ["wk", "wk-two\\n"]'))
    with pytest.raises(ConfigError) as info:
        load_settings({"CONNECTIONS_FILE": str(path)})
    assert info.value.problems == [
        "connection 'acme': write_keys[1]: must not have leading or trailing whitespace or control "
        "characters (the value is not shown)"
    ]


def test_variable_references_are_expanded_in_the_toml_only() -> None:
    settings = load_settings(
        {
            "INGEST_WRITE_KEYS": "wk-${HOME}",
            "VOUCHERIFY_APP_ID": "app-${NOT_SET}",
            "VOUCHERIFY_SECRET_KEY": "sk",
            "HOME": "/root",
        }
    )
    (conn,) = settings.connections
    assert conn.voucherify.app_id.reveal() == "app-${NOT_SET}"  # literal, and no "not set" error
    assert settings.connection_for_write_key("wk-${HOME}") is conn
    assert settings.connection_for_write_key("wk-/root") is None


def test_every_problem_is_reported_once_and_none_hides_another(tmp_path: Path) -> None:
    bad = """
[[connection]]
id = "one"
write_keys = ["${MISSING_KEY}"]
segment_webhook_secret = "${MISSING_SEG}"
backlog_bytes_limit = 10
[connection.voucherify]
app_id = "${MISSING_APP}"
secret_key = "${MISSING_APP}-${MISSING_SK}"
region = "mars"
webhook_secret = "${MISSING_HOOK}"
rate_limit_per_minute = "fast"
[connection.segment]
write_key = "${MISSING_SEGW}"
region = "moon"
"""
    path = tmp_path / "c.toml"
    path.write_text(bad)
    with pytest.raises(ConfigError) as info:
        load_settings({"CONNECTIONS_FILE": str(path), "STATUS_TOKEN": "short"})
    problems = info.value.problems
    assert len(problems) == len(set(problems)), problems
    expected = [
        "write_keys: environment variable MISSING_KEY is not set",
        "segment_webhook_secret: environment variable MISSING_SEG is not set",
        "backlog_bytes_limit: must be an integer >= 1048576",
        "voucherify.app_id: environment variable MISSING_APP is not set",
        "voucherify.secret_key: environment variable MISSING_APP is not set",
        "voucherify.region: unknown Voucherify region 'mars'",
        "voucherify.webhook_secret: environment variable MISSING_HOOK is not set",
        "voucherify.rate_limit_per_minute: must be an integer",
        "segment.write_key: environment variable MISSING_SEGW is not set",
        "segment.region: unknown Segment region 'moon'",
        "STATUS_TOKEN: must be at least 16 characters",
    ]
    for fragment in expected:
        assert sum(fragment in p for p in problems) == 1, (fragment, problems)
    # One problem per key: an unset variable is not also "is required" / "is empty".
    assert not [p for p in problems if "is empty" in p or "is required" in p], problems
    assert "MISSING_SK" not in "\n".join(problems)  # one message per key, the first variable named
    assert len(problems) == len(expected)


def test_report_is_short_and_readable() -> None:
    error = ConfigError(["connection 'a': x: bad", "connection 'a': x: bad", "REDIS_URL: bad"])
    text = error.report("web")
    assert text.splitlines() == [
        "connector web: invalid configuration (2 problems):",
        "  - connection 'a': x: bad",
        "  - REDIS_URL: bad",
        "Fix these and start again.",
    ]


# --- stored bytes: batch objects once, bounded per item and per request ------------------------


def test_batch_context_is_stored_once_and_counted_against_each_item() -> None:
    context = {"page": {"url": "https://shop.example/" + "p" * 20_000}, "locale": "pl-PL"}
    items = [{"type": "track", "userId": f"u{i}", "event": "Viewed"} for i in range(2500)]
    body = {"batch": items, "context": context, "integrations": {"All": True}}
    raw = orjson.dumps(body)
    result = ingest_body(body, "batch", now=RECEIVED, raw_size=len(raw))
    assert len(result.accepted) == 2500 and not result.rejected
    # Stored: the items plus ONE copy of the context (was: 2,500 copies, ~50 MB).
    assert result.stored_bytes < 2 * len(raw), (result.stored_bytes, len(raw))
    assert all("context" not in orjson.loads(orjson.dumps(f)) for f in result.encoded[:10])
    expanded = result.expanded()
    assert expanded[0]["context"] == context and expanded[-1]["integrations"] == {"All": True}
    # An item whose own context, merged with the batch's, passes 32 KB is refused alone.
    fat = {"type": "track", "userId": "f", "event": "E", "context": {"extra": "x" * 13_000}}
    body = {"batch": [fat, items[0]], "context": context}
    result = ingest_body(body, "batch", now=RECEIVED, raw_size=len(orjson.dumps(body)))
    assert [(r.index, r.code) for r in result.rejected] == [(0, "event_too_large")]
    assert "merged" in result.rejected[0].message and len(result.accepted) == 1
    # ... but the item's own keys win the merge: a large batch key it overrides does not count.
    override = {"type": "track", "userId": "o", "event": "E", "context": {"page": {"url": "short"}}}
    ok = ingest_body({"batch": [override], "context": {"page": {"url": "y" * 31_000}}}, "batch", now=RECEIVED)
    assert len(ok.accepted) == 1


def test_what_a_request_may_store_is_bounded_by_its_size() -> None:
    # The tightest real shape: the smallest items, each given a messageId and a timestamp.
    items = [{"type": "page", "userId": 1} for _ in range(2500)]
    body = {"batch": items}
    raw = orjson.dumps(body)
    result = ingest_body(body, "batch", now=RECEIVED, raw_size=len(raw))
    assert len(result.accepted) == 2500
    assert result.stored_bytes <= STORED_FACTOR * len(raw) + STORED_SLACK
    # A request that claims to be smaller than what it would store is refused whole.
    with pytest.raises(ApiError) as info:
        ingest_body(body, "batch", now=RECEIVED, raw_size=len(raw) // 10)
    assert info.value.code == "request_too_large"


def test_expand_and_backlog_shares() -> None:
    shared = {"receivedAt": "R", "sentAt": "S", "context": {"a": 1, "b": 1}, "integrations": {"x": True}}
    event = expand({"type": "track", "context": {"b": 2}, "sentAt": "own"}, shared)
    assert event == {
        "type": "track",
        "context": {"a": 1, "b": 2},
        "integrations": {"x": True},
        "sentAt": "own",
        "receivedAt": "R",
        "timestamp": "R",
    }
    assert expand({"timestamp": "T"}, None) == {"timestamp": "T"}  # older messages: untouched
    assert backlog_shares(10, 3) == [4, 3, 3] and sum(backlog_shares(10**6 + 7, 13)) == 10**6 + 7
    assert backlog_shares(0, 2) == [0, 0] and backlog_shares(5, 0) == []


# --- timestamps ---------------------------------------------------------------------------------


@pytest.mark.parametrize("field", ["timestamp", "sentAt", "originalTimestamp"])
@pytest.mark.parametrize(
    "value",
    [
        "0001-01-01T00:00:00+05:00",  # before year 1 in UTC
        "9999-12-31T23:30:00-02:00",  # after 9999 in UTC
        "2024-13-01T00:00:00Z",
        "yesterday",
        1714564800,
        {"at": "2024-05-01"},
    ],
)
def test_unusable_times_reject_the_item_not_the_batch(field: str, value: Any) -> None:
    good = {"type": "identify", "userId": "ok", "timestamp": "2024-05-01T11:00:00Z"}
    bad = {"type": "identify", "userId": "bad", field: value}
    result = ingest_body({"batch": [good, bad, good]}, "batch", now=RECEIVED)
    assert [(r.index, r.code) for r in result.rejected] == [(1, "invalid_timestamp")]
    assert field in result.rejected[0].message
    assert [e["userId"] for e in result.accepted] == ["ok", "ok"]


def test_clock_skew_arithmetic_out_of_range_rejects_the_item() -> None:
    # Each date is representable; receivedAt - (sentAt - timestamp) is not.
    items = [
        {
            "type": "track",
            "userId": "a",
            "event": "E",
            "timestamp": "0001-01-02T00:00:00Z",
            "sentAt": "9999-12-30T00:00:00Z",
        },
        {
            "type": "track",
            "userId": "b",
            "event": "E",
            "timestamp": "9999-12-30T00:00:00Z",
            "sentAt": "0001-01-02T00:00:00Z",
        },
        {
            "type": "track",
            "userId": "c",
            "event": "E",
            "timestamp": "2024-05-01T11:59:00Z",
            "sentAt": "2024-05-01T12:00:00Z",
        },
    ]
    result = ingest_body({"batch": items}, "batch", now=RECEIVED)
    assert [(r.index, r.code) for r in result.rejected] == [
        (0, "invalid_timestamp"),
        (1, "invalid_timestamp"),
    ]
    assert [e["userId"] for e in result.accepted] == ["c"]
    # The batch-level sentAt: unusable -> the items that would use it are refused, the others pass.
    result = ingest_body(
        {"batch": [items[2], {"type": "track", "userId": "d", "event": "E"}], "sentAt": "9999-99-99"},
        "batch",
        now=RECEIVED,
    )
    assert [(r.index, r.code) for r in result.rejected] == [(1, "invalid_timestamp")]


def test_future_event_times_are_clamped_to_the_receipt() -> None:
    items = [
        {"type": "identify", "userId": "a", "timestamp": "2999-01-01T00:00:00Z"},  # no sentAt
        {"type": "identify", "userId": "b", "timestamp": "2024-05-01T12:00:30Z"},  # within the skew
        # sentAt before timestamp: the correction puts it 3 days after the receipt
        {
            "type": "identify",
            "userId": "c",
            "timestamp": "2024-05-04T12:00:00Z",
            "sentAt": "2024-05-01T12:00:00Z",
        },
    ]
    result = ingest_body({"batch": items}, "batch", now=RECEIVED)
    a, b, c = result.accepted
    assert a["timestamp"] == "2024-05-01T12:00:00.000Z" and a["originalTimestamp"] == "2999-01-01T00:00:00Z"
    assert b["timestamp"] == "2024-05-01T12:00:30.000Z"
    assert c["timestamp"] == "2024-05-01T12:00:00.000Z"


def test_single_event_with_an_unusable_time_is_a_400_not_a_503(tmp_path: Path) -> None:
    client, recorder = make_client(tmp_path)
    answer = client.post(
        "/v1/identify", json={"userId": "u", "timestamp": "0001-01-01T00:00:00+01:00"}, headers=basic("wk")
    )
    assert answer.status_code == 400 and answer.get_json()["code"] == "invalid_timestamp"
    assert recorder.events == []


# --- Voucherify webhooks: created_at must be readable, not in the future ----------------------


@pytest.mark.parametrize(
    ("created_at", "status", "code"),
    [
        (None, 400, "invalid_webhook"),  # missing
        ("not a date", 400, "invalid_created_at"),
        ("0001-01-01T00:00:00+01:00", 400, "invalid_created_at"),  # unrepresentable
        ("+inf", 400, "invalid_created_at"),
        ("now+3600", 400, "invalid_created_at"),  # future
        ("2999-01-01T00:00:00Z", 400, "invalid_created_at"),
        ("now+60", 202, None),  # small clock difference
        ("now-169200", 202, None),  # 47 h old
        ("now-176400", 400, "event_too_old"),  # 49 h old
    ],
)
def test_voucherify_webhook_created_at(
    tmp_path: Path, created_at: str | None, status: int, code: str | None
) -> None:
    # Times relative to now are written as "now+S" / "now-S" and made at run time: the ids of
    # parametrized tests must be the same in every test process (pytest-xdist compares them).
    if created_at is not None and created_at.startswith("now"):
        created_at = iso(datetime.now(UTC).timestamp() + float(created_at[3:]))
    client, recorder = make_client(tmp_path)
    body = wrap(
        load_example("customer.rewarded"), "customer.rewarded", "2018-08-01", "ev-1", created_at or "x"
    )
    if created_at is None:
        del body["created_at"]
    raw, headers = signed_request(body, "hook")
    answer = client.post("/webhooks/voucherify/acme", data=raw, headers=headers)
    assert answer.status_code == status, answer.get_json()
    if code:
        assert answer.get_json()["code"] == code
        assert recorder.webhooks == []
    else:
        assert [cid for cid, *_ in recorder.webhooks] == ["acme"]


# --- numbers, nesting, gzip ---------------------------------------------------------------------


def test_integers_beyond_64_bits_are_refused_per_item_never_floats() -> None:
    raw = (
        b'{"batch": ['
        b'{"type": "track", "userId": "a", "event": "E", "properties": {"order": 123456789012345678901}},'
        b'{"type": "track", "userId": 12345678901234567890123, "event": "E"},'
        b'{"type": "track", "userId": "c", "event": "E", "properties": {"max": 18446744073709551615, '
        b'"min": -9223372036854775808, "id": "123456789012345678901234"}}'
        b"]}"
    )
    body = parse_json(raw)
    assert body["batch"][0]["properties"]["order"] is OUT_OF_RANGE
    result = ingest_body(body, "batch", now=RECEIVED, raw_size=len(raw))
    assert [(r.index, r.code) for r in result.rejected] == [
        (0, "number_out_of_range"),
        (1, "number_out_of_range"),
    ]
    [kept] = result.accepted
    assert kept["properties"] == {"max": 2**64 - 1, "min": -(2**63), "id": "123456789012345678901234"}
    # A batch-level object with one: every item would carry it, the request is refused.
    with pytest.raises(ApiError) as info:
        ingest_body(parse_json(b'{"batch": [], "context": {"n": 99999999999999999999}}'), "batch")
    assert info.value.code == "number_out_of_range"


def test_2000_deep_json_is_nesting_too_deep(tmp_path: Path) -> None:
    client, _ = make_client(tmp_path)
    for raw in (b"[" * 2000 + b"]" * 2000, b'{"a":' * 2000 + b"1" + b"}" * 2000):
        answer = client.post("/v1/batch", data=raw, headers=basic("wk"))
        assert answer.status_code == 400 and answer.get_json()["code"] == "nesting_too_deep"


def test_multi_member_gzip_is_read_whole_and_bounded(tmp_path: Path) -> None:
    client, recorder = make_client(tmp_path)
    first = orjson.dumps({"batch": [{"type": "track", "userId": "u", "event": "E"}] * 3})
    # `cat a.gz b.gz`: one gzip stream of two members (here, one JSON text split in two).
    raw = gzip.compress(first[:20]) + gzip.compress(first[20:])
    answer = client.post("/v1/batch", data=raw, headers={**basic("wk"), "Content-Encoding": "gzip"})
    assert answer.status_code == 200, answer.get_json()
    assert len(recorder.events[0][1]) == 3
    # The size bound holds across members: many small members of a large inflated total.
    member = gzip.compress(b" " * 200_000)
    bomb = gzip.compress(b'{"batch": [') + member * 5
    answer = client.post("/v1/batch", data=bomb, headers={**basic("wk"), "Content-Encoding": "gzip"})
    assert answer.status_code == 400 and answer.get_json()["code"] == "request_too_large"
    # Trailing garbage after a member is broken gzip, not silently ignored.
    answer = client.post(
        "/v1/batch",
        data=gzip.compress(first) + b"garbage",
        headers={**basic("wk"), "Content-Encoding": "gzip"},
    )
    assert answer.status_code == 400 and answer.get_json()["code"] == "invalid_gzip"


# --- hostile upstream answers -------------------------------------------------------------------


@pytest.mark.parametrize(
    "value", ["inf", "-inf", "nan", "Infinity", "1e400", "-5", "99999999999999999999", "1e12"]
)
def test_retry_after_and_rate_limit_headers_are_clamped(value: str) -> None:
    now = 1_700_000_000.0
    for parsed in (parse_retry_after(value, now), parse_rate_limit_retry(value, now)):
        assert parsed is None or (math.isfinite(parsed) and 0 <= parsed <= MAX_SERVER_WAIT_SECONDS)
    result = HTTPResult(429, {"retry-after": value, "x-rate-limit-retry": value}, "", 0.1)
    wait = server_wait(result, now)
    assert wait is None or 0 <= wait <= MAX_SERVER_WAIT_SECONDS
    delay = next_delay(None, base=2, cap=300, server_wait=wait)
    assert math.isfinite(delay) and 2 <= delay <= MAX_SERVER_WAIT_SECONDS
    assert decide(
        now=now, first_attempt_at=now, window=4 * 3600, previous_delay=None, base=2, cap=300, server_wait=wait
    )
    # An HTTP date far in the future or the past: clamped as well.
    assert parse_retry_after("Fri, 31 Dec 9999 23:59:59 GMT", now) == MAX_SERVER_WAIT_SECONDS
    assert parse_retry_after("Mon, 01 Jan 0001 00:00:00 GMT", now) == 0.0
    assert next_delay(None, base=2, cap=300, server_wait=math.inf) <= 300


def test_rate_limiter_observe_survives_hostile_remaining() -> None:
    from connector.quotas import QuotaSettings
    from workers.delivery.transport import HTTPResult
    from workers.targets.voucherify_quota import reading

    quota = QuotaSettings(api_calls_per_minute=100)
    hostile = ("inf", "nan", "-inf", "1e400", "-3", "abc", "", "1e300")
    for remaining in hostile:
        for limit in hostile:
            for retry in hostile:
                headers = {
                    "x-rate-limit-remaining": remaining,
                    "x-rate-limit-limit": limit,
                    "x-rate-limit-retry": retry,
                }
                seen = reading(HTTPResult(200, headers, "", 0.01), quota, None, None)
                assert seen.pause is None or 0 <= seen.pause <= 86400


def test_stored_message_round_trip_in_json() -> None:
    # What the web publishes and the worker reads: plain JSON (kombu's json serializer).
    result = ingest_body(
        {"batch": [{"type": "track", "userId": "u", "event": "E"}], "context": {"ip": "1.2.3.4"}},
        "batch",
        now=RECEIVED,
    )
    message = json.loads(orjson.dumps(["acme", result.encoded, result.shared, result.stored_bytes]))
    [event] = message[1]
    assert expand(event, message[2])["context"] == {"ip": "1.2.3.4"}
    assert message[3] == result.stored_bytes > 0
    assert (RECEIVED + timedelta(0)).isoformat().startswith(message[2]["receivedAt"][:19])
