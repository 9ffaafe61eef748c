"""A bulk re-sent after its bound must not overwrite a newer upsert (issue #19), with real
processes: gunicorn, a Celery worker, the scheduler and the fake Voucherify, whose async
actions finish in order and only then apply their customers (as Voucherify's queue does).

The bound is shortened to 3 s and the fake's bulk takes 12 s: the connector sends the bulk's
customers again singly at the bound while Voucherify still runs the original.  A newer upsert
of one of them sent then was overwritten when the original finally ran.  Now it waits for the
original (watched after the bound) and lands last.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import make_stack
from tests.support.fakes import FakeVoucherify
from tests.support.faultkit import FAST_ENV, Sender, successes, write_connections
from tests.support.processes import wait_until

pytestmark = pytest.mark.integration
pytest_plugins = ["tests.support.private_redis"]

BOUND_SECONDS = 3
BULK_SECONDS = 12


@pytest.fixture
def voucherify(tmp_path: Path) -> Iterator[FakeVoucherify]:
    with FakeVoucherify(log_dir=tmp_path / "fakes") as fake:
        yield fake


def identify(mid: str, user: str, name: str, second: int) -> dict[str, Any]:
    return {
        "type": "identify",
        "messageId": mid,
        "userId": user,
        "timestamp": f"2024-05-01T10:00:{second:02d}.000Z",
        "traits": {"name": name},
    }


def name_of(fake: FakeVoucherify, source_id: str) -> str | None:
    found = [c for c in fake.customers() if c.get("source_id") == source_id]
    return found[0].get("name") if found else None


def test_a_newer_upsert_lands_after_a_bulk_resent_at_its_bound(
    tmp_path: Path, private_redis: str, stack_factory: list, voucherify: FakeVoucherify
) -> None:
    fewer = "coalesce_window_seconds = 1\nbulk_calls_per_hour = 100000\n"
    config = write_connections(tmp_path, voucherify, fewer_calls=fewer)
    env = {**FAST_ENV, "CONNECTOR_ASYNC_ACTION_BOUND_SECONDS": str(BOUND_SECONDS)}
    stack = make_stack(stack_factory, tmp_path, private_redis, config, **env)
    stack.web()
    stack.worker("w1", concurrency=8)
    stack.scheduler()
    voucherify.set_async_actions(delay_s=BULK_SECONDS)
    sender = Sender(stack.web_url)

    assert sender.batch([identify("m1", "cust-a", "A1", 1), identify("m2", "cust-b", "B1", 1)]) == 200
    wait_until(
        lambda: len(successes(voucherify, "/v1/customers/bulk/async")) == 1, timeout=15, what="the bulk"
    )
    # Past the bound: a and b are sent again singly while the original still runs.
    wait_until(
        lambda: {"A1", "B1"} <= {r["body"].get("name") for r in successes(voucherify, "/v1/customers")},
        timeout=20,
        what="the bulk's customers sent again singly",
    )
    assert sender.batch([identify("m3", "cust-a", "A2", 9)]) == 200  # newer, while the bulk runs

    # The original runs at last (applying A1); the newer upsert must land after it.
    wait_until(
        lambda: name_of(voucherify, "cust-a") == "A2" and _bulk_done(voucherify), timeout=40, what="A2"
    )
    sent_a2 = [r for r in successes(voucherify, "/v1/customers") if r["body"].get("name") == "A2"]
    assert len(sent_a2) == 1
    assert name_of(voucherify, "cust-b") == "B1"


def _bulk_done(fake: FakeVoucherify) -> bool:
    actions = fake.async_actions()
    listed = actions.get("actions") if isinstance(actions, dict) else None
    if isinstance(listed, list):
        return bool(listed) and all(a.get("status") in ("DONE", "FAILED") for a in listed)
    return True
