"""Send slots shared fairly by connections (SPEC 10): alone, a connection may use them all;
with others, its share, and a call over its share is refused at once (parked), never held."""

from __future__ import annotations

import threading
import time

from workers.delivery.fairslots import FairSlots


def test_alone_a_connection_uses_every_slot_and_waits_for_a_free_one() -> None:
    slots = FairSlots(4)
    a = slots.for_connection("a")
    assert all(a.acquire(0) for _ in range(4))
    started = time.monotonic()
    threading.Timer(0.1, a.release).start()
    assert a.acquire(1.0)  # waited for the release, not refused
    assert 0.05 < time.monotonic() - started < 0.9
    assert not a.acquire(0.05)  # full, alone: waits until the deadline


def test_with_another_connection_each_gets_its_share_and_the_excess_is_refused_at_once() -> None:
    slots = FairSlots(4)
    hog, other = slots.for_connection("hog"), slots.for_connection("other")
    assert all(hog.acquire(0) for _ in range(4))  # alone: all of them
    # Another connection arrives: it gets its share even though the hog holds every slot...
    assert other.acquire(0) and other.acquire(0)
    assert slots.in_flight("other") == 2
    # ...and the hog, over its share (2) while the other has work, is refused at once.
    started = time.monotonic()
    hog.release()
    assert not hog.acquire(5.0)
    assert time.monotonic() - started < 0.5
    hog.release()
    hog.release()  # down to 1 in flight: under its share again
    assert hog.acquire(0)
    assert not other.acquire(0)  # the other is at its share too
