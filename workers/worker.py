"""Celery entry point of the worker process: ``celery -A workers.worker worker``.

Loads the configuration at start-up (a bad file stops the worker before it takes any work),
declares one queue per region and dedicated cluster of the configured connections, and
registers the tasks.  ``WORKER_QUEUES`` (comma-separated) or ``-Q`` limits a worker to some
regions, e.g. a Procfile line per region for workers placed near each region.
"""

from __future__ import annotations

import os

from celery.signals import setup_logging, worker_process_init

from connector.config import load_settings
from connector.logs import configure_logging
from workers import tasks  # noqa: F401  (registers the tasks)
from workers.celery_app import celery, queues_for
from workers.runtime import build_runtime, set_runtime

settings = load_settings()
_all_queues = settings.voucherify_queues + settings.segment_queues
_selected = [q.strip() for q in os.environ.get("WORKER_QUEUES", "").split(",") if q.strip()] or _all_queues
celery.conf.task_queues = queues_for(_selected)
celery.conf.update(broker_url=settings.redis_url)
app = celery


@setup_logging.connect
def _logging(**_: object) -> None:
    configure_logging("worker")


@worker_process_init.connect
def _fresh_runtime(**_: object) -> None:
    # Each pool process opens its own sockets.
    set_runtime(build_runtime(settings))
