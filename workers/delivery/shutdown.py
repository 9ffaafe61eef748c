"""A worker process's orderly stop: from the first SIGTERM on, nothing new goes on the wire.

A platform stops workers all the time (Heroku: SIGTERM on every restart and deploy, SIGKILL 30 s
later).  What a worker holds when the signal comes falls in three kinds, and each has one answer:

- a call on the wire: it finishes (its answer is recorded as usual), bounded by the read timeout;
- work taken but not sent (items of a running task, greenlets waiting for a send slot, a flush
  between two batch requests): parked in Redis, due at once, where another worker takes it
  (:func:`stopping` is checked before every call; waiting for a slot ends at once);
- messages not started: the task gives its message back to the queue untouched.

The tasks then return, their messages are acknowledged, and the process exits.  What a SIGKILL
cuts off anyway is the kill -9 case: the message stays unacknowledged and comes back after the
visibility timeout; a ledger claim of a call on the wire expires and the call is sent again.

The flag is process-wide and only ever goes from "running" to "stopping" (a stopping process
never takes work again).  ``on_stop`` callbacks let waiters (the send slots) wake at once instead
of at their next time-out.
"""

from __future__ import annotations

import threading
from collections.abc import Callable

# What a parked item waits for, in traces and metrics: the worker holding it stopped.
REASON = "stopping"

_stopping = threading.Event()
_callbacks: list[Callable[[], None]] = []
_lock = threading.Lock()


def stopping() -> bool:
    """True once the process began its orderly stop."""
    return _stopping.is_set()


def begin() -> bool:
    """Start the orderly stop; False when it had begun already (a repeated signal)."""
    with _lock:
        if _stopping.is_set():
            return False
        _stopping.set()
        callbacks = list(_callbacks)
    for callback in callbacks:
        callback()
    return True


def on_stop(callback: Callable[[], None]) -> None:
    """Call ``callback`` when the stop begins (at once if it has)."""
    with _lock:
        _callbacks.append(callback)
        late = _stopping.is_set()
    if late:
        callback()


def reset() -> None:
    """For tests only: back to "running", without callbacks."""
    with _lock:
        _stopping.clear()
        _callbacks.clear()
