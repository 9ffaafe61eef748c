"""Merging the same Redis call of concurrent greenlets into one round trip.

Every delivery does the same small Redis steps (claim its idempotency key, record it done).
Under ``-P gevent`` a worker has tens of deliveries at the same step at once; sent one by one,
each step is a round trip and a full trip through redis-py (connection checkout, command
packing, a socket write and read, reply parsing) per event.  A :class:`Coalescer` collects the
calls made while the event loop is busy (every greenlet woken in the same loop iteration) and
runs them as ONE batch call -- a Lua script over many keys, or a pipeline -- in a greenlet of its
own; each caller then gets its own result, or the batch's exception.

Semantics per item stay exactly those of the single call: a caller still waits until its own
step is done in Redis before going on (a claim is held before the send, a delivery is recorded
before the item is reported).  Only the round trip is shared.  Without gevent (threads, tests)
a call simply runs alone.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any, Generic, TypeVar

from workers.delivery.concurrency import gevent_active

A = TypeVar("A")
R = TypeVar("R")

MAX_BATCH = 256


class Coalescer(Generic[A, R]):
    """``call(arg)`` runs ``run_batch([arg, ...])`` for the calls of one loop iteration."""

    def __init__(self, run_batch: Callable[[list[A]], list[R]], max_batch: int = MAX_BATCH) -> None:
        self._run_batch = run_batch
        self._max_batch = max_batch
        self._pending: list[tuple[A, Any]] = []
        self._scheduled = False
        self._lock = threading.Lock()
        self._gevent: bool | None = None  # known at the first call (patching happens at start)

    def __call__(self, arg: A) -> R:
        if self._gevent is None:
            self._gevent = gevent_active()
        if not self._gevent:
            return self._run_batch([arg])[0]
        from gevent.event import AsyncResult

        waiter: AsyncResult = AsyncResult()
        with self._lock:
            self._pending.append((arg, waiter))
            if not self._scheduled:
                self._scheduled = True
                import gevent

                # Started on the next loop iteration: after every greenlet woken in this one.
                gevent.spawn(self._flush)
        result: R = waiter.get()
        return result

    def _flush(self) -> None:
        try:
            while True:
                with self._lock:
                    batch = self._pending[: self._max_batch]
                    self._pending = self._pending[self._max_batch :]
                    if not batch:
                        self._scheduled = False
                        return
                try:
                    results = self._run_batch([arg for arg, _ in batch])
                except BaseException as exc:  # handed to every caller of the batch
                    for _, waiter in batch:
                        waiter.set_exception(exc)
                    if not isinstance(exc, Exception):
                        raise
                    continue
                for (_, waiter), result in zip(batch, results, strict=True):
                    waiter.set(result)
        except BaseException:
            # This greenlet was killed: whoever is still waiting gets a new one.
            with self._lock:
                self._scheduled = bool(self._pending)
                if self._scheduled:
                    import gevent

                    gevent.spawn(self._flush)
            raise
