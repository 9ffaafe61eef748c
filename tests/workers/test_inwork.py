"""A worker process's bound on events in work at once (workers.inwork, issue #19): tasks past
the gate never hold more than the bound together; the others wait in arrival order; a wait is
bounded (the message must not outlive the visibility timeout); a stop wakes every waiter."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator

import pytest

from workers.delivery import shutdown
from workers.inwork import EventGate, max_wait_seconds


@pytest.fixture(autouse=True)
def _running() -> Iterator[None]:
    shutdown.reset()
    yield
    shutdown.reset()


def _task(gate: EventGate, events: int, order: list[int], name: int, hold: float, wait: float = 5.0) -> None:
    with gate.held(events, wait):
        order.append(name)
        time.sleep(hold)


def test_tasks_past_the_gate_never_hold_more_events_than_the_bound() -> None:
    gate = EventGate(300)
    order: list[int] = []
    threads = [threading.Thread(target=_task, args=(gate, 100, order, i, 0.05)) for i in range(12)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(10)
    assert sorted(order) == list(range(12))  # every task ran
    assert gate.peak == 300  # three messages of 100 at once, never a fourth
    assert gate.in_work == 0 and gate.overruns == 0


def test_waiters_enter_in_arrival_order_and_a_small_one_does_not_overtake_a_big_one() -> None:
    gate = EventGate(100)
    order: list[int] = []
    first = threading.Thread(target=_task, args=(gate, 60, order, 0, 0.3))
    first.start()
    time.sleep(0.05)
    big = threading.Thread(target=_task, args=(gate, 95, order, 1, 0.1))
    big.start()
    time.sleep(0.05)
    small = threading.Thread(target=_task, args=(gate, 10, order, 2, 0.0))  # would fit beside the first
    small.start()
    for thread in (first, big, small):
        thread.join(5)
    assert order == [0, 1, 2]
    assert gate.peak <= 100


def test_a_task_heavier_than_the_bound_enters_alone() -> None:
    gate = EventGate(50)
    with gate.held(500, 1.0):
        assert gate.in_work == 50
    with gate.held(10, 0.0):
        assert gate.in_work == 10


def test_a_wait_is_bounded_then_the_task_enters_over_the_bound_and_it_is_counted() -> None:
    gate = EventGate(100)
    with gate.held(100, 0.0):
        started = time.monotonic()
        with gate.held(100, 0.2):
            assert 0.15 < time.monotonic() - started < 2.0
            assert gate.in_work == 200
    assert gate.overruns == 1 and gate.in_work == 0 and gate.waiting() == 0


def test_a_stop_wakes_every_waiter_at_once() -> None:
    gate = EventGate(100)
    woke: list[float] = []

    def waiter() -> None:
        started = time.monotonic()
        with gate.held(100, 30.0):
            woke.append(time.monotonic() - started)

    with gate.held(100, 0.0):
        threads = [threading.Thread(target=waiter) for _ in range(3)]
        for thread in threads:
            thread.start()
        time.sleep(0.1)
        assert gate.waiting() == 3
        shutdown.begin()
        for thread in threads:
            thread.join(5)
    assert len(woke) == 3 and max(woke) < 5.0
    assert gate.overruns == 0  # a stop is not an overrun: those tasks give their messages back
    with gate.held(100, 30.0):  # once stopping, nothing waits at all
        pass


def test_no_bound_and_no_events_never_wait() -> None:
    unbounded = EventGate(0)
    with unbounded.held(10_000, 30.0), unbounded.held(10_000, 30.0):
        assert unbounded.in_work == 0
    gate = EventGate(10)
    with gate.held(10, 0.0), gate.held(0, 30.0):
        assert gate.in_work == 10


def test_the_wait_ends_well_inside_the_visibility_timeout() -> None:
    assert max_wait_seconds(120, 20) == 40  # then at most the task's 20 s and a call: ~70 s < 120
    assert max_wait_seconds(10, 20) == 1.0
