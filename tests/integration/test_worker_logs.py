"""A worker's log at INFO: one line per outcome.  Celery's own two lines per task ("received",
"succeeded in ...") are DEBUG lines (connector/logs.py), shown with ``LOG_LEVEL=DEBUG``; a real
worker (the Procfile's ``--loglevel INFO``) against the fake Voucherify."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import make_stack
from tests.support.fakes import FakeVoucherify
from tests.support.faultkit import FAST_ENV, Sender, delivered_ids, outcome_lines, track, write_connections
from tests.support.processes import wait_until

pytestmark = pytest.mark.integration

EVENTS = 4  # one task each


@pytest.fixture
def voucherify(tmp_path: Path) -> Iterator[FakeVoucherify]:
    with FakeVoucherify(log_dir=tmp_path / "fakes") as fake:
        yield fake


def celery_task_lines(log: str) -> dict[str, list[dict]]:
    found: dict[str, list[dict]] = {"received": [], "succeeded": []}
    for line in log.splitlines():
        if not line.startswith("{"):
            continue
        record = json.loads(line)
        message = str(record.get("message", ""))
        if message.startswith("Task ") and message.endswith("] received"):
            found["received"].append(record)
        elif message.startswith("Task ") and "] succeeded in " in message:
            found["succeeded"].append(record)
    return found


@pytest.mark.parametrize("level", ["INFO", "DEBUG"])
def test_one_line_per_outcome_at_info_and_celery_task_lines_at_debug(
    tmp_path: Path, redis_url: str, stack_factory: list, voucherify: FakeVoucherify, level: str
) -> None:
    config = write_connections(tmp_path, voucherify)
    stack = make_stack(stack_factory, tmp_path, redis_url, config, **FAST_ENV, LOG_LEVEL=level)
    stack.web()
    worker = stack.worker()
    sender = Sender(stack.web_url)
    ids = [f"log-{level.lower()}-{i}" for i in range(EVENTS)]
    for message_id in ids:  # one batch, one task each
        assert sender.batch([track(message_id)]) == 200
    wait_until(lambda: delivered_ids(voucherify) >= set(ids), timeout=30, what="every event delivered")
    wait_until(
        lambda: {r.get("message_id") for r in outcome_lines(worker.log(), "delivered")} >= set(ids),
        timeout=10,
        what="an outcome line per event",
    )
    chatter = celery_task_lines(worker.log())
    if level == "INFO":
        assert chatter == {"received": [], "succeeded": []}, chatter
    else:
        # Every task's two lines, at DEBUG, once the outcomes are logged (success comes after).
        wait_until(
            lambda: all(len(v) >= EVENTS for v in celery_task_lines(worker.log()).values()),
            timeout=10,
            what="Celery's received and succeeded lines at DEBUG",
        )
        chatter = celery_task_lines(worker.log())
        assert {r["level"] for lines in chatter.values() for r in lines} == {"debug"}
