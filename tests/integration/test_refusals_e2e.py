"""Pauses per (connection, target system) and request-specific refusals (SPEC 13, issue #19),
with real processes: gunicorn, Celery workers, the scheduler, fake Voucherify and fake Segment.

- A Voucherify 401 pauses Voucherify delivery only: webhooks still reach Segment.
- A Segment 401 pauses Segment delivery only (nothing dead-lettered), its outbox waits for the
  probe time instead of being flushed every scheduler tick, and Voucherify delivery goes on.
- A 403 that only ``/v1/events`` gets (the credentials probe is accepted) is those calls'
  refusal: dead-lettered ``refused`` after their attempts, the connection never paused.
- An unreadable metadata schema (403) makes an upsert wait a bounded number of counted
  attempts, then it goes without its metadata (none is known to be defined).
"""

from __future__ import annotations

import json
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import requests

from tests.conftest import make_stack
from tests.support import secrets
from tests.support.fakes import FakeSegment, FakeVoucherify
from tests.support.faultkit import (
    CONNECTION_ID,
    FAST_ENV,
    Sender,
    calls,
    dead_letters,
    delivered_ids,
    track,
    write_connections,
)
from tests.support.processes import BIN, ROOT, Stack, wait_until
from tests.support.webhooks import iso_now, load_example, signed_request, wrap

pytestmark = pytest.mark.integration
pytest_plugins = ["tests.support.private_redis"]

WEBHOOK_SECRET = "vf-webhook-secret-refusals"
SEGMENT_KEY = "seg-key-right"
WRONG_SEGMENT_KEY = "seg-key-wrong"
PROBE_SECONDS = 2.0


@pytest.fixture
def voucherify(tmp_path: Path) -> Iterator[FakeVoucherify]:
    with FakeVoucherify(log_dir=tmp_path / "fakes") as fake:
        yield fake


@pytest.fixture
def segment(tmp_path: Path) -> Iterator[FakeSegment]:
    secrets.register(WRONG_SEGMENT_KEY)
    fake = FakeSegment(write_keys=(SEGMENT_KEY,), log_dir=tmp_path / "fakes").start()
    try:
        yield fake
    finally:
        fake.stop(kill=True)


def start(
    tmp_path: Path,
    redis_url: str,
    stack_factory: list,
    voucherify: FakeVoucherify,
    segment: FakeSegment,
    key: str,
    destination: str = "",
) -> Stack:
    extra = (
        f'webhook_secret = "{WEBHOOK_SECRET}"\n'
        "max_event_age_hours = 1000000\n"
        "[connection.segment]\n"
        f'write_key = "{key}"\n'
        'region = "eu"\n'
        f'api_url = "{segment.url}"\n'
    ) + destination
    config = write_connections(tmp_path, voucherify, extra=extra)
    env = {**FAST_ENV, "CONNECTOR_AUTH_PROBE_SECONDS": str(PROBE_SECONDS)}
    stack = make_stack(stack_factory, tmp_path, redis_url, config, **env)
    stack.web()
    stack.worker("w1", concurrency=8)
    stack.scheduler()
    return stack


def webhook(stack: Stack, event_id: str) -> None:
    body = wrap(load_example("customer.rewarded"), "customer.rewarded", "2024-01-01", event_id, iso_now())
    raw, headers = signed_request(body, WEBHOOK_SECRET)
    answer = requests.post(
        f"{stack.web_url}/webhooks/voucherify/{CONNECTION_ID}", data=raw, headers=headers, timeout=10
    )
    assert answer.status_code == 202, answer.text


def segment_event_ids(fake: FakeSegment) -> set[str]:
    return {str(e["event"].get("properties", {}).get("voucherify_event_id")) for e in fake.events()}


def cli(stack: Stack, *args: str) -> subprocess.CompletedProcess[str]:
    result = subprocess.run(
        [str(BIN / "connector"), *args], env=stack.env, cwd=ROOT, capture_output=True, text=True, timeout=60
    )
    with open(stack.tmp / "cli.log", "a") as log:
        log.write(f"$ connector {' '.join(args)}\n{result.stdout}{result.stderr}\n")
    return result


def connection_stats(stack: Stack) -> dict[str, Any]:
    stats = cli(stack, "stats", "--json")
    assert stats.returncode == 0, stats.stderr
    [conn] = json.loads(stats.stdout)["connections"]
    return dict(conn)


def paused_gauges(stack: Stack) -> dict[str, float]:
    text = requests.get(stack.web_url + "/metrics", timeout=5).text
    found: dict[str, float] = {}
    for line in text.splitlines():
        if line.startswith("connector_connection_paused{"):
            system = line.split('system="', 1)[1].split('"', 1)[0] if 'system="' in line else "?"
            found[system] = float(line.rsplit(" ", 1)[1])
    return found


def flushes_published(stack: Stack, *, exported: bool = True) -> float:
    """The scheduler's outbox flush tasks published so far (every connection).  The counter is
    exported from its first flush on: ``exported`` asserts it is there (a read that counts
    nothing must not pass for "no flush"); before the first one it is 0."""
    text = requests.get(stack.web_url + "/metrics", timeout=5).text
    found = [
        float(line.rsplit(" ", 1)[1])
        for line in text.splitlines()
        if line.startswith("connector_outbox_flushes_published_total")
    ]
    assert found or not exported, "the scheduler's flush counter is not exported"
    return sum(found)


def test_a_voucherify_401_leaves_segment_delivery_running(
    tmp_path: Path, private_redis: str, stack_factory: list, voucherify: FakeVoucherify, segment: FakeSegment
) -> None:
    stack = start(tmp_path, private_redis, stack_factory, voucherify, segment, SEGMENT_KEY)
    voucherify.set_auth("revoked")
    assert Sender(stack.web_url).batch([track("vf-refused-0")]) == 200
    wait_until(
        lambda: connection_stats(stack)["paused"] is not None, timeout=20, what="Voucherify delivery paused"
    )

    # The other direction is not paused: every webhook reaches Segment.
    for i in range(3):
        webhook(stack, f"ev-during-pause-{i}")
    wanted = {f"ev-during-pause-{i}" for i in range(3)}
    wait_until(lambda: wanted <= segment_event_ids(segment), timeout=20, what="webhooks delivered to Segment")

    conn = connection_stats(stack)
    assert conn["pauses"]["voucherify"]["reason"] == "auth"
    assert conn["pauses"]["segment"] is None
    assert paused_gauges(stack) == {"voucherify": 1.0, "segment": 0.0}
    assert dead_letters(private_redis) == []


def test_a_segment_401_pauses_segment_delivery_only_without_a_busy_loop(
    tmp_path: Path, private_redis: str, stack_factory: list, voucherify: FakeVoucherify, segment: FakeSegment
) -> None:
    stack = start(tmp_path, private_redis, stack_factory, voucherify, segment, WRONG_SEGMENT_KEY)
    webhook(stack, "ev-refused-0")
    wait_until(
        lambda: any(r["status"] == 401 for r in segment.requests()),
        timeout=20,
        what="Segment refused the key",
    )
    wait_until(
        lambda: connection_stats(stack)["pauses"]["segment"] is not None, timeout=10, what="Segment paused"
    )
    assert dead_letters(private_redis) == []  # nothing dead-lettered: the key is at fault

    # Voucherify delivery goes on meanwhile.
    sender = Sender(stack.web_url)
    assert sender.batch([track("vf-while-segment-paused")]) == 200
    wait_until(
        lambda: "vf-while-segment-paused" in delivered_ids(voucherify), timeout=20, what="Voucherify delivery"
    )
    conn = connection_stats(stack)
    assert conn["paused"] is None and conn["pauses"]["voucherify"] is None
    assert any("Segment delivery PAUSED" in s for s in conn["forecast"]["sentences"]), conn["forecast"]
    assert paused_gauges(stack) == {"voucherify": 0.0, "segment": 1.0}
    text = cli(stack, "stats").stdout
    assert "segment PAUSED (auth)" in text and "--system segment" in text, text

    # While paused, Segment sees one probing batch per probe interval, not a flush per tick;
    # and more webhooks wait (none dead-lettered).
    webhook(stack, "ev-refused-1")
    before, published = len(segment.requests()), flushes_published(stack, exported=False)
    time.sleep(3 * PROBE_SECONDS)
    probes = len(segment.requests()) - before
    assert probes <= 4, probes
    # The scheduler ticks every 0.2 s: a flush per tick would be 30 here.  (The probes flush:
    # by now the counter is exported.)
    assert flushes_published(stack) - published <= 4
    assert dead_letters(private_redis) == []

    # The key accepted again: the next probe delivers everything waiting, once.
    segment.write_keys = [SEGMENT_KEY, WRONG_SEGMENT_KEY]
    segment.restart()
    wanted = {"ev-refused-0", "ev-refused-1"}
    wait_until(lambda: wanted <= segment_event_ids(segment), timeout=20, what="delivered after the probe")
    wait_until(lambda: connection_stats(stack)["pauses"]["segment"] is None, timeout=10, what="resumed")
    assert len(segment.events()) == 2


def test_a_403_only_events_get_is_their_refusal_not_a_pause(
    tmp_path: Path, private_redis: str, stack_factory: list, voucherify: FakeVoucherify, segment: FakeSegment
) -> None:
    stack = start(tmp_path, private_redis, stack_factory, voucherify, segment, SEGMENT_KEY)
    # A WAF rule (or a key without the permission) on custom events only.
    voucherify.set_faults(path="/v1/events", statuses=[403], then=403)
    sender = Sender(stack.web_url)
    events = [track(f"waf-{i}") for i in range(3)]
    assert sender.batch(events) == 200
    wait_until(
        lambda: len(dead_letters(private_redis)) == 3, timeout=40, what="the refused events dead-lettered"
    )

    letters = dead_letters(private_redis)
    assert {d.reason for d in letters} == {"refused"}
    assert {d.status for d in letters} == {403}
    assert all(d.attempts == 3 for d in letters), [d.attempts for d in letters]
    # Three counted attempts each; a refusal met while another worker's probe is on its way is
    # looked at again a second later without counting (at most once or twice per event here).
    assert 9 <= len(calls(voucherify, "/v1/events")) <= 15
    probes = [r for r in calls(voucherify) if r["method"] == "GET" and r["path"].startswith("/v1/customers")]
    assert 1 <= len(probes) <= 4, probes  # one trusted for a minute, and each last attempt's
    conn = connection_stats(stack)
    assert conn["paused"] is None and conn["pauses"] == {"voucherify": None, "segment": None}

    # Other calls of the key go on: an identify is delivered, nothing paused.
    identify = {
        "type": "identify",
        "messageId": "waf-identify",
        "userId": "waf-user",
        "traits": {"name": "A"},
    }
    assert sender.batch([identify]) == 200
    wait_until(lambda: "waf-identify" in delivered_ids(voucherify), timeout=20, what="the identify delivered")
    assert connection_stats(stack)["paused"] is None


def test_an_unreadable_metadata_schema_is_waited_for_a_bounded_number_of_attempts(
    tmp_path: Path, private_redis: str, stack_factory: list, voucherify: FakeVoucherify, segment: FakeSegment
) -> None:
    destination = '[connection.destination]\nmetadata_schema = "defined"\n'
    stack = start(tmp_path, private_redis, stack_factory, voucherify, segment, SEGMENT_KEY, destination)
    # The key may not read metadata schemas (or the listing is over 1 MB): the GET fails.
    voucherify.set_faults(path="/v1/metadata-schemas", statuses=[403], then=403)
    identify = {
        "type": "identify",
        "messageId": "schema-identify",
        "userId": "schema-user",
        "traits": {"name": "Ann", "metadata": {"plan": "pro"}},
    }
    assert Sender(stack.web_url).batch([identify]) == 200
    wait_until(
        lambda: "schema-identify" in delivered_ids(voucherify),
        timeout=30,
        what="the upsert, without metadata",
    )
    [sent] = [r for r in calls(voucherify, "/v1/customers") if r["status"] < 300]
    assert sent["body"]["source_id"] == "schema-user" and "metadata" not in sent["body"], sent["body"]
    assert len(calls(voucherify, "/v1/metadata-schemas")) <= 3  # bounded reads, not one a second
    assert dead_letters(private_redis) == []
    assert connection_stats(stack)["paused"] is None  # a schema read's 403 is not a pause
