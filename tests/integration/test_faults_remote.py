"""The fake Voucherify misbehaving, with real processes (SPEC 5 retries, dead letters; SPEC 9).

- a 503 storm, 429 with ``Retry-After``, 429 with ``X-Rate-Limit-Retry``, read timeouts and a
  body that stalls: every event delivered once, and no retry earlier than the server asked
  (checked on the fake's own clock: the time each request arrived);
- a 400: dead-lettered at once with the response kept (``connector dlq list/show --json`` as
  an operator runs them); after the fault is gone ``connector dlq replay`` delivers it once, with
  the same ``Idempotency-Key``.
"""

from __future__ import annotations

import itertools
import json
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import make_stack
from tests.support.fakes import FakeVoucherify
from tests.support.faultkit import (
    FAST_ENV,
    Sender,
    by_key,
    calls,
    connector_cli,
    dead_letters,
    delivered_ids,
    idem_key,
    key_of,
    track,
    wait_quiet,
    write_connections,
)
from tests.support.processes import Stack, wait_until

pytestmark = pytest.mark.integration
pytest_plugins = ["tests.support.private_redis"]  # the private_redis fixture

READ_TIMEOUT = 1.0
ENV = {**FAST_ENV, "CONNECTOR_READ_TIMEOUT": str(READ_TIMEOUT)}
EVENTS = "/v1/events"


@pytest.fixture
def voucherify(tmp_path: Path) -> Iterator[FakeVoucherify]:
    with FakeVoucherify(log_dir=tmp_path / "fakes") as fake:
        yield fake


@pytest.fixture
def stack(tmp_path: Path, private_redis: str, stack_factory: list, voucherify: FakeVoucherify) -> Stack:
    stack = make_stack(stack_factory, tmp_path, private_redis, write_connections(tmp_path, voucherify), **ENV)
    stack.web()
    stack.worker(concurrency=8)
    stack.scheduler()
    return stack


def attempts(fake: FakeVoucherify, message_id: str) -> list[dict[str, Any]]:
    return by_key(calls(fake, EVENTS)).get(key_of(message_id), [])


def deliver(stack: Stack, fake: FakeVoucherify, message_id: str, timeout: float = 60) -> list[dict[str, Any]]:
    """Send one track call and wait until a call for it is answered in time with a 2xx."""
    assert Sender(stack.web_url).one(track(message_id)).status_code == 200
    wait_until(
        lambda: any(answered_ok(r) for r in attempts(fake, message_id)), timeout=timeout, what=message_id
    )
    return attempts(fake, message_id)


def answered_ok(record: dict[str, Any]) -> bool:
    """A 2xx the connector received (not one it had given up waiting for)."""
    return 200 <= record["status"] < 300 and record["duration_ms"] < READ_TIMEOUT * 1000


def test_5xx_storm_429s_and_timeouts_each_delivered_once_after_the_requested_wait(
    stack: Stack, voucherify: FakeVoucherify, private_redis: str
) -> None:
    # 1. A 503 storm: every call fails for a few seconds, then the service is back.
    voucherify.set_faults(path=EVENTS, statuses=[503], then=503)
    sender = Sender(stack.web_url)
    storm = [track(f"storm-{i:02d}") for i in range(40)]
    assert sender.batch(storm) == 200
    # Every event of the storm met it: while no answer of the window has told the quota's state,
    # only a probe's 2 calls are out at once (SPEC 13), so 40 calls are not 40 events.
    wait_until(
        lambda: all(attempts(voucherify, e["messageId"]) for e in storm), timeout=60, what="the storm hit"
    )
    time.sleep(3)
    voucherify.reset_faults()
    wait_until(
        lambda: delivered_ids(voucherify, EVENTS) >= set(sender.accepted), timeout=60, what="after storm"
    )
    for event in storm:
        statuses = [r["status"] for r in attempts(voucherify, event["messageId"])]
        assert statuses[-1] == 200 and statuses.count(200) == 1, statuses
        assert set(statuses[:-1]) == {503} and len(statuses) >= 2, statuses

    # 2. 429 with Retry-After (seconds): the retry comes no earlier.
    voucherify.set_faults(path=EVENTS, statuses=[429], headers={"Retry-After": "3"})
    first, retry = deliver(stack, voucherify, "retry-after")
    assert (first["status"], retry["status"]) == (429, 200)
    assert retry["time"] >= first["time"] + 3.0, retry["time"] - first["time"]

    # 3. 429 with X-Rate-Limit-Retry (epoch seconds): no retry before that second.
    retry_at = int(time.time()) + 4
    voucherify.set_faults(path=EVENTS, statuses=[429], headers={"X-Rate-Limit-Retry": str(retry_at)})
    first, retry = deliver(stack, voucherify, "rate-limit-retry")
    assert (first["status"], retry["status"]) == (429, 200)
    assert retry["time"] >= retry_at, retry["time"] - retry_at

    # 4. Read timeouts: the fake answers after the connector stopped waiting, twice.
    voucherify.set_faults(path=EVENTS, statuses=[200, 200], latency_ms=READ_TIMEOUT * 1000 + 1500)
    deliver(stack, voucherify, "read-timeout")
    wait_quiet(voucherify, seconds=READ_TIMEOUT + 2)  # the abandoned calls are recorded when they end
    records = attempts(voucherify, "read-timeout")
    assert [answered_ok(r) for r in records] == [False, False, True], records
    assert all(r["duration_ms"] >= READ_TIMEOUT * 1000 for r in records[:2])
    # Each retry waited at least the backoff's base after the previous attempt timed out.
    base = float(ENV["CONNECTOR_RETRY_BASE_SECONDS"])
    for before, after in itertools.pairwise(records):
        assert after["time"] >= before["time"] + READ_TIMEOUT + base

    # 5. A body that stalls after its first byte: bounded, retried, delivered once more.
    # The fake records a stalled answer as a quick 200: the retry is what shows the connector
    # gave up reading it.  That one extra call is the only duplicate the test allows.
    voucherify.set_faults(path=EVENTS, statuses=[200], body_delay_ms=(READ_TIMEOUT * 3 + 2) * 1000)
    assert sender.one(track("slow-body")).status_code == 200
    wait_until(lambda: len(attempts(voucherify, "slow-body")) >= 2, timeout=60, what="slow-body retry")
    wait_quiet(voucherify, seconds=3)  # a third call, if there were one, shows up by now
    slow = attempts(voucherify, "slow-body")
    assert len(slow) == 2, [(r["seq"], r["status"], r["time"]) for r in slow]
    stalled, retry = slow
    assert (stalled["status"], retry["status"]) == (200, 200)
    # Bounded: given up within connect + 2 x read timeout (plus scheduling), not after the body.
    assert retry["time"] - stalled["time"] < READ_TIMEOUT * 3 + 2

    # All of it: each event answered 2xx (in time) exactly once -- the stalled answer (known by
    # the fake's sequence number, not by identity of a freshly decoded dict) aside; nothing
    # dead-lettered.
    ok = Counter(
        idem_key(r) for r in calls(voucherify, EVENTS) if answered_ok(r) and r["seq"] != stalled["seq"]
    )
    expected = {key_of(e["messageId"]) for e in storm} | {
        key_of(m) for m in ("retry-after", "rate-limit-retry", "read-timeout", "slow-body")
    }
    assert set(ok) == expected and len(expected) == 40 + 4
    assert [k for k, n in ok.items() if n != 1] == []
    assert dead_letters(private_redis) == []


def cli_json(env: dict[str, str], *args: str) -> Any:
    done = connector_cli(env, *args, "--json")
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)


def test_400_is_dead_lettered_at_once_and_replay_delivers_it_once(
    stack: Stack, voucherify: FakeVoucherify, private_redis: str
) -> None:
    voucherify.set_faults(path=EVENTS, statuses=[400], then=400)
    sender = Sender(stack.web_url)
    assert sender.one(track("bad-one")).status_code == 200
    wait_until(lambda: dead_letters(private_redis), timeout=30, what="the dead letter")

    listed = cli_json(stack.env, "dlq", "list")
    assert len(listed) == 1
    (entry,) = listed
    assert entry["reason"] == "rejected" and entry["status"] == 400
    shown = cli_json(stack.env, "dlq", "show", entry["id"])
    assert shown["connection_id"] == "acme"
    assert shown["status"] == 400 and shown["attempts"] == 1
    assert shown["idempotency_key"] == key_of("bad-one")
    assert "injected by the fake's fault script" in shown["response_excerpt"]  # the response, kept
    assert [h["status"] for h in shown["history"]] == [400]
    assert shown["payload"]["messageId"] == "bad-one"
    # Dead-lettered at once: one call, no retries.
    time.sleep(2)
    assert [r["status"] for r in attempts(voucherify, "bad-one")] == [400]

    voucherify.reset_faults()
    replayed = cli_json(stack.env, "dlq", "replay", entry["id"])
    assert replayed["replayed"] == [entry["id"]]
    wait_until(lambda: delivered_ids(voucherify, EVENTS) == {"bad-one"}, timeout=30, what="the replay")
    wait_quiet(voucherify, seconds=3)
    assert [r["status"] for r in attempts(voucherify, "bad-one")] == [400, 200]
    assert cli_json(stack.env, "dlq", "list") == []
