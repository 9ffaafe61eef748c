"""The worker's consumer loop without Celery's 2 s blind spot (a gevent or threads pool).

Celery's blocking loop (``celery.worker.loops.synloop``, the one a pool without an event hub
runs) waits up to 2 s in ``drain_events`` per turn.  While every prefetch slot is taken the
channel has no BRPOP out, so a slot freed during that wait is noticed only when it ends: tasks
published meanwhile sit in the queue up to 2 s.  Measured with quota waits on a fast clock (a
"minute" of 3 s): work due at a window's start reached the worker up to 2 s late, and whole
windows went by with a third of the budget spent.  :class:`Consumer` runs the same loop with
each wait capped at :data:`DRAIN_SECONDS`: a freed slot asks the broker for work within that.
"""

from __future__ import annotations

from typing import Any

from celery.worker import loops
from celery.worker.consumer import Consumer as _CeleryConsumer

DRAIN_SECONDS = 0.1


class _CappedDrain:
    """The consumer's connection, its ``drain_events`` waiting at most ``DRAIN_SECONDS``."""

    def __init__(self, connection: Any) -> None:
        self._connection = connection

    def drain_events(self, timeout: float | None = None, **kwargs: Any) -> Any:
        wait = DRAIN_SECONDS if timeout is None else min(timeout, DRAIN_SECONDS)
        return self._connection.drain_events(timeout=wait, **kwargs)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._connection, name)


def synloop(obj: Any, connection: Any, *args: Any, **kwargs: Any) -> Any:
    return loops.synloop(obj, _CappedDrain(connection), *args, **kwargs)


class Consumer(_CeleryConsumer):
    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        loop: Any = getattr(self, "loop", None)
        if loop is loops.synloop:
            self.loop = synloop
