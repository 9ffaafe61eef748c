"""Fairness between connections on one worker (SPEC 10): one connection's hanging Voucherify
cannot hold more than its share of the worker's send slots while another has work.

Two connections, one worker process with 10 send slots.  The first one's Voucherify answers after
8 s (it hangs) and has a large backlog, and holds every slot when the second one's work arrives;
the second one's Voucherify answers at once.  The second connection's 100 events are delivered
within a few seconds, before the first one's hanging calls have even answered.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import make_stack
from tests.support.fakes import FakeVoucherify
from tests.support.faultkit import FAST_ENV, UNLIMITED, auth, delivered_ids, track
from tests.support.processes import wait_until

pytestmark = pytest.mark.integration
pytest_plugins = ["tests.support.private_redis"]


@pytest.fixture
def fakes(tmp_path: Path) -> Iterator[tuple[FakeVoucherify, FakeVoucherify]]:
    with (
        FakeVoucherify(log_dir=tmp_path / "slow") as slow,
        FakeVoucherify(log_dir=tmp_path / "fast") as fast,
    ):
        slow.set_faults(latency_ms=8000)
        yield slow, fast


def connection(cid: str, key: str, url: str) -> str:
    return f"""
[[connection]]
id = "{cid}"
write_keys = ["{key}"]
[connection.voucherify]
app_id = "test-vf-app-id"
secret_key = "test-vf-secret-key"
region = "eu"
api_url = "{url}"
{UNLIMITED}"""


def test_a_hanging_connection_does_not_hold_another_ones_deliveries(
    tmp_path: Path, private_redis: str, stack_factory: list, fakes: tuple[FakeVoucherify, FakeVoucherify]
) -> None:
    import requests

    slow, fast = fakes
    config = tmp_path / "connections.toml"
    config.write_text(
        connection("hog", "wk_fair_hog", slow.url) + connection("nice", "wk_fair_nice", fast.url)
    )
    env = {
        **FAST_ENV,
        "CONNECTOR_WORKER_INFLIGHT": "10",
        "CONNECTOR_READ_TIMEOUT": "10",
        "CONNECTOR_VISIBILITY_TIMEOUT": "40",
    }
    stack = make_stack(stack_factory, tmp_path, private_redis, config, **env)
    stack.web()
    stack.worker("w1", concurrency=60)
    stack.scheduler()

    def send(key: str, events: list[dict]) -> None:
        answer = requests.post(
            stack.web_url + "/v1/batch", json={"batch": events}, headers=auth(key), timeout=15
        )
        assert answer.status_code == 200, answer.text

    for chunk in range(10):  # 300 events of the hanging connection, in 10 requests
        send("wk_fair_hog", [track(f"hog-{chunk}-{i}") for i in range(30)])
    # The hog holds every slot of the worker (alone, it may), each call for 8 s.
    # (The fake records a call when it answers: give the hog's first calls time to go out.)
    time.sleep(1.5)
    assert slow.requests() == []
    nice = [track(f"nice-{i}") for i in range(100)]
    started = time.time()
    for chunk in range(0, 100, 20):
        send("wk_fair_nice", nice[chunk : chunk + 20])
    wait_until(
        lambda: {e["messageId"] for e in nice} <= delivered_ids(fast),
        timeout=30,
        what="the other connection's events",
    )
    took = time.time() - started
    # Near full speed: its share of the slots at once (the hog's excess calls are refused, not
    # waited for), while without fairness nothing of it would move before the hog's calls end.
    assert took < 5.0, took
    assert len(delivered_ids(slow)) <= 10  # the hog's first calls have not even answered yet
