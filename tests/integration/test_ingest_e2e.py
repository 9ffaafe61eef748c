"""The ingest end to end: Segment's official Python client -> gunicorn -> Redis (no worker).

Real processes only: gunicorn serving the app factory, the machine's Redis (or the suite's own).
"""

from __future__ import annotations

import time
from pathlib import Path

import pytest
import segment.analytics as analytics_module
from segment.analytics.client import Client

from tests.conftest import make_stack
from tests.support.broker import queued_events, queued_tasks
from tests.support.processes import wait_until

pytestmark = pytest.mark.integration

CONNECTIONS = """
[[connection]]
id = "acme"
write_keys = ["wk_acme_live"]
[connection.voucherify]
coalesce_window_seconds = 0  # not about the hold window: every request as it comes
api_calls_per_minute = 10000000  # not about quotas: no budget in the way
bulk_calls_per_hour = 10000000
app_id = "app-id-acme"
secret_key = "secret-key-acme"
region = "eu"
api_url = "http://127.0.0.1:9"

[[connection]]
id = "other"
write_keys = ["wk_other"]
[connection.voucherify]
coalesce_window_seconds = 0  # not about the hold window: every request as it comes
api_calls_per_minute = 10000000  # not about quotas: no budget in the way
bulk_calls_per_hour = 10000000
app_id = "app-id-other"
secret_key = "secret-key-other"
region = "us1"
api_url = "http://127.0.0.1:9"
"""


def write_connections(tmp: Path, text: str = CONNECTIONS) -> Path:
    path = tmp / "connections.toml"
    path.write_text(text)
    return path


def send_all_six(client: Client, tag: str) -> None:
    client.identify(f"user-{tag}", {"email": f"{tag}@example.com", "name": "Ada"})
    client.track(f"user-{tag}", "Order Completed", {"total": 42})
    client.page(f"user-{tag}", "Docs", "Pricing", {"url": "https://x.io/pricing"})
    client.screen(f"user-{tag}", "App", "Home", {"tab": 1})
    client.group(f"user-{tag}", f"group-{tag}", {"name": "Acme", "plan": "pro"})
    client.alias(f"old-{tag}", f"user-{tag}")
    client.flush()


@pytest.mark.parametrize("gzip", [False, True], ids=["plain", "gzip"])
def test_official_client_all_six_calls_reach_the_broker(
    gzip: bool, tmp_path: Path, redis_url: str, stack_factory: list
) -> None:
    stack = make_stack(stack_factory, tmp_path, redis_url, write_connections(tmp_path))
    stack.web()
    errors: list[Exception] = []
    client = Client(
        "wk_acme_live",
        host=stack.web_url,
        gzip=gzip,
        sync_mode=True,
        on_error=lambda e, _b: errors.append(e),
        max_retries=1,
    )
    send_all_six(client, "a")
    assert errors == []
    events = queued_events(redis_url, "voucherify.eu")
    assert sorted(e["type"] for e in events) == sorted(
        ["identify", "track", "page", "screen", "group", "alias"]
    )
    for event in events:
        assert event["messageId"] and event["receivedAt"] and event["timestamp"]
        assert event["context"]["library"]["name"] == "analytics-python"
        assert "writeKey" not in event
    track = next(e for e in events if e["type"] == "track")
    assert track["event"] == "Order Completed" and track["userId"] == "user-a"
    group = next(e for e in events if e["type"] == "group")
    assert group["groupId"] == "group-a"
    alias = next(e for e in events if e["type"] == "alias")
    assert alias["previousId"] == "old-a"
    # The other connection's queue got nothing: the key selects the connection.
    assert queued_tasks(redis_url, "voucherify.us1") == []


def test_batching_client_is_one_message_per_request(
    tmp_path: Path, redis_url: str, stack_factory: list
) -> None:
    stack = make_stack(stack_factory, tmp_path, redis_url, write_connections(tmp_path))
    stack.web()
    client = Client("wk_other", host=stack.web_url, upload_size=100, max_retries=1)
    for i in range(250):
        client.track(f"u{i}", "Viewed", {"i": i})
    client.flush()
    client.join()
    tasks = wait_until(lambda: queued_tasks(redis_url, "voucherify.us1"), what="tasks in voucherify.us1")
    events = queued_events(redis_url, "voucherify.us1")
    assert len(events) == 250
    assert len(tasks) < 250 / 10  # batched: a broker message per request, not per event
    assert {e["properties"]["i"] for e in events} == set(range(250))


def test_clock_skew_is_corrected(tmp_path: Path, redis_url: str, stack_factory: list) -> None:
    import requests

    stack = make_stack(stack_factory, tmp_path, redis_url, write_connections(tmp_path))
    stack.web()
    # A client whose clock is exactly one hour ahead: sentAt and timestamp both shifted.
    now = time.time()
    ahead = now + 3600
    iso = lambda t: time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(t)) + "Z"  # noqa: E731
    body = {
        "batch": [{"type": "track", "userId": "u", "event": "E", "timestamp": iso(ahead - 60)}],
        "sentAt": iso(ahead),
        "context": {"ip": "1.2.3.4", "library": {"name": "x"}},
        "writeKey": "wk_acme_live",
    }
    answer = requests.post(stack.web_url + "/v1/batch", json=body, timeout=5)
    assert answer.status_code == 200, answer.text
    (event,) = queued_events(redis_url, "voucherify.eu")
    from datetime import datetime

    corrected = datetime.fromisoformat(event["timestamp"]).timestamp()
    assert abs(corrected - (now - 60)) < 5  # receivedAt - (sentAt - timestamp)
    assert event["originalTimestamp"] == iso(ahead - 60)
    assert event["context"]["ip"] == "1.2.3.4"
    assert "writeKey" not in event


@pytest.fixture(autouse=True)
def _quiet_segment_logger() -> None:
    analytics_module.debug = False
