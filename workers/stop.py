"""How a worker process stops: SIGTERM, SIGINT and SIGQUIT all begin one orderly stop.

Heroku sends SIGTERM to every process of a dyno on each restart and deploy, and SIGKILL 30 s
later; ``docker compose stop`` and Ctrl-C of ``make run`` do the same in their own ways.  Celery's
own answers lose work here: its cold shutdown (SIGQUIT, or SIGTERM with ``REMAP_SIGTERM=SIGQUIT``)
kills the running tasks' greenlets, and a killed task counts as failed -- its message was
acknowledged and its events lost (measured: 268 of 300) -- while its warm shutdown waits for
tasks that may hold minutes of work.

So the first of these signals, whichever it is:

1. marks the process as stopping (:mod:`workers.delivery.shutdown`): tasks put nothing new on the
   wire, park what they hold in Redis (due at once, for another worker) and give back messages
   they have not started;
2. asks Celery for its warm shutdown: no new messages are taken, the running tasks -- now only
   finishing their calls on the wire -- end and are acknowledged, and the process exits;
3. starts a timer of ``CONNECTOR_SHUTDOWN_GRACE_SECONDS``: a call still on the wire then is cut
   off by an exit as if killed (the kill -9 case: the message comes back after the visibility
   timeout, the call's ledger claim expires, and it is sent again).

Later signals change nothing (a terminal's Ctrl-C reaches the worker and honcho's SIGTERM
follows; neither may turn an orderly stop into a lossy one).  ``kill -9`` stops it at once.

Only the gevent pool (the Procfile's) and the threads or solo pools run tasks in this process;
under prefork the children are Celery's to stop.
"""

from __future__ import annotations

import logging
import os
import signal
import threading
from collections.abc import Callable

from celery.worker import state as worker_state

from connector import fleet
from workers.delivery import shutdown
from workers.delivery.concurrency import gevent_active

log = logging.getLogger("connector.worker")

SIGNALS = (signal.SIGTERM, signal.SIGINT, signal.SIGQUIT)
EX_OK = 0
EX_CUT_OFF = 1  # the grace ran out: some call was cut off (as a kill -9 would)
# The last fleet counts' write at the stop (connector.fleet), bounded: Heroku's SIGKILL comes 30 s
# after SIGTERM, the grace is 25 s by default.
STOP_FLUSH_SECONDS = 2.0


def install(grace: float, exit_now: Callable[[int], None] = os._exit) -> None:
    """Replace Celery's handlers of :data:`SIGNALS` with the orderly stop (call once the worker
    is ready: Celery installs its own handlers while it starts)."""

    def on_signal(signum: int) -> None:
        begin_stop(signum, grace, exit_now)

    if gevent_active():
        # A gevent handler runs in a greenlet of its own: the hub's loop never blocks in it.
        import gevent

        for signum in SIGNALS:
            gevent.signal_handler(signum, on_signal, signum)
        return
    if threading.current_thread() is not threading.main_thread():
        log.warning("orderly stop not installed: not the main thread")
        return
    for signum in SIGNALS:
        signal.signal(signum, lambda number, _frame: on_signal(number))


def begin_stop(signum: int, grace: float, exit_now: Callable[[int], None] = os._exit) -> bool:
    """The orderly stop (see the module's docstring); False for a repeated signal."""
    name = signal.Signals(signum).name
    if not shutdown.begin():
        log.info("stopping already: %s changes nothing", name, extra={"signal": name})
        return False
    log.warning(
        "stopping: no new work taken, calls on the wire finish, everything else back to Redis",
        extra={"signal": name, "grace_seconds": grace},
    )
    # Celery's warm shutdown, as its own SIGTERM handler would ask for it.
    worker_state.should_stop = EX_OK  # type: ignore[assignment]  # celery-types says None only

    def cut_off() -> None:
        log.error(
            "calls still on the wire after the grace period: exiting as if killed (they are "
            "sent again once their claims expire)",
            extra={"grace_seconds": grace},
        )
        # os._exit skips the worker's stop hooks: what was counted still reaches the fleet's totals.
        fleet.flush_within(STOP_FLUSH_SECONDS)
        exit_now(EX_CUT_OFF)

    timer = threading.Timer(grace, cut_off)
    timer.daemon = True
    timer.start()
    return True
