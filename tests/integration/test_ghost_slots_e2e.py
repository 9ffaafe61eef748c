"""A refused grant that parks nothing reserves no parking slot (issue #19), with real processes:
gunicorn, a Celery worker, the scheduler, the ``connector`` CLI and the fake Voucherify, on a
fast quota clock (a minute lasts 12 s).

A budget's denial hands out a parking slot for the work that parks there.  ``connector map
--send`` (like the "bulk or singles?" try of every task and a schema refresh with a schema at
hand) parks nothing when denied, yet reserved a slot all the same: fresh work then waited
behind those ghosts long after the budget had room again.
"""

from __future__ import annotations

import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import make_stack
from tests.support.fakes import FakeVoucherify
from tests.support.faultkit import FAST_ENV, Sender, delivered_ids, track, write_connections
from tests.support.processes import BIN, ROOT, wait_until

pytestmark = pytest.mark.integration
pytest_plugins = ["tests.support.private_redis"]

SCALE = 0.2  # a quota minute lasts 12 s; 2 calls a minute: a parking slot every 6 s
MINUTE = 60 * SCALE


@pytest.fixture
def voucherify(tmp_path: Path) -> Iterator[FakeVoucherify]:
    with FakeVoucherify(log_dir=tmp_path / "fakes") as fake:
        yield fake


def test_refused_tries_leave_no_ghost_slots_ahead_of_fresh_work(
    tmp_path: Path, private_redis: str, stack_factory: list, voucherify: FakeVoucherify
) -> None:
    config = write_connections(tmp_path, voucherify, quota="api_calls_per_minute = 2\nshare = 1\n")
    env = {**FAST_ENV, "CONNECTOR_QUOTA_PERIOD_SCALE": str(SCALE)}
    stack = make_stack(stack_factory, tmp_path, private_redis, config, **env)
    stack.web()
    stack.worker("w1", concurrency=4)
    stack.scheduler()
    sender = Sender(stack.web_url)
    assert sender.batch([track("ghost-0"), track("ghost-1")]) == 200
    wait_until(
        lambda: delivered_ids(voucherify) == {"ghost-0", "ghost-1"}, timeout=15, what="the minute spent"
    )
    spent_at = time.time()

    # Four tries while the minute is spent: each is refused and parks nothing.  Run at once: one
    # after the other, four CLI start-ups on a loaded machine outlasted the 12 s minute.
    event = ROOT / "examples" / "segment-track.json"
    tries = [
        subprocess.Popen(
            [str(BIN / "connector"), "map", "-c", "acme", "--event", str(event), "--send"],
            env=stack.env,
            cwd=ROOT,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        for _ in range(4)
    ]
    for proc in tries:
        out, _ = proc.communicate(timeout=60)
        assert "budget is spent" in out, out
    assert time.time() < spent_at + MINUTE  # still within the spent minute

    # The minute over, the budget has room: fresh work goes at once, not behind 4 ghosts (24 s).
    time.sleep(max(0.0, spent_at + MINUTE + 0.5 - time.time()))
    sent_at = time.time()
    assert sender.batch([track("ghost-fresh")]) == 200
    wait_until(lambda: "ghost-fresh" in delivered_ids(voucherify), timeout=30, what="the fresh event")
    assert time.time() - sent_at < 8.0, time.time() - sent_at
