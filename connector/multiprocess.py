"""Prometheus multiprocess mode: every process of a machine writes its metrics to one directory.

``PROMETHEUS_MULTIPROC_DIR`` names the directory.  The process entry points call :func:`setup`
*before* :mod:`connector.metrics` is imported (gunicorn.conf.py for the web, workers/worker.py
for Celery, ``connector scheduler``); the web's ``/metrics`` then merges the files of every
gunicorn worker, Celery worker and the scheduler.  Whoever starts the processes (``make run``,
the tests, a container's entry point) gives them a shared, *empty* directory: files of processes
that are gone keep their counters (that is how totals survive a worker restart), so a directory
reused across deployments would add up old runs too.

Files are named by a process identifier.  prometheus_client uses the pid; here it is the host
name plus the pid, so that containers sharing a volume (docker-compose) never write to the same
file although their pids collide (every container has its pid 1, 7, ...).

Without the variable each process keeps its own registry and the web's ``/metrics`` shows only
the gunicorn worker that answered; the web says so in its log at start-up.
"""

from __future__ import annotations

import logging
import os
import re
import socket
import sys

from connector.config import metrics_directory

log = logging.getLogger("connector.metrics")

_configured = False


def directory() -> str | None:
    return metrics_directory()


def _host_tag() -> str:
    # No underscore: prometheus_client splits file names on "_" to find the process id.
    return re.sub(r"[^A-Za-z0-9.-]", "-", socket.gethostname())[:48] or "host"


def identifier(pid: int | None = None) -> str:
    """The name part of this process's (or ``pid``'s) metric files."""
    return f"{_host_tag()}-{pid if pid is not None else os.getpid()}"


def setup(role: str) -> str | None:
    """Switch prometheus_client to multiprocess mode when ``PROMETHEUS_MULTIPROC_DIR`` is set.

    Must run before :mod:`connector.metrics` is imported (metric values bind their storage when
    created).  Idempotent.  Returns the directory, or None in single-process mode.
    """
    global _configured
    path = directory()
    if path is None:
        return None
    os.makedirs(path, exist_ok=True)
    if _configured:
        return path
    if "connector.metrics" in sys.modules:
        # Too late to choose the file names; prometheus_client picked pid-named files itself
        # (it read the variable when imported), which still aggregates on one host.
        log.warning("metrics were imported before multiprocess set-up", extra={"role": role})
        _configured = True
        return path
    from prometheus_client import values

    # prometheus_client ships no annotations for these two.
    values.ValueClass = values.MultiProcessValue(process_identifier=identifier)  # type: ignore[no-untyped-call]
    _configured = True
    return path


def mark_dead(pid: int) -> None:
    """Forget the live gauges of a process that exited (gunicorn's ``child_exit``)."""
    path = directory()
    if path is None:
        return
    from prometheus_client import multiprocess

    multiprocess.mark_process_dead(identifier(pid), path)  # type: ignore[no-untyped-call]
