"""A worker process's send slots towards one target system, shared fairly by connections (SPEC 10).

``CONNECTOR_WORKER_INFLIGHT`` calls may be in flight per system and process.  Alone, a connection
may use them all (and waits for a free one, as before).  While other connections have work too
(a call in flight, or asked for a slot in the last ``ACTIVE_SECONDS``), each may hold at most its
fair share, ``inflight // active connections``; a call over its share is NOT made to wait in a
greenlet (a connection whose Voucherify hangs would keep its tasks, and so the worker's task
slots, busy): it is refused at once and the engine parks it in the delayed store, due at once,
to come back through the scheduler.  A connection already over its share when others arrive
keeps its calls in flight (they end by the read timeout at the latest) and gets no more until
it is back under its share.
"""

from __future__ import annotations

import threading
import time

from workers.delivery import shutdown

ACTIVE_SECONDS = 1.0


class FairSlots:
    def __init__(self, total: int) -> None:
        self.total = max(1, total)
        self._cond = threading.Condition()
        self._inflight: dict[str, int] = {}
        self._asked: dict[str, float] = {}  # monotonic time of each connection's last ask
        # A stopping worker sends nothing new: every waiter gives up at once (and parks its call).
        shutdown.on_stop(self._wake_all)

    def for_connection(self, connection_id: str) -> ConnectionSlots:
        return ConnectionSlots(self, connection_id)

    def _active(self, mono: float) -> int:
        return sum(
            1
            for conn, asked in self._asked.items()
            if self._inflight.get(conn, 0) > 0 or mono - asked < ACTIVE_SECONDS
        )

    def in_flight(self, connection_id: str) -> int:
        with self._cond:
            return self._inflight.get(connection_id, 0)

    def acquire(self, connection_id: str, timeout: float) -> bool:
        deadline = time.monotonic() + max(0.0, timeout)
        with self._cond:
            while True:
                if shutdown.stopping():
                    return False
                mono = time.monotonic()
                self._asked[connection_id] = mono
                active = max(1, self._active(mono))
                mine = self._inflight.get(connection_id, 0)
                used = sum(self._inflight.values())
                share = max(1, self.total // active)
                if mine < share and (used < self.total or active > 1):
                    self._inflight[connection_id] = mine + 1
                    return True
                if active > 1 and mine >= share:
                    # Over its share while others have work: park, do not hold.  A release woke
                    # this waiter: pass the wake-up on to another one.
                    self._cond.notify(1)
                    return False
                left = deadline - mono
                if left <= 0:
                    return False
                self._cond.wait(min(left, ACTIVE_SECONDS))

    def release(self, connection_id: str) -> None:
        with self._cond:
            self._inflight[connection_id] = max(0, self._inflight.get(connection_id, 0) - 1)
            # One waiter, not all: thousands of greenlets may wait (a herd woken on every release
            # would burn the worker's CPU).
            self._cond.notify(1)

    def _wake_all(self) -> None:
        with self._cond:
            self._cond.notify_all()


class ConnectionSlots:
    """One connection's view of the process's slots (what the engine holds per call)."""

    def __init__(self, slots: FairSlots, connection_id: str) -> None:
        self.slots = slots
        self.connection_id = connection_id

    def acquire(self, timeout: float) -> bool:
        return self.slots.acquire(self.connection_id, timeout)

    def release(self) -> None:
        self.slots.release(self.connection_id)
