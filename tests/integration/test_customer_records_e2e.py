"""The ledger, the stale rule's times and the "unchanged" digests are bounded per connection
(SPEC 16, issue #20: "fix the class"), with real processes: gunicorn, a Celery worker, a fake
Voucherify and a redis-server of the test's own.

Each is keyed by ids the client chooses (an idempotency key per event, a record per userId) and
outlives the backlog by days: without a bound of its own, a flood of cheap identifies with
distinct userIds -- each delivered, each leaving records -- grew Redis until the global high
water (503 for every connection).  Now every such record has a TTL, the connection's are
accounted (connector.kept), and over ``CUSTOMER_RECORDS_MB`` the ingest answers 429
``customer_records_full`` naming the cause, before Redis is anywhere near full.
"""

from __future__ import annotations

import base64
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import orjson
import pytest
import redis
import requests

from connector.kept import CUSTOMER_RECORD_BYTES, LEDGER_RECORD_BYTES
from ops.embedded import start_redis
from tests.conftest import make_stack
from tests.support.fakes import FakeVoucherify
from tests.support.processes import wait_until

pytestmark = pytest.mark.integration

WRITE_KEY = "wk_customer_records"
LIMIT_MB = 0.25
BATCH = 200

CONNECTIONS = """
[[connection]]
id = "flood"
write_keys = ["{write_key}"]
[connection.voucherify]
coalesce_window_seconds = 0
api_calls_per_minute = 10000000  # not about quotas
bulk_calls_per_hour = 0  # one call per identify: each leaves its records
app_id = "{app_id}"
secret_key = "{secret_key}"
region = "eu"
api_url = "{api_url}"
"""


@pytest.fixture
def own_redis(tmp_path: Path) -> Iterator[str]:
    proc: subprocess.Popen[bytes]
    proc, url = start_redis(tmp_path / "redis", appendonly=False)
    try:
        yield url
    finally:
        proc.kill()
        proc.wait(10)


def auth() -> dict[str, str]:
    return {"Authorization": "Basic " + base64.b64encode(f"{WRITE_KEY}:".encode()).decode()}


def identifies(start: int, n: int) -> dict[str, Any]:
    return {
        "batch": [
            {
                "type": "identify",
                "userId": f"stranger-{i}",
                "messageId": f"m-{i:06d}",
                "traits": {"email": f"s{i}@example.com"},
            }
            for i in range(start, start + n)
        ]
    }


def records(client: redis.Redis) -> dict[str, tuple[int, int]]:
    """Per kind (ledger, stale, unchanged): how many keys and their bytes (MEMORY USAGE)."""
    out: dict[str, tuple[int, int]] = {}
    for kind in ("ledger", "stale", "unchanged"):
        count = size = 0
        for key in client.scan_iter(match=f"connector:{kind}:flood:*", count=1000):
            ttl = client.ttl(key)
            assert ttl > 0 or ttl == -2, (key, ttl)  # every record expires by itself
            count += 1
            size += int(client.memory_usage(key) or 0)
        out[kind] = (count, size)
    return out


def test_a_flood_of_distinct_user_ids_meets_its_bound(
    tmp_path: Path, own_redis: str, stack_factory: list
) -> None:
    client = redis.Redis.from_url(own_redis)
    limit = int(LIMIT_MB * 1024 * 1024)
    with FakeVoucherify(log_dir=tmp_path / "fakes") as vf:
        path = tmp_path / "connections.toml"
        path.write_text(
            CONNECTIONS.format(
                write_key=WRITE_KEY, app_id=vf.app_id, secret_key=vf.secret_key, api_url=vf.url
            )
        )
        stack = make_stack(stack_factory, tmp_path, own_redis, path, CUSTOMER_RECORDS_MB=str(LIMIT_MB))
        stack.web()
        stack.worker()

        accepted = 0
        refused: dict[str, Any] | None = None
        # ~390 B of records per delivered identify: the bound is met after ~700 of them.
        for round_ in range(20):
            answer = requests.post(
                stack.web_url + "/v1/batch",
                data=orjson.dumps(identifies(round_ * BATCH, BATCH)),
                headers={**auth(), "Content-Type": "application/json"},
                timeout=30,
            )
            if answer.status_code == 429:
                refused = answer.json()
                break
            assert answer.status_code == 200, answer.text
            accepted += BATCH
            wait_until(
                lambda: int(client.get("connector:backlog:flood") or 0) == 0,
                timeout=60,
                what=f"the batch delivered: {client.get('connector:backlog:flood')}, {len(vf.requests())} calls",
            )
            time.sleep(1.1)  # the guard looks at most once a second

        assert refused is not None, f"{accepted} identifies accepted and never a 429"
        assert refused["code"] == "customer_records_full", refused
        assert "CUSTOMER_RECORDS_MB" in refused["message"]
        assert "customer records over their bound" in stack.logs()
        found = records(client)
        print(f"accepted {accepted} identifies; records {found}; limit {limit} B")

        # What was accepted was delivered and left its records (nothing dropped) ...
        assert found["ledger"][0] == accepted and found["stale"][0] == accepted
        # ... bounded: the estimate errs high, so what Redis holds stays near the bound (one
        # batch and the guard's second of slack past it), far from the 10,000 events sent.
        estimated = accepted * (LEDGER_RECORD_BYTES + CUSTOMER_RECORD_BYTES)
        assert accepted < 4000
        assert estimated <= limit + 2 * BATCH * (LEDGER_RECORD_BYTES + CUSTOMER_RECORD_BYTES)
        actual = sum(size for _, size in found.values())
        assert actual <= estimated * 1.2, (actual, estimated)

        # The refusals name their cause until the records expire (the TTLs above): a 429 for
        # this connection, not a 503 for every connection at Redis's high water.
        again = requests.post(
            stack.web_url + "/v1/batch",
            data=orjson.dumps(identifies(10**5, 1)),
            headers={**auth(), "Content-Type": "application/json"},
            timeout=30,
        )
        assert again.status_code == 429 and again.json()["code"] == "customer_records_full"
