"""A backfill's bulks as large as Voucherify accepts (SPEC 15), with real processes: gunicorn,
a gevent Celery worker, the scheduler, Redis and the fake Voucherify (its bulk bound: the 10 MB
body Voucherify documents, or a stricter count when set).

- a replay of 3,000 customers (two versions each) on a bulk budget: bulks of more than 100
  customers, each body under 10 MB, every one read back; the newest state of every customer;
  far fewer than 0.02 customer calls per customer; nothing dead-lettered;
- a Voucherify that takes at most 100 customers a bulk: the replay still lands every customer,
  none dead-lettered, the refused bulk cut to 100 and every later bulk at 100 (learned).
"""

from __future__ import annotations

import gzip
import json
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import orjson
import pytest
import redis

from tests.conftest import make_stack
from tests.support.fakes import FakeVoucherify
from tests.support.faultkit import (
    FAST_ENV,
    calls,
    connector_cli,
    dead_letters,
    wait_quiet,
    write_connections,
)
from tests.support.identify_traffic import BULK_PATH, CUSTOMERS_PATH
from tests.support.processes import Stack, wait_until

pytestmark = pytest.mark.integration
pytest_plugins = ["tests.support.private_redis"]

SCALE = 0.05  # a quota "minute" lasts 3 s, an "hour" 180 s
QUOTA = "api_calls_per_minute = 2000\nbulk_calls_per_hour = 400\n"
# The scheduler at its production pace: what falls due in one tick is released together.
ENV = {
    **FAST_ENV,
    "CONNECTOR_QUOTA_PERIOD_SCALE": str(SCALE),
    "CONNECTOR_DELIVERY_CONCURRENCY": "8",
    "CONNECTOR_SCHEDULER_INTERVAL": "1",
}
TEN_MB = 10 * 1024 * 1024
BASE = datetime(2026, 3, 1, tzinfo=UTC).timestamp()


@pytest.fixture
def voucherify(tmp_path: Path) -> Iterator[FakeVoucherify]:
    with FakeVoucherify(log_dir=tmp_path / "fakes") as fake:
        fake.set_quota(api_calls_per_minute=2000, bulk_calls_per_hour=400, period_scale=SCALE)
        yield fake


def start(stack_factory: list, tmp_path: Path, redis_url: str, fake: FakeVoucherify) -> Stack:
    config = write_connections(tmp_path, fake, quota=QUOTA, fewer_calls="coalesce_window_seconds = 10\n")
    stack = make_stack(stack_factory, tmp_path, redis_url, config, **ENV)
    stack.web()
    stack.worker("w1", concurrency=8)
    stack.scheduler()
    return stack


def iso(epoch: float) -> str:
    return datetime.fromtimestamp(epoch, UTC).strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z"


def archive(path: Path, customers: list[str], versions: int) -> Path:
    """Identifies of ``customers``, ``versions`` each (the newest last in time, not in the file:
    the file runs newest version first for half of them)."""
    lines = []
    for n, customer in enumerate(customers):
        order = range(versions, 0, -1) if n % 2 else range(1, versions + 1)
        for v in order:
            at = BASE + 3600 * v + n * 0.01
            event = {
                "type": "identify",
                "messageId": f"{customer}-v{v}",
                "userId": customer,
                "timestamp": iso(at),
                "traits": {"name": f"{customer} v{v}", "email": f"{customer}-v{v}@example.com"},
            }
            lines.append(orjson.dumps(event))
    path.write_bytes(gzip.compress(b"\n".join(lines) + b"\n"))
    return path


def subjects(record: dict[str, Any]) -> list[str]:
    body = record.get("body")
    items = body if isinstance(body, list) else [body]
    return [str(item.get("source_id")) for item in items if isinstance(item, dict)]


def replay(stack: Stack, path: Path) -> dict[str, Any]:
    done = connector_cli(
        stack.env,
        "replay",
        "-c",
        "acme",
        str(path),
        "--json",
        "--report",
        str(stack.tmp / "rejected.jsonl"),
        timeout=300,
        log=stack.tmp / "cli.log",
    )
    assert done.returncode == 0, done.stderr
    return dict(json.loads(done.stdout)["files"][0])


def landed(fake: FakeVoucherify, customers: list[str]) -> bool:
    return len({c["source_id"] for c in fake.customers()} & set(customers)) == len(customers)


def read_back(fake: FakeVoucherify) -> tuple[set[str], set[str]]:
    """The async actions the fake lists, and those the connector polled with a 200."""
    polls = [r for r in calls(fake) if r["path"].startswith("/v1/async-actions/")]
    polled = {r["path"].rsplit("/", 1)[1] for r in polls if r["status"] == 200}
    return {a["id"] for a in fake.async_actions()["actions"]}, polled


def test_a_replay_goes_in_bulks_past_100_under_10_mb_read_back_newest_state(
    tmp_path: Path, private_redis: str, stack_factory: list, voucherify: FakeVoucherify
) -> None:
    stack = start(stack_factory, tmp_path, private_redis, voucherify)
    customers = [f"cust-{n:05d}" for n in range(3000)]
    summary = replay(stack, archive(tmp_path / "archive.json.gz", customers, versions=2))
    assert summary["accepted"] == 6000 and summary["rejected_total"] == 0
    wait_until(lambda: landed(voucherify, customers), timeout=180, what="every customer in Voucherify")
    # A bulk lands in the fake before its 202 has even reached the worker (a 3,000-customer body
    # took 1.8 s under CI's load); its read-back comes a poll interval and a scheduler tick after.
    wait_until(
        lambda: read_back(voucherify)[0] <= read_back(voucherify)[1], timeout=60, what="every bulk read back"
    )
    wait_quiet(voucherify, seconds=6)  # nothing after the read-backs

    bulks = calls(voucherify, BULK_PATH)
    sizes = sorted(len(subjects(r)) for r in bulks)
    print("bulk sizes:", sizes)
    assert bulks and all(r["status"] == 202 for r in bulks)
    # Past the live bound of 100: the replayed customers fall due together and go in a few bulks.
    assert max(sizes) >= 500 and len(bulks) <= 6, sizes
    assert all(len(orjson.dumps(r["body"])) < TEN_MB for r in bulks)
    # Every bulk read back: its async action polled (and DONE) before its customers counted.
    listed, polled = read_back(voucherify)
    assert len(listed) == len(bulks) and listed <= polled, listed - polled

    store = {c["source_id"]: c for c in voucherify.customers()}
    for customer in customers:
        assert store[customer]["name"] == f"{customer} v2", store[customer]
    customer_calls = calls(voucherify, CUSTOMERS_PATH) + bulks
    per_customer = len(customer_calls) / len(customers)
    print(f"customer calls: {len(customer_calls)} for {len(customers)} customers = {per_customer:.4f}")
    assert per_customer <= 0.005  # far under SPEC 15's 0.02
    assert not [r for r in calls(voucherify) if r["status"] == 429]
    assert dead_letters(private_redis) == []


def test_a_voucherify_taking_100_a_bulk_gets_every_customer_in_bulks_of_100(
    tmp_path: Path, private_redis: str, stack_factory: list, voucherify: FakeVoucherify
) -> None:
    voucherify.set_async_actions(max_customers=100)
    stack = start(stack_factory, tmp_path, private_redis, voucherify)
    customers = [f"cust-{n:05d}" for n in range(1500)]
    summary = replay(stack, archive(tmp_path / "archive.json.gz", customers, versions=1))
    assert summary["accepted"] == 1500
    wait_until(lambda: landed(voucherify, customers), timeout=180, what="every customer in Voucherify")
    wait_quiet(voucherify, seconds=6)

    bulks = calls(voucherify, BULK_PATH)
    refused = [r for r in bulks if r["status"] == 400]
    print("bulks:", [(len(subjects(r)), r["status"]) for r in bulks])
    assert refused and all(len(subjects(r)) > 100 for r in refused)  # a big bulk was tried
    first_refusal = min(r["seq"] for r in refused)
    later = [r for r in bulks if r["seq"] > first_refusal]
    # Once refused, no bulk over 100 is tried again (a bulk already on its way may still be).
    assert later and max(len(subjects(r)) for r in later if r["status"] == 202) <= 100
    assert len(refused) <= 2, len(refused)
    accepted = [c for r in bulks if r["status"] == 202 for c in subjects(r)]
    singles = [c for r in calls(voucherify, CUSTOMERS_PATH) for c in subjects(r)]
    assert set(accepted) | set(singles) >= set(customers)
    assert dead_letters(private_redis) == []  # nobody dead-lettered for the bulk's size
    client = redis.Redis.from_url(private_redis)
    try:
        assert client.get("connector:quota:acme:bulk_max") == b"100"  # learned, for a day
        assert 0 < int(client.ttl("connector:quota:acme:bulk_max")) <= 86_400
    finally:
        client.close()
