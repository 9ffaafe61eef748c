"""Segment -> Voucherify end to end, with real processes only.

Segment's official client -> gunicorn -> Redis -> Celery worker -> three fake Voucherify servers,
one per region (eu and us1 in `rest` mode, as1 in `segmentio` mode).  Each fake must receive
exactly its own connection's requests, with that connection's credentials; with the us1 fake
down, eu and as1 traffic keeps flowing, and us1's work is delivered once it is back.
"""

from __future__ import annotations

import base64
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import redis as redis_lib
from segment.analytics.client import Client

from connector.keys import Keys
from tests.conftest import make_stack
from tests.support.fakes import FakeVoucherify, voucherify_fakes
from tests.support.processes import wait_until

pytestmark = pytest.mark.integration

REGIONS = {
    "eu": {"mode": "rest", "app_id": "eu-app-id", "secret": "eu-secret-key", "write_key": "wk_eu_live"},
    "us1": {"mode": "rest", "app_id": "us1-app-id", "secret": "us1-secret-key", "write_key": "wk_us1_live"},
    "as1": {
        "mode": "segmentio",
        "app_id": "as1-app-id",
        "secret": "as1-secret-key",
        "write_key": "wk_as1_live",
    },
}

FAST_RETRIES = {
    "CONNECTOR_RETRY_BASE_SECONDS": "0.5",
    "CONNECTOR_RETRY_CAP_SECONDS": "2",
    "CONNECTOR_SCHEDULER_INTERVAL": "0.2",
    "CONNECTOR_CONNECT_TIMEOUT": "1",
    "CONNECTOR_READ_TIMEOUT": "3",
}


@pytest.fixture
def fakes(tmp_path: Path) -> Iterator[dict[str, FakeVoucherify]]:
    with voucherify_fakes(REGIONS, tmp_path) as started:
        yield started


def connections_toml(fakes: dict[str, FakeVoucherify]) -> str:
    out = []
    for region, spec in REGIONS.items():
        out.append(
            f"""
[[connection]]
id = "conn-{region}"
write_keys = ["{spec["write_key"]}"]
[connection.voucherify]
coalesce_window_seconds = 0  # not about the hold window: every request as it comes
api_calls_per_minute = 10000000  # not about quotas: no budget in the way
bulk_calls_per_hour = 10000000
app_id = "{spec["app_id"]}"
secret_key = "{spec["secret"]}"
region = "{region}"
api_url = "{fakes[region].url}"
mode = "{spec["mode"]}"
"""
        )
    return "\n".join(out)


def send(url: str, write_key: str, users: list[str]) -> None:
    errors: list[Exception] = []
    client = Client(write_key, host=url, on_error=lambda e, _b: errors.append(e), max_retries=3)
    for user in users:
        client.identify(user, {"email": f"{user}@example.com", "first_name": "Ada", "last_name": "L"})
        client.track(user, "Order Completed", {"total": 10, "metadata": {"order": user}})
        client.page(user, None, "Pricing")
        client.screen(user, None, "Home")
        client.group(user, f"g-{user}", {"name": "Acme", "plan": "pro"})
        client.alias(f"old-{user}", user)  # acknowledged, no Voucherify effect
    client.flush()
    client.join()
    assert errors == []


def expected_paths(mode: str) -> dict[str, int]:
    if mode == "rest":
        return {"/v1/customers": 2, "/v1/events": 3}  # identify + group upserts; track/page/screen
    return {
        "/segmentio/customer-processing": 1,
        "/segmentio/event-processing": 3,
        "/segmentio/group-processing": 1,
    }


def delivered(fake: FakeVoucherify) -> list[dict[str, Any]]:
    return [r for r in fake.requests() if not r["path"].startswith("/__fake") and 200 <= r["status"] < 300]


def parked_customers(redis_url: str, connection_id: str) -> set[str]:
    """Customers with work waiting in the delayed store (retries) for ``connection_id``."""
    client = redis_lib.Redis.from_url(redis_url)
    try:
        found: set[str] = set()
        for raw in client.hvals(Keys.from_env().delayed_data):
            entry = json.loads(raw)
            if entry.get("connection_id") == connection_id:
                found |= {str((i.get("request") or {}).get("customer")) for i in entry["items"]}
        return found
    finally:
        client.close()


def check_requests(region: str, fake: FakeVoucherify, users: list[str]) -> None:
    spec = REGIONS[region]
    requests = delivered(fake)
    counts: dict[str, int] = {}
    for r in requests:
        counts[r["path"]] = counts.get(r["path"], 0) + 1
    assert counts == {p: n * len(users) for p, n in expected_paths(spec["mode"]).items()}, counts
    for r in requests:
        headers = {k.lower(): v for k, v in r["headers"].items()}
        if spec["mode"] == "rest":
            assert headers["x-app-id"] == spec["app_id"]
            assert headers["x-app-token"] == spec["secret"]
            assert headers["idempotency-key"].startswith(f"conn-{region}:v:")
            assert headers["user-agent"].startswith("segment-voucherify-connector/")
            assert r["schema_valid"] is True, r["validation_errors"]
        else:
            assert headers["authorization"] == "Basic " + base64.b64encode(spec["app_id"].encode()).decode()
            assert headers["secret-key"] == base64.b64encode(spec["secret"].encode()).decode()
        body = r["body"]
        customer = body.get("customer", body) if isinstance(body, dict) else {}
        assert customer.get("source_id") in users, body
    if spec["mode"] == "rest":
        upserts = [r["body"] for r in requests if r["path"] == "/v1/customers"]
        identify = next(b for b in upserts if "email" in b)
        assert identify["name"] == "Ada L" and "first_name" not in identify
        group = next(b for b in upserts if "metadata" in b and "segment_group_id" in b["metadata"])
        assert group["metadata"]["segment_group_plan"] == "pro"
        events = sorted(r["body"]["event"] for r in requests if r["path"] == "/v1/events")
        assert events == sorted(["Order Completed", "Viewed Pricing Page", "Viewed Home Screen"] * len(users))
    else:
        identify = next(r["body"] for r in requests if r["path"] == "/segmentio/customer-processing")
        assert identify["first_name"] == "Ada" and identify["type"] == "identify"


def test_three_regions_each_fake_gets_its_own_traffic_and_outages_stay_local(
    tmp_path: Path, redis_url: str, stack_factory: list, fakes: dict[str, FakeVoucherify]
) -> None:
    path = tmp_path / "connections.toml"
    path.write_text(connections_toml(fakes))
    stack = make_stack(stack_factory, tmp_path, redis_url, path, **FAST_RETRIES)
    stack.web()
    stack.worker(concurrency=50)
    stack.scheduler()

    users = {region: [f"{region}-user-{i}" for i in range(3)] for region in REGIONS}
    for region, spec in REGIONS.items():
        send(stack.web_url, spec["write_key"], users[region])
    total = {r: sum(expected_paths(REGIONS[r]["mode"]).values()) * len(users[r]) for r in REGIONS}
    for region, fake in fakes.items():
        wait_until(
            lambda f=fake, r=region: len(delivered(f)) >= total[r], timeout=60, what=f"{region} deliveries"
        )
    for region, fake in fakes.items():
        check_requests(region, fake, users[region])

    # us1 goes down; eu and as1 keep flowing while us1's work waits in the retry store.
    fakes["us1"].stop()
    more = {region: [f"{region}-late-{i}" for i in range(2)] for region in REGIONS}
    for region, spec in REGIONS.items():
        send(stack.web_url, spec["write_key"], more[region])
    for region in ("eu", "as1"):
        fake = fakes[region]
        want = total[region] + sum(expected_paths(REGIONS[region]["mode"]).values()) * len(more[region])
        wait_until(
            lambda f=fake, w=want: len(delivered(f)) >= w, timeout=30, what=f"{region} during us1 outage"
        )
    # A stopped fake records nothing, so "it received nothing" would prove nothing: what shows
    # that us1's work was tried and kept is the retry store, holding work for each late us1 user.
    wait_until(
        lambda: parked_customers(redis_url, "conn-us1") >= set(more["us1"]),
        timeout=30,
        what="us1's work parked for retry during its outage",
    )

    fakes["us1"].start()
    want_us1 = total["us1"] + sum(expected_paths("rest").values()) * len(more["us1"])
    wait_until(lambda: len(delivered(fakes["us1"])) >= want_us1, timeout=60, what="us1 after its outage")
    for region, fake in fakes.items():
        check_requests(region, fake, users[region] + more[region])


def test_workers_started_per_region_queue_take_only_their_region(
    tmp_path: Path, redis_url: str, stack_factory: list, fakes: dict[str, FakeVoucherify]
) -> None:
    path = tmp_path / "connections.toml"
    path.write_text(connections_toml(fakes))
    stack = make_stack(stack_factory, tmp_path, redis_url, path, **FAST_RETRIES)
    stack.web()
    stack.worker(name="worker-eu", queues=["voucherify.eu"], concurrency=10)
    for region in ("eu", "us1"):
        send(stack.web_url, REGIONS[region]["write_key"], [f"{region}-only"])
    wait_until(lambda: len(delivered(fakes["eu"])) >= 5, timeout=30, what="eu deliveries")
    # Nobody consumes voucherify.us1 yet: its message waits in its own queue.
    client = redis_lib.Redis.from_url(redis_url)
    assert client.llen("voucherify.us1") >= 1
    assert delivered(fakes["us1"]) == []
    stack.worker(name="worker-us1", queues=["voucherify.us1"], concurrency=10)
    wait_until(lambda: len(delivered(fakes["us1"])) >= 5, timeout=30, what="us1 deliveries")
    check_requests("eu", fakes["eu"], ["eu-only"])
    check_requests("us1", fakes["us1"], ["us1-only"])
    assert delivered(fakes["as1"]) == []
