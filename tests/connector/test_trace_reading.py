"""How ``connector trace`` and the status page read a trace (issue #23's readability items):
the "received" line is stamped when the web accepted the event, never after; a failed outcome
that is tried again says so instead of reading as final."""

from __future__ import annotations

from typing import Any

import redis

from connector import overview, trace, tracereader
from connector.keys import Keys
from connector.tuning import TraceOptions

KEYS = Keys("t:")
ACCEPTED = 1_764_495_061.400  # 2025-11-30T09:31:01.400Z


def _journey() -> list[dict[str, Any]]:
    """As a worker writes them: the received record when it takes the event, 1.5 s after the web
    accepted it (``at``), then the mapping, a 503, its retry wait, the 200."""
    taken = ACCEPTED + 1.5
    return [
        {"t": taken, "kind": "received", "door": "tracking_api", "connection": "c1", "at": ACCEPTED},
        {"t": taken, "kind": "mapping", "matched": ["Track Event"], "requests": ["POST /v1/events"]},
        {"t": taken + 0.01, "kind": "attempt", "method": "POST", "path": "/v1/events", "status": 503},
        {"t": taken + 0.02, "kind": "outcome", "outcome": overview.FAILED, "status": 503},
        {"t": taken + 0.02, "kind": "wait", "reason": "retry", "until": taken + 2.02},
        {"t": taken + 2.1, "kind": "attempt", "method": "POST", "path": "/v1/events", "status": 200},
        {"t": taken + 2.1, "kind": "outcome", "outcome": overview.DELIVERED, "status": 200},
    ]


def _stamps(text: str) -> list[str]:
    return [line.split()[0] for line in text.splitlines()[1:]]


def test_received_is_stamped_when_accepted_and_the_lines_read_in_order() -> None:
    text = tracereader.render("m-1", _journey())
    lines = text.splitlines()
    assert "received" in lines[1] and lines[1].split()[0] == "2025-11-30T09:31:01.400Z", text
    assert "accepted at" not in text  # the stamp is the acceptance: said once
    stamps = _stamps(text)
    assert stamps == sorted(stamps), text  # ISO 8601 in UTC sorts as time does
    assert tracereader.rows(_journey())[0]["when"] == "2025-11-30T09:31:01.400Z"
    # The web's clock ahead of the worker's: never stamped after the worker wrote it.
    ahead = {"t": ACCEPTED, "kind": "received", "at": ACCEPTED + 0.2}
    assert tracereader.stamp(ahead) == ACCEPTED


def test_received_sorts_first_when_read_back_from_redis(redis_url: str) -> None:
    """Written by a worker whose mapping line lands in the same millisecond as its received one,
    or a rejected event (no ``at``): the order is the steps' order."""
    client = redis.Redis.from_url(redis_url)
    recorder = trace.Recorder(KEYS, TraceOptions())
    recorder.received("m-2", connection="c1", direction="d", door="tracking_api", at=ACCEPTED)
    recorder.mapping("m-2", requests=["POST /v1/events"])
    recorder.flush(client)
    records = tracereader.read(client, KEYS, "c1", "m-2")
    assert [r["kind"] for r in records] == ["received"]  # no connection for the bare mapping
    recorder = trace.Recorder(KEYS, TraceOptions(), connection="c1")
    recorder.mapping("m-2", requests=["POST /v1/events"])
    recorder.outcome(["m-2"], connection="c1", outcome=overview.DELIVERED, status=200)
    recorder.flush(client)
    records = tracereader.read(client, KEYS, "c1", "m-2")
    assert [r["kind"] for r in records] == ["received", "mapping", "outcome"]
    rows = tracereader.rows(records)
    assert rows[0]["when"] == tracereader.when(ACCEPTED)
    assert [r["when"] for r in rows] == sorted(r["when"] for r in rows)


def test_a_failed_outcome_that_is_retried_reads_as_not_final() -> None:
    text = tracereader.render("m-1", _journey())
    failed = next(line for line in text.splitlines() if "outcome" in line and "failed" in line)
    assert "failed (will retry at 2025-11-30T09:31:04.920Z)" in failed, text
    assert text.splitlines()[0] == "trace m-1: delivered"
    # Without its wait (cut by the steps' cap, or still being written): still not final.
    without_wait = [r for r in _journey() if r["kind"] != "wait"]
    assert "failed (will be retried)" in tracereader.render("m-1", without_wait)
    # The status page shows the same lines.
    assert any("will retry at" in row["text"] for row in tracereader.rows(_journey()))


def test_a_held_wait_says_held_until_the_window_ends() -> None:
    record = {"t": ACCEPTED, "kind": "wait", "reason": "held", "until": ACCEPTED + 5}
    assert tracereader.describe(record).startswith("held until 2025-11-30T09:31:06.400Z")
