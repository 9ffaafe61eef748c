"""Voucherify -> Segment end to end, with real processes only.

Signed webhooks (every fixture, in each envelope version) -> gunicorn -> Redis -> Celery worker
-> the fake Segment Tracking API (`/v1/batch`).  Checks that each event arrives exactly once, by
identity (messageIds from the documented formula), with the name, userId, timestamp and every
property of the hand-written mapping cases; deduplication of redelivered webhooks; and routing of
an `eu` and a `us` connection to their own Segment fakes.
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import requests

from tests.conftest import make_stack
from tests.support import TESTS_DIR
from tests.support.fakes import FakeSegment
from tests.support.faultkit import wait_quiet
from tests.support.processes import wait_until
from tests.support.webhooks import (
    VERSIONS,
    documented_message_id,
    iso_now,
    load_example,
    signed_request,
    wrap,
)

pytestmark = pytest.mark.integration

CASES_DIR = TESTS_DIR / "mapping_cases" / "source"
SECRETS = {"acme-eu": "vf-secret-eu", "acme-us": "vf-secret-us"}
WRITE_KEYS = {"acme-eu": "seg-key-eu", "acme-us": "seg-key-us"}


@pytest.fixture
def segment_fakes(tmp_path: Path) -> Iterator[dict[str, FakeSegment]]:
    fakes = {
        cid: FakeSegment(write_keys=(key,), name=f"segment-{cid}", log_dir=tmp_path).start()
        for cid, key in WRITE_KEYS.items()
    }
    try:
        yield fakes
    finally:
        for fake in fakes.values():
            fake.stop(kill=True)


def connections(fakes: dict[str, FakeSegment]) -> str:
    text = ""
    for cid, region in (("acme-eu", "eu"), ("acme-us", "us")):
        text += f"""
[[connection]]
id = "{cid}"
write_keys = ["wk-{cid}"]
[connection.voucherify]
coalesce_window_seconds = 0  # not about the hold window: every request as it comes
api_calls_per_minute = 10000000  # not about quotas: no budget in the way
bulk_calls_per_hour = 10000000
app_id = "app-id-acme"
secret_key = "secret-key-acme"
region = "eu"
api_url = "http://127.0.0.1:9"
webhook_secret = "{SECRETS[cid]}"
# The fixtures are Voucherify's own examples, from 2024: accept them whatever their age.
max_event_age_hours = 1000000
[connection.segment]
write_key = "{WRITE_KEYS[cid]}"
region = "{region}"
api_url = "{fakes[cid].url}"
"""
    return text


def post(web: str, cid: str, body: dict[str, Any], secret: str | None = None) -> requests.Response:
    raw, headers = signed_request(body, secret or SECRETS[cid])
    return requests.post(f"{web}/webhooks/voucherify/{cid}", data=raw, headers=headers, timeout=10)


def segment_events(fake: FakeSegment) -> list[dict[str, Any]]:
    return [e["event"] for e in fake.events()]


@pytest.fixture
def stack(tmp_path: Path, redis_url: str, stack_factory: list, segment_fakes: dict[str, FakeSegment]):  # type: ignore[no-untyped-def]
    path = tmp_path / "connections.toml"
    path.write_text(connections(segment_fakes))
    stack = make_stack(stack_factory, tmp_path, redis_url, path, CONNECTOR_SCHEDULER_INTERVAL="0.2")
    stack.web()
    stack.worker(concurrency=20)
    stack.scheduler()
    return stack


def test_every_fixture_in_every_envelope_becomes_one_track_call(stack, segment_fakes) -> None:  # type: ignore[no-untyped-def]
    expected: dict[str, dict[str, Any]] = {}
    skipped = 0
    for case_path in sorted(CASES_DIR.glob("*.json")):
        case = json.loads(case_path.read_text())
        example = load_example(case["fixture"])
        for envelope in case["envelopes"]:
            version = envelope["version"]
            # One Voucherify event per envelope version, so each version is checked on its own.
            event_id = f"{case['event_id']}-{VERSIONS.index(version)}"
            body = wrap(example, envelope["type"], version, event_id, case["created_at"])
            answer = post(stack.web_url, "acme-eu", body)
            assert answer.status_code == 202, (case_path.name, version, answer.text)
            if "expected_skip" in case:
                skipped += 1
                continue
            want = json.loads(json.dumps(case["expected"]))
            want["properties"]["voucherify_event_id"] = event_id  # this envelope's own event id
            expected[documented_message_id("acme-eu", event_id)] = {**want, "case": case_path.name}
    fake = segment_fakes["acme-eu"]

    def missing() -> set[str]:
        return set(expected) - {e["messageId"] for e in segment_events(fake)}

    try:
        wait_until(lambda: not missing(), timeout=60, what="every expected track call")
    except AssertionError:
        lost = missing()
        raise AssertionError(f"{len(lost)} expected track calls never arrived: {sorted(lost)[:5]}") from None
    wait_quiet(fake, seconds=3)  # late duplicates or strays would arrive by now
    events = segment_events(fake)
    # Identities, not counts: each expected messageId exactly once, nothing else.
    received = Counter(e["messageId"] for e in events)
    assert set(received) == set(expected), sorted(set(received) ^ set(expected))[:10]
    assert [m for m, n in received.items() if n != 1] == []
    assert skipped > 0
    for event in events:
        want = expected[event["messageId"]]
        assert event["type"] == "track"
        assert event["event"] == want["event"], want["case"]
        assert event["userId"] == want["userId"], want["case"]
        assert "anonymousId" not in event
        assert event["timestamp"] == want["timestamp"], want["case"]
        assert event["properties"] == want["properties"], want["case"]
        assert event["context"]["integration"] == {"name": "voucherify"}
        assert event["context"]["library"]["name"] == "segment-voucherify-connector"
        assert len(json.dumps(event)) < 32 * 1024
    # Batched: far fewer /v1/batch requests than events, each authenticated with the write key.
    batches = fake.requests(path="/v1/batch")
    assert 0 < len(batches) < len(events)
    assert all(r["status"] == 200 for r in batches)
    assert segment_fakes["acme-us"].events() == []


def test_redelivered_webhook_is_one_segment_event(stack, segment_fakes) -> None:  # type: ignore[no-untyped-def]
    example = load_example("customer.redemption.succeeded")
    created = iso_now()
    for sendout in ("whs_1", "whs_2", "whs_3"):  # Voucherify's retries: new sendout, same event
        body = wrap(
            example, "customer.redemption.succeeded", "2024-01-01", "evcus_dup", created, sendout_id=sendout
        )
        assert post(stack.web_url, "acme-eu", body).status_code == 202
    # ...and the same event in the older envelope, too.
    body = wrap(example, "customer.redemption.succeeded", "2018-08-01", "evcus_dup", created)
    assert post(stack.web_url, "acme-eu", body).status_code == 202
    fake = segment_fakes["acme-eu"]
    wait_until(lambda: segment_events(fake), timeout=30, what="the event")
    # Give duplicates every chance to show up before asserting there is only one.
    other = wrap(example, "customer.redemption.succeeded", "2024-01-01", "evcus_marker", iso_now())
    assert post(stack.web_url, "acme-eu", other).status_code == 202
    wait_until(lambda: len(segment_events(fake)) >= 2, timeout=30, what="the marker event")
    wait_quiet(fake, seconds=3)  # a late duplicate would arrive by now
    names = [(e["messageId"], e["event"]) for e in segment_events(fake)]
    assert sorted(names) == sorted(
        [
            (documented_message_id("acme-eu", "evcus_dup"), "Customer Redemption Succeeded"),
            (documented_message_id("acme-eu", "evcus_marker"), "Customer Redemption Succeeded"),
        ]
    )


def test_eu_and_us_connections_route_to_their_own_segment(stack, segment_fakes) -> None:  # type: ignore[no-untyped-def]
    example = load_example("customer.rewarded")
    for cid in ("acme-eu", "acme-us"):
        body = wrap(example, "customer.rewarded", "2024-01-01", f"ev-{cid}", iso_now())
        assert post(stack.web_url, cid, body).status_code == 202
    for cid, fake in segment_fakes.items():
        wait_until(lambda f=fake: segment_events(f), timeout=30, what=f"{cid} event")
    for cid, fake in segment_fakes.items():
        (event,) = segment_events(fake)
        assert event["messageId"] == documented_message_id(cid, f"ev-{cid}")
        (request,) = fake.requests(path="/v1/batch")
        assert request["write_key"] == WRITE_KEYS[cid]


def test_signatures_and_age_at_the_door(stack, segment_fakes) -> None:  # type: ignore[no-untyped-def]
    example = load_example("customer.rewarded")
    body = wrap(example, "customer.rewarded", "2024-01-01", "ev-sig", iso_now())
    # Another connection's secret does not open this connection.
    assert post(stack.web_url, "acme-eu", body, secret=SECRETS["acme-us"]).status_code == 401
    raw, headers = signed_request(body, SECRETS["acme-eu"])
    tampered = raw.replace(b"customer.rewarded", b"customer.rewardeD", 1)
    answer = requests.post(
        f"{stack.web_url}/webhooks/voucherify/acme-eu", data=tampered, headers=headers, timeout=10
    )
    assert answer.status_code == 401 and answer.json()["code"] == "invalid_signature"
    # A pretty-printed body signed over its compact form is accepted.
    raw, headers = signed_request(body, SECRETS["acme-eu"], pretty=True)
    answer = requests.post(
        f"{stack.web_url}/webhooks/voucherify/acme-eu", data=raw, headers=headers, timeout=10
    )
    assert answer.status_code == 202
    wait_until(lambda: segment_events(segment_fakes["acme-eu"]), timeout=30, what="the accepted event")
    assert len(segment_events(segment_fakes["acme-eu"])) == 1
