"""Bringing back messages of dead workers: the Redis transport's unacked sweep, run on a timer.

With the Redis broker, a message a worker took but never acknowledged (the worker was killed,
lost its machine, ...) sits in kombu's ``unacked`` hash; it goes back to its queue only when some
worker runs ``QoS.restore_visible`` and finds it older than the visibility timeout.

kombu runs that sweep from its event-loop timer -- which exists only for the prefork pool.  Our
workers run ``--pool gevent``, which uses Celery's blocking ``synloop``: there kombu calls the
sweep only when a poll comes back with nothing, but an idle BRPOP *times out* inside the read
handler (``Empty`` raised from ``handle_event``) and skips it.  Measured with kombu 5.7: a killed
worker's messages stayed unacknowledged for good while the other workers idled.  So every worker
runs the sweep itself, every ``unacked_restore_interval`` seconds, in a daemon thread (a
greenlet under gevent).  The sweep takes kombu's own mutex, so workers do not sweep together.

Safe because tasks are bounded: a task runs at most its time budget (plus one HTTP call) and a
prefetched message waits at most ``prefetch multiplier`` such tasks, all well inside the
visibility timeout, so a live worker's message is not handed out twice (and if it were, the
idempotency ledger absorbs the second run).
"""

from __future__ import annotations

import contextlib
import logging
import threading
from typing import Any

from celery import Celery

log = logging.getLogger("connector.restore")

DEFAULT_INTERVAL_SECONDS = 5.0


def sweep_once(app: Celery, connection: Any) -> None:
    channel = connection.default_channel
    qos = getattr(channel, "qos", None)
    restore = getattr(qos, "restore_visible", None)
    if restore is None:  # not the Redis transport: nothing to do
        return
    # interval=1: scan on this call (kombu's throttle counts calls).
    restore(num=getattr(channel, "unacked_restore_limit", None), interval=1)


def _loop(app: Celery, interval: float, stop: threading.Event) -> None:
    connection = None
    while not stop.wait(interval):
        try:
            if connection is None:
                connection = app.connection_for_read()
            sweep_once(app, connection)
        except Exception as exc:  # Redis away, a restart...: try again next time
            log.warning("unacked sweep failed; retrying", extra={"error": str(exc)[:200]})
            if connection is not None:
                with contextlib.suppress(Exception):  # already broken
                    connection.release()
            connection = None


def start_sweeper(app: Celery, stop: threading.Event | None = None) -> threading.Event:
    """Start the periodic sweep in a daemon thread; set the returned event to stop it."""
    stop = stop or threading.Event()
    options = app.conf.broker_transport_options or {}
    interval = float(options.get("unacked_restore_interval") or DEFAULT_INTERVAL_SECONDS)
    thread = threading.Thread(target=_loop, args=(app, interval, stop), name="unacked-sweep", daemon=True)
    thread.start()
    return stop
