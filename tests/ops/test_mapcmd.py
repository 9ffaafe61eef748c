"""``connector map``: the dry run of an identify, a track and a Voucherify webhook sends nothing
(the fakes record nothing), shows every subscription and the exact requests with credentials
redacted; ``--send`` performs them through the workers' transport and shows the fakes' answers.

The CLI runs as an operator runs it (a subprocess), against real fake servers and a real Redis
(the rate-limit budget ``--send`` takes a grant from).  The events are the README's examples.
"""

from __future__ import annotations

import json
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.support import webhooks
from tests.support.fakes import FakeSegment, FakeVoucherify
from tests.support.faultkit import connector_cli
from tests.support.processes import ROOT, base_env

pytestmark = pytest.mark.integration

EXAMPLES = ROOT / "examples"
APP_ID = "map-app-id-5d1"
SECRET = "map-vf-secret-9c2e77"
SEGMENT_KEY = "map-segment-write-key-41b"
WEBHOOK_SECRET = "map-webhook-secret-0aa"


def connections(vf_url: str, seg_url: str) -> str:
    return f"""
[[connection]]
id = "shop"
write_keys = ["wk_map_shop"]
[connection.voucherify]
app_id = "{APP_ID}"
secret_key = "{SECRET}"
region = "eu"
api_url = "{vf_url}"
webhook_secret = "{WEBHOOK_SECRET}"
rate_limit_per_minute = 600
[connection.segment]
write_key = "{SEGMENT_KEY}"
api_url = "{seg_url}"
[connection.destination]
consent_categories = ["Analytics"]
[[connection.destination.mapping]]
name = "Orders"
trigger = 'type = "track" and event = "Order Completed"'
action = "add_custom_event"
[connection.destination.mapping.fields]
event = "order_completed"
[[connection.destination.mapping]]
name = "Refunds"
trigger = 'type = "track" and event = "Order Refunded"'
action = "add_custom_event"

[[connection]]
id = "shop-segmentio"
write_keys = ["wk_map_segmentio"]
[connection.voucherify]
app_id = "{APP_ID}"
secret_key = "{SECRET}"
region = "eu"
api_url = "{vf_url}"
mode = "segmentio"
"""


@pytest.fixture
def fakes(tmp_path: Path) -> Iterator[tuple[FakeVoucherify, FakeSegment]]:
    with (
        FakeVoucherify(app_id=APP_ID, secret_key=SECRET, log_dir=tmp_path) as vf,
        FakeSegment(write_keys=[SEGMENT_KEY], log_dir=tmp_path) as seg,
    ):
        yield vf, seg


@pytest.fixture
def env(tmp_path: Path, redis_url: str, fakes: tuple[FakeVoucherify, FakeSegment]) -> dict[str, str]:
    vf, seg = fakes
    path = tmp_path / "connections.toml"
    path.write_text(connections(vf.url, seg.url))
    return base_env(redis_url, path)


def cli(env: dict[str, str], *args: str, ok: bool = True) -> subprocess.CompletedProcess[str]:
    result = connector_cli(env, *args)
    out = result.stdout + result.stderr
    for secret in (SECRET, SEGMENT_KEY, WEBHOOK_SECRET, APP_ID):
        assert secret not in out, f"credential in the output of connector {' '.join(args)}"
    if ok:
        assert result.returncode == 0, out
    return result


def mapped(env: dict[str, str], *args: str) -> dict[str, Any]:
    report: dict[str, Any] = json.loads(cli(env, "map", "--json", *args).stdout)
    return report


def by_name(subscriptions: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    return {s["name"]: s for s in subscriptions}


def fresh_webhook(tmp_path: Path) -> Path:
    """The README's example with a current created_at and event id (older than 48 h is refused)."""
    body = json.loads((EXAMPLES / "voucherify-webhook.json").read_text())
    now = webhooks.iso_now()
    body["created_at"] = body["event"]["created_at"] = now
    body["event"]["id"] = "evcus_map_test_1"
    path = tmp_path / "webhook.json"
    path.write_text(json.dumps(body))
    return path


def test_dry_runs_send_nothing_and_show_subscriptions_and_requests(
    env: dict[str, str], fakes: tuple[FakeVoucherify, FakeSegment], tmp_path: Path
) -> None:
    vf, seg = fakes

    identify = mapped(env, "-c", "shop", "--event", str(EXAMPLES / "segment-identify.json"))
    assert identify["kind"] == "segment" and identify["sent"] is False
    [event] = identify["events"]
    subs = by_name(event["subscriptions"])
    assert subs["Create Or Update Customer"]["status"] == "matched"
    assert subs["Orders"]["status"] == "no_match" and "only match track" in subs["Orders"]["why"]
    [request] = event["requests"]
    assert request["method"] == "POST" and request["url"] == vf.url + "/v1/customers"
    assert request["headers"]["X-App-Id"] == "<redacted>"
    assert request["headers"]["X-App-Token"] == "<redacted>"
    assert request["headers"]["Idempotency-Key"] == "shop:v:example-identify-1:upsert_customer"
    assert request["body"]["source_id"] == "user-1"
    assert request["body"]["name"] == "Jane Doe"  # joined from firstName and lastName
    assert request["body"]["address"]["line_1"] == "Prosta 1"

    track = mapped(env, "-c", "shop", "--event", str(EXAMPLES / "segment-track.json"))
    [event] = track["events"]
    subs = by_name(event["subscriptions"])
    assert subs["Add Custom Event (Track Event)"]["status"] == "replaced"
    assert subs["Orders"]["status"] == "matched"
    assert subs["Refunds"]["status"] == "no_match"
    assert subs["Refunds"]["why"] == "its trigger is false for this event"
    [request] = event["requests"]
    assert request["url"] == vf.url + "/v1/events"
    assert request["body"]["event"] == "order_completed"
    assert request["body"]["customer"]["source_id"] == "user-1"
    assert request["idempotency_key"] == "shop:v:example-track-1:add_custom_event:orders"

    # The same track on a segmentio connection: the Actions destination's endpoint and headers.
    segmentio = mapped(env, "-c", "shop-segmentio", "--event", str(EXAMPLES / "segment-track.json"))
    [request] = segmentio["events"][0]["requests"]
    assert request["url"] == vf.url + "/segmentio/event-processing"
    assert request["headers"]["authorization"] == "Basic <redacted>"
    assert request["headers"]["secret-key"] == "<redacted>"

    webhook = mapped(env, "-c", "shop", "--event", str(fresh_webhook(tmp_path)))
    assert webhook["kind"] == "voucherify_webhook"
    [event] = webhook["events"]
    assert event["rejected"] is None
    assert "'Customer Redemption Succeeded'" in event["naming"] and "catalog" in event["naming"]
    [request] = event["requests"]
    assert request["url"] == seg.url + "/v1/batch"
    assert request["headers"]["Authorization"] == "Basic <redacted>"
    [call] = request["body"]["batch"]
    assert call["type"] == "track" and call["event"] == "Customer Redemption Succeeded"
    assert call["userId"] == "user-1"
    assert call["properties"]["order"]["total_amount"] == 4200

    # The example as shipped is older than 48 h: said, not hidden.
    stale = mapped(env, "-c", "shop", "--event", str(EXAMPLES / "voucherify-webhook.json"))
    assert stale["events"][0]["rejected"]["code"] == "event_too_old"

    # The human form names the same things.
    text = cli(env, "map", "-c", "shop", "--event", str(EXAMPLES / "segment-track.json")).stdout
    assert "MATCHED   Orders" in text and "no match  Refunds" in text
    assert f"POST {vf.url}/v1/events" in text and "X-App-Token: <redacted>" in text
    assert "dry run: nothing was sent" in text

    assert vf.requests() == [] and seg.requests() == []  # a dry run sends nothing


def test_send_shows_the_fakes_answers(
    env: dict[str, str], fakes: tuple[FakeVoucherify, FakeSegment], tmp_path: Path
) -> None:
    vf, seg = fakes
    report = mapped(env, "-c", "shop", "--event", str(EXAMPLES / "segment-identify.json"), "--send")
    assert report["sent"] is True
    [request] = report["events"][0]["requests"]
    answer = request["answer"]
    assert answer["sent"] is True and answer["status"] == 200 and answer["verdict"] == "success"
    assert answer["body"]["source_id"] == "user-1" and answer["body"]["object"] == "customer"
    [received] = vf.requests(path="/v1/customers")
    assert received["status"] == 200  # the fake checked the real credentials
    assert received["headers"]["Idempotency-Key"] == "shop:v:example-identify-1:upsert_customer"

    # An answer that is not a success is shown as it came, with its verdict.
    vf.set_faults(path="/v1/events", statuses=[422])
    text = cli(env, "map", "-c", "shop", "--event", str(EXAMPLES / "segment-track.json"), "--send").stdout
    assert "answer: HTTP 422" in text and "(permanent)" in text

    report = mapped(env, "-c", "shop", "--event", str(fresh_webhook(tmp_path)), "--send")
    answer = report["events"][0]["requests"][0]["answer"]
    assert answer["status"] == 200, answer
    [event] = seg.wait_for_events(1)
    assert event["event"]["event"] == "Customer Redemption Succeeded"

    # What the ingest refuses is not sent either.
    report = mapped(env, "-c", "shop", "--event", str(EXAMPLES / "voucherify-webhook.json"), "--send")
    answer = report["events"][0]["requests"][0]["answer"]
    assert answer == {"sent": False, "error": "the ingest refuses this event (event_too_old)"}
    assert len(seg.requests(path="/v1/batch")) == 1


def test_a_skipped_event_shows_why_nothing_matched(env: dict[str, str], tmp_path: Path) -> None:
    """``connector map`` of an event the worker would skip: the skip's reason and words, and
    every subscription's part in it (its own non-match reason, or not reached)."""
    path = tmp_path / "event.json"
    # No subscription matches: each one says why.
    path.write_text('{"type": "track", "event": "Cart Viewed", "userId": "u1"}')
    [event] = mapped(env, "-c", "shop", "--event", str(path))["events"]
    assert event["skipped"]["reason"] == "no_subscription" and event["requests"] == []
    subs = by_name(event["subscriptions"])
    assert subs["Orders"]["status"] == "no_match" and subs["Refunds"]["status"] == "no_match"
    assert subs["Orders"]["why"] == "its trigger is false for this event"
    assert subs["Add Custom Event (Track Event)"]["status"] == "replaced"
    text = cli(env, "map", "-c", "shop", "--event", str(path)).stdout
    assert "SKIPPED (no_subscription): no subscription matches the event" in text
    assert "no match  Orders" in text and "no match  Refunds" in text

    # Kept out by its integrations object (names are case-sensitive): before any subscription.
    path.write_text(
        '{"type": "track", "event": "Order Completed", "userId": "u1",'
        ' "integrations": {"All": false, "voucherify": true}}'
    )
    [event] = mapped(env, "-c", "shop", "--event", str(path))["events"]
    assert event["skipped"] == {
        "reason": "integrations",
        "message": "integrations.All is false and none of 'Voucherify', 'Voucherify (Actions)' is true",
    }
    assert event["requests"] == []
    subs = by_name(event["subscriptions"])
    assert {s["status"] for s in subs.values()} == {"not_reached"}
    assert subs["Orders"]["why"].endswith("otherwise: its trigger holds")
    text = cli(env, "map", "-c", "shop", "--event", str(path)).stdout
    assert "SKIPPED (integrations): integrations.All is false" in text
    assert "skipped   Orders" in text

    # Kept out by consent: the connection needs Analytics.
    path.write_text(
        '{"type": "track", "event": "Order Completed", "userId": "u1",'
        ' "context": {"consent": {"categoryPreferences": {"Analytics": false}}}}'
    )
    [event] = mapped(env, "-c", "shop", "--event", str(path))["events"]
    assert event["skipped"]["reason"] == "consent"
    assert "does not consent to 'Analytics'" in event["skipped"]["message"]


def test_bad_input_is_said_plainly(env: dict[str, str], tmp_path: Path) -> None:
    cases = {
        "not-json.json": ("{nope", "not JSON"),
        "neither.json": ('{"hello": "world"}', "neither a Segment event"),
        "bad-webhook.json": ('{"type": "customer.rewarded", "data": {}}', "not a Voucherify webhook"),
        "no-identity.json": ('{"type": "track", "event": "X"}', None),
    }
    for name, (content, message) in cases.items():
        path = tmp_path / name
        path.write_text(content)
        if message is None:
            report = mapped(env, "-c", "shop", "--event", str(path))
            assert report["events"][0]["rejected"]["code"] == "missing_identity"
            continue
        result = cli(env, "map", "-c", "shop", "--event", str(path), ok=False)
        assert result.returncode == 1 and message in result.stderr, result.stderr
        assert "Traceback" not in result.stderr
    # A batch (an array, as the Webhooks destination sends): each item in its place, refusals named.
    batch = tmp_path / "batch.json"
    batch.write_text('[{"type": "identify", "userId": "u1"}, {"type": "track", "event": "X"}, 5]')
    events = mapped(env, "-c", "shop", "--event", str(batch))["events"]
    assert [e["index"] for e in events] == [0, 1, 2]
    assert events[0]["rejected"] is None and len(events[0]["requests"]) == 1
    assert events[1]["rejected"]["code"] == "missing_identity" and "event='X'" in events[1]["summary"]
    assert events[2]["rejected"]["code"] == "not_an_object"
    result = cli(env, "map", "-c", "nope", "--event", str(EXAMPLES / "segment-track.json"), ok=False)
    assert result.returncode == 1 and "no connection 'nope'" in result.stderr
