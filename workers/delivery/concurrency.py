"""Run independent chains of work concurrently: greenlets under ``-P gevent``, threads otherwise.

The work is I/O (HTTP calls, Redis round trips), so concurrency, not parallelism, is what makes
one worker process deliver hundreds of events per second.  Under gevent's monkey-patching a
greenlet pool is nearly free; without it (tests, ``-P prefork``/``threads``) a process-wide
thread pool is reused across tasks instead of created per task.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import TypeVar

T = TypeVar("T")
R = TypeVar("R")

_executor: ThreadPoolExecutor | None = None
_executor_size = 0
_lock = threading.Lock()


def gevent_active() -> bool:
    try:
        from gevent import monkey
    except ImportError:  # pragma: no cover - gevent is a dependency, but stay usable without it
        return False
    return bool(monkey.is_module_patched("socket"))


def _threads(size: int) -> ThreadPoolExecutor:
    global _executor, _executor_size
    with _lock:
        if _executor is None or _executor_size < size:
            old = _executor
            _executor = ThreadPoolExecutor(max_workers=size, thread_name_prefix="delivery")
            _executor_size = size
            if old is not None:
                old.shutdown(wait=False)
        return _executor


def run_all(fn: Callable[[T], R], work: Sequence[T], limit: int) -> list[R]:
    """``[fn(w) for w in work]``, at most ``limit`` at a time; results in input order.

    An exception from any call propagates (after the others finished, with threads).
    """
    if len(work) <= 1 or limit <= 1:
        return [fn(w) for w in work]
    size = min(limit, len(work))
    if gevent_active():
        from gevent.pool import Pool

        return list(Pool(size).map(fn, work))
    return list(_threads(limit).map(fn, work))
