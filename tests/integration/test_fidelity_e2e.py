"""Issue 13 end to end, real processes: the event shapes Segment accepts and the destination maps
reach the fake Voucherify in both modes, and ``metadata_schema = "defined"`` against a fake that
serves (and enforces) a metadata schema.

Segment's official client sends what it can send (page/screen named 0, special characters,
booleans in string fields); the shapes it refuses to build (a track without ``event``, a number
as ``event`` or as a page name, a numeric ``userId``) go as raw Tracking API calls.
"""

from __future__ import annotations

import base64
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import redis as redis_lib
import requests
from segment.analytics.client import Client

from tests.conftest import make_stack
from tests.support.fakes import FakeVoucherify
from tests.support.processes import METRICS_TOKEN, wait_until

pytestmark = pytest.mark.integration

APP_ID = "fid-app-id-1"
SECRET = "fid-secret-key-123"
SPECIAL = 'Tom & Jerry\'s <Cafe> "x" = / `'
FAST = {
    "METRICS_TOKEN": METRICS_TOKEN,  # the per-connection series of /metrics
    "CONNECTOR_RETRY_BASE_SECONDS": "0.5",
    "CONNECTOR_RETRY_CAP_SECONDS": "2",
    "CONNECTOR_SCHEDULER_INTERVAL": "0.2",
}


@pytest.fixture
def fake(tmp_path: Path) -> Iterator[FakeVoucherify]:
    vf = FakeVoucherify(app_id=APP_ID, secret_key=SECRET, name="vf-fidelity", log_dir=tmp_path).start()
    try:
        yield vf
    finally:
        vf.stop(kill=True)


def connections(fake: FakeVoucherify, extra: str = "") -> str:
    out = []
    for mode, key in (("rest", "wk_rest_fidelity"), ("segmentio", "wk_seg_fidelity")):
        out.append(
            f"""
[[connection]]
id = "fid-{mode}"
write_keys = ["{key}"]
[connection.voucherify]
coalesce_window_seconds = 0  # not about the hold window: every request as it comes
api_calls_per_minute = 10000000  # not about quotas: no budget in the way
bulk_calls_per_hour = 10000000
app_id = "{APP_ID}"
secret_key = "{SECRET}"
api_url = "{fake.url}"
mode = "{mode}"
{extra if mode == "rest" else ""}
"""
        )
    return "\n".join(out)


def delivered(fake: FakeVoucherify, path: str) -> list[dict[str, Any]]:
    return [r for r in fake.requests(path=path) if 200 <= r["status"] < 300]


def post(url: str, write_key: str, path: str, body: dict[str, Any]) -> None:
    auth = "Basic " + base64.b64encode(f"{write_key}:".encode()).decode()
    answer = requests.post(url + path, json=body, headers={"Authorization": auth}, timeout=10)
    assert answer.status_code == 200 and answer.json() == {"success": True}, (path, body, answer.text)


def test_accepted_shapes_reach_voucherify_in_both_modes(
    tmp_path: Path, redis_url: str, stack_factory: list, fake: FakeVoucherify
) -> None:
    path = tmp_path / "connections.toml"
    path.write_text(connections(fake))
    stack = make_stack(stack_factory, tmp_path, redis_url, path)
    stack.web()
    stack.worker(concurrency=10)

    errors: list[Exception] = []
    for key in ("wk_rest_fidelity", "wk_seg_fidelity"):
        client = Client(key, host=stack.web_url, sync_mode=True, on_error=lambda e, _b: errors.append(e))
        client.page("c-user", None, 0)  # the client sends a falsy name as it is
        client.screen("c-user", None, 0)
        client.page("c-user", None, SPECIAL)
        client.track("c-user", "Referral Used", {"referral": {"code": False, "referrer_id": 1001}})
        assert errors == []
        post(stack.web_url, key, "/v1/track", {"userId": "r-user", "name": "Named Track"})
        post(stack.web_url, key, "/v1/track", {"userId": "r-user", "event": None, "name": "Null Event"})
        post(stack.web_url, key, "/v1/track", {"userId": "r-user", "event": 404})
        post(stack.web_url, key, "/v1/page", {"userId": "r-user", "name": 42})
        post(stack.web_url, key, "/v1/screen", {"userId": "r-user", "name": 3.5})
        post(
            stack.web_url,
            key,
            "/v1/batch",
            {"batch": [{"type": "track", "userId": 404, "event": "Numeric User"}]},
        )
        post(stack.web_url, key, "/v1/identify", {"anonymousId": 77, "traits": {"email": "n@x.io"}})

    names = [
        "Viewed 0 Page",
        "Viewed 0 Screen",
        f"Viewed {SPECIAL} Page",
        "Referral Used",
        "Named Track",
        "Null Event",
        "404",
        "Viewed 42 Page",
        "Viewed 3.5 Screen",
        "Numeric User",
    ]
    for events_path, customers_path in (
        ("/v1/events", "/v1/customers"),
        ("/segmentio/event-processing", "/segmentio/customer-processing"),
    ):
        wait_until(lambda p=events_path: len(delivered(fake, p)) >= len(names), timeout=30, what=events_path)
        wait_until(lambda p=customers_path: len(delivered(fake, p)) >= 1, timeout=30, what=customers_path)
        bodies = [r["body"] for r in delivered(fake, events_path)]
        assert sorted(b["event"] for b in bodies) == sorted(names)
        referral = next(b for b in bodies if b["event"] == "Referral Used")["referral"]
        assert referral == {"code": "false", "referrer_id": "1001"}
        numeric = next(b for b in bodies if b["event"] == "Numeric User")
        assert numeric["customer"]["source_id"] == "404"
        [customer] = [r["body"] for r in delivered(fake, customers_path)]
        assert customer["source_id"] == "77" and customer["email"] == "n@x.io"
    assert all(r["schema_valid"] for r in delivered(fake, "/v1/events"))


CUSTOMER_SCHEMA = {
    "id": "ms_fid",
    "related_object": "customer",
    "properties": {
        "plan": {"type": "string", "array": False, "optional": True, "objectType": None},
        "ltv": {"type": "number", "array": False, "optional": True, "objectType": None},
    },
    "allow_defined_only": True,
    "object": "metadata_schema",
}


def test_metadata_schema_filters_and_refreshes_after_a_metadata_400(
    tmp_path: Path, redis_url: str, stack_factory: list, fake: FakeVoucherify
) -> None:
    fake.set_metadata_schemas([CUSTOMER_SCHEMA], enforce=True)
    path = tmp_path / "connections.toml"
    path.write_text(connections(fake, '[connection.destination]\nmetadata_schema = "defined"\n'))
    stack = make_stack(stack_factory, tmp_path, redis_url, path, **FAST)
    stack.web()
    stack.worker(concurrency=10)
    stack.scheduler()

    def identify(user: str, metadata: dict[str, Any]) -> None:
        post(
            stack.web_url,
            "wk_rest_fidelity",
            "/v1/identify",
            {"userId": user, "traits": {"metadata": metadata}},
        )

    identify("m-user-1", {"plan": "pro", "ltv": 10, "nickname": "Al"})
    wait_until(lambda: delivered(fake, "/v1/customers"), timeout=30, what="the first upsert")
    identify("m-user-2", {"plan": "free", "nickname": "Bo", "color": "red"})
    wait_until(lambda: len(delivered(fake, "/v1/customers")) >= 2, timeout=30, what="the second upsert")
    assert [r["body"]["metadata"] for r in delivered(fake, "/v1/customers")] == [
        {"plan": "pro", "ltv": 10},
        {"plan": "free"},
    ]
    assert len(fake.requests(path="/v1/metadata-schemas")) == 1  # cached: one read for both

    # The project drops `ltv` from its schema: the connector's copy is out of date, Voucherify
    # refuses the upsert (400), the connector reads the schema again and sends it without `ltv`.
    fake.set_metadata_schemas(
        [{**CUSTOMER_SCHEMA, "properties": {"plan": CUSTOMER_SCHEMA["properties"]["plan"]}}], enforce=True
    )
    identify("m-user-3", {"plan": "pro", "ltv": 99})
    wait_until(
        lambda: len(delivered(fake, "/v1/customers")) >= 3, timeout=30, what="the upsert after a refresh"
    )
    refused = [r for r in fake.requests(path="/v1/customers") if r["status"] == 400]
    assert len(refused) == 1 and refused[0]["body"]["metadata"] == {"plan": "pro", "ltv": 99}
    assert delivered(fake, "/v1/customers")[-1]["body"] == {
        "source_id": "m-user-3",
        "metadata": {"plan": "pro"},
    }
    assert len(fake.requests(path="/v1/metadata-schemas")) == 2
    customer = next(c for c in fake.customers() if c["source_id"] == "m-user-3")
    assert customer["metadata"] == {"plan": "pro"}
    assert redis_lib.Redis.from_url(redis_url).zcard("connector:dlq") == 0

    metrics = stack.metrics().text
    line = next(
        x
        for x in metrics.splitlines()
        if x.startswith("connector_metadata_keys_dropped_total{") and 'key="nickname"' in x
    )
    assert 'connection="fid-rest"' in line and 'reason="undefined"' in line and line.endswith(" 2.0")
