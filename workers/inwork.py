"""A worker process's bound on the events it works on at once (issue #19: memory is a budget).

A gevent worker runs ``--concurrency`` tasks at once (the Procfile's 100), and each message
holds up to a batch of events.  Unbounded, one process draining a backlog maps, holds and sends
100 messages x 100 events together: ~10,000 events, each with its decoded fields, its items,
its request and its trace records until the task's end (measured: ~14 KB an event, 340 MB of
RSS).  The sends themselves never needed that many: ``CONNECTOR_WORKER_INFLIGHT`` (100) calls
are on the wire at once, and a few thousand events in work keep every send slot busy.

So a task takes its events' weight from this gate before it starts (before its context, its
mapping, its time budget) and gives it back when it ends; a task whose weight does not fit
waits, in arrival order (no task is overtaken for long by smaller ones).  What a waiting task
holds is its message as Celery decoded it, nothing more, and its message is still
unacknowledged: it is acknowledged late, when its work is done, as any task's.

The wait is bounded so that a waiting message never outlives the broker's visibility timeout
(which would hand it to another worker while this one still holds it): past ``max_wait`` the
task starts anyway, over the bound (counted in :attr:`EventGate.overruns`).  A task heavier
than the whole bound enters alone.  A stopping worker wakes its waiters at once; they give their
messages back untouched (:mod:`workers.pipeline`).
"""

from __future__ import annotations

import contextlib
import threading
from collections import deque
from collections.abc import Iterator

from workers.delivery import shutdown


class EventGate:
    """``limit`` events in work at once in this process (0: no bound).  Thread- and
    greenlet-safe (threading's primitives are gevent's once the worker is patched)."""

    def __init__(self, limit: int) -> None:
        self.limit = max(0, int(limit))
        self.in_work = 0  # events of the tasks past the gate
        self.peak = 0  # the most that ever were (tests)
        self.overruns = 0  # tasks that entered over the bound after waiting max_wait
        self._lock = threading.Lock()
        self._queue: deque[tuple[int, threading.Event]] = deque()
        shutdown.on_stop(self._wake_all)

    @contextlib.contextmanager
    def held(self, events: int, max_wait: float) -> Iterator[None]:
        """Past the gate for the ``with`` block: ``events`` of the bound taken, given back at
        its end (also on an exception)."""
        weight = self._enter(events, max_wait)
        try:
            yield
        finally:
            self._leave(weight)

    def _enter(self, events: int, max_wait: float) -> int:
        if self.limit <= 0 or events <= 0:
            return 0
        weight = min(int(events), self.limit)  # heavier than the bound: it enters alone
        ticket = (weight, threading.Event())
        with self._lock:
            if shutdown.stopping():
                return 0  # the task gives its message back at once: nothing to wait for
            if not self._queue and self._fits(weight):
                self._take(weight)
                return weight
            # Queued under the lock after the flag was read: a stop beginning now wakes it.
            self._queue.append(ticket)
        ticket[1].wait(max(0.0, max_wait))
        with self._lock:
            if ticket not in self._queue:
                return weight  # admitted: _admit took the weight for it (even at the time-out)
            # Out of time or stopping: leave the line and enter as it is -- a stopping task
            # gives its message back at once; a late one must not outlive the visibility timeout.
            self._queue.remove(ticket)
            if not shutdown.stopping():
                self.overruns += 1
            self._take(weight)
            self._admit()  # it may have blocked smaller ones behind it
            return weight

    def _leave(self, weight: int) -> None:
        if not weight:
            return
        with self._lock:
            self.in_work -= weight
            self._admit()

    def _fits(self, weight: int) -> bool:
        return self.in_work == 0 or self.in_work + weight <= self.limit

    def _take(self, weight: int) -> None:
        self.in_work += weight
        self.peak = max(self.peak, self.in_work)

    def _admit(self) -> None:
        # In arrival order: the head enters when it fits, then the next one (under the lock).
        while self._queue and self._fits(self._queue[0][0]):
            weight, event = self._queue.popleft()
            self._take(weight)
            event.set()

    def _wake_all(self) -> None:
        with self._lock:
            waiting = list(self._queue)
        for _, event in waiting:
            event.set()

    def waiting(self) -> int:
        with self._lock:
            return len(self._queue)


def max_wait_seconds(visibility_timeout: float, task_budget: float) -> float:
    """How long a task may wait at the gate: its message, taken when it arrived, must be done
    (the wait, then at most its time budget and a call) well inside the visibility timeout."""
    return max(1.0, visibility_timeout / 2 - task_budget)
