"""The backlog reconcile counts upserts waiting in the hold window (issue #19), with real
processes: gunicorn, a Celery worker, the scheduler (reconciling every half second) and the
fake Voucherify.

Identifies held for coalescing were invisible to the reconcile: with the queues, the delayed
store and the outbox empty it took the connection for idle and reset its backlog counters, so
the ingest admitted the bound again on top of the held work.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis

from tests.conftest import make_stack
from tests.support.fakes import FakeVoucherify
from tests.support.faultkit import FAST_ENV, Sender, delivered_ids, write_connections
from tests.support.processes import wait_until

pytestmark = pytest.mark.integration
pytest_plugins = ["tests.support.private_redis"]

HOLD_SECONDS = 8


@pytest.fixture
def voucherify(tmp_path: Path) -> Iterator[FakeVoucherify]:
    with FakeVoucherify(log_dir=tmp_path / "fakes") as fake:
        yield fake


def test_upserts_in_the_hold_window_keep_their_backlog_through_reconciles(
    tmp_path: Path, private_redis: str, stack_factory: list, voucherify: FakeVoucherify
) -> None:
    fewer = f"coalesce_window_seconds = {HOLD_SECONDS}\nbulk_calls_per_hour = 0\n"
    config = write_connections(tmp_path, voucherify, fewer_calls=fewer)
    env = {**FAST_ENV, "CONNECTOR_BACKLOG_RECONCILE_SECONDS": "0.5"}
    stack = make_stack(stack_factory, tmp_path, private_redis, config, **env)
    stack.web()
    stack.worker("w1", concurrency=4)
    stack.scheduler()
    client = redis.Redis.from_url(private_redis)
    sender = Sender(stack.web_url)
    identifies = [
        {
            "type": "identify",
            "messageId": f"held-{i}",
            "userId": f"held-user-{i}",
            "traits": {"name": f"N{i}"},
        }
        for i in range(5)
    ]
    assert sender.batch(identifies) == 200
    wait_until(lambda: client.zcard("connector:holds:acme") == 5, timeout=10, what="five customers held")

    # Several reconcile rounds (4 s, every 0.5 s) while they are held: the counter keeps them.
    for _ in range(8):
        assert int(client.get("connector:backlog:acme") or 0) == 5
        assert voucherify.requests(path="/v1/customers") == []
        time.sleep(0.5)

    wanted = {f"held-{i}" for i in range(5)}
    wait_until(lambda: delivered_ids(voucherify) == wanted, timeout=30, what="the held upserts delivered")
    wait_until(
        lambda: int(client.get("connector:backlog:acme") or 0) == 0, timeout=10, what="backlog released"
    )
