# ruff: noqa: F811 - pytest fixtures imported from tests.support.delivery
"""A stopping worker (workers.delivery.shutdown, workers.stop): nothing new on the wire, what it
holds parked in Redis due at once, unstarted messages given back.  The real signals and processes
are in tests/integration/test_process_stops.py."""

from __future__ import annotations

import dataclasses
import signal
import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest
from celery.exceptions import Reject
from celery.worker import state as worker_state

from connector.keys import Keys
from tests.support.delivery import (  # noqa: F401 - fixtures
    FakeTransport,
    client,
    connection,
    keys,
    redis_db_url,
    rt,
    sent_ids,
    simple_mapper,
    transport,
)
from workers import mapped, pipeline, stop
from workers.delivery import shutdown
from workers.delivery.fairslots import FairSlots
from workers.delivery.store import DelayedStore
from workers.runtime import Runtime


@pytest.fixture(autouse=True)
def _running() -> Iterator[None]:
    shutdown.reset()
    yield
    shutdown.reset()
    worker_state.should_stop = None  # type: ignore[assignment]


def test_begin_is_once_and_wakes_what_registered() -> None:
    woken: list[str] = []
    shutdown.on_stop(lambda: woken.append("a"))
    assert not shutdown.stopping()
    assert shutdown.begin() is True
    assert shutdown.begin() is False  # a repeated signal
    assert shutdown.stopping() and woken == ["a"]
    shutdown.on_stop(lambda: woken.append("late"))  # registered after the stop: called at once
    assert woken == ["a", "late"]


def test_a_waiter_for_a_send_slot_gives_up_at_once_when_the_stop_begins() -> None:
    slots = FairSlots(1)
    assert slots.acquire("acme", timeout=1)  # the only slot, held by a call on the wire
    result: list[bool] = []
    waiter = threading.Thread(target=lambda: result.append(slots.acquire("acme", timeout=60)))
    waiter.start()
    time.sleep(0.1)
    assert result == []  # waiting
    shutdown.begin()
    waiter.join(5)
    assert result == [False], "woken, without a slot"
    assert not slots.acquire("acme", timeout=0)  # and nothing acquires one any more


def test_a_running_task_parks_what_it_has_not_sent_due_at_once(
    rt: Runtime, transport: FakeTransport, keys: Keys, monkeypatch: Any
) -> None:
    monkeypatch.setattr(mapped, "map_event", simple_mapper)
    conn = rt.settings.connections[0]
    events = [{"type": "track", "messageId": f"m{i}", "userId": f"u{i}"} for i in range(30)]
    original = transport.send

    def send_then_stop(*args: Any, **kw: Any) -> Any:
        answer = original(*args, **kw)  # the first call is on the wire when the signal comes
        shutdown.begin()
        return answer

    monkeypatch.setattr(transport, "send", send_then_stop)
    # One customer at a time: what is on the wire when the signal comes is exactly one call
    # (concurrent customers are the integration tests' business).
    rt.tuning = dataclasses.replace(rt.tuning, concurrency=1)
    pipeline.process_segment_events(rt, conn, conn.id, events)
    delivered = sent_ids(transport)
    assert delivered == ["m0"], "the call on the wire finished; nothing was started after it"
    # Everything else waits in the delayed store, due at once (claimable one second from now).
    due = DelayedStore(rt.redis, keys).claim_due(now=time.time() + 1, limit=1000)
    parked = [item["request"]["message_id"] for entry in due for item in entry.items]
    assert sorted(delivered + parked) == sorted(e["messageId"] for e in events)
    assert {entry.reason for entry in due} == {shutdown.REASON}


def test_a_message_not_started_goes_back_to_its_queue(rt: Runtime, transport: FakeTransport) -> None:
    conn = rt.settings.connections[0]
    shutdown.begin()
    with pytest.raises(Reject) as raised:
        pipeline.process_segment_events(
            rt, conn, conn.id, [{"type": "track", "messageId": "m1", "userId": "u1"}]
        )
    assert raised.value.requeue is True
    assert transport.calls == []


def test_the_first_signal_asks_celery_for_its_warm_shutdown_and_the_grace_then_cuts_off() -> None:
    exits: list[int] = []
    assert stop.begin_stop(signal.SIGTERM, grace=0.2, exit_now=exits.append) is True
    assert shutdown.stopping()
    assert worker_state.should_stop == 0  # warm: Celery takes no new message, waits for the tasks
    assert stop.begin_stop(signal.SIGINT, grace=0.2, exit_now=exits.append) is False  # changes nothing
    time.sleep(0.6)
    assert exits == [stop.EX_CUT_OFF]  # once, by the first signal's timer
