"""Celery entry point of the worker process: ``celery -A workers.worker worker``.

Loads the configuration at start-up (a bad file stops the worker before it takes any work),
declares one queue per region and dedicated cluster of the configured connections, and
registers the tasks.  ``WORKER_QUEUES`` (comma-separated) or ``-Q`` limits a worker to some
regions, e.g. a Procfile line per region for workers placed near each region.
"""

from __future__ import annotations

import contextlib
import os
import socket

from connector import multiprocess

# Before anything imports connector.metrics: with PROMETHEUS_MULTIPROC_DIR set, this worker's
# metrics land in the shared directory that the web's /metrics merges.
multiprocess.setup("worker")

import redis  # noqa: E402
from celery.signals import (  # noqa: E402
    setup_logging,
    worker_process_init,
    worker_process_shutdown,
    worker_ready,
    worker_shutdown,
)

from connector import fleet, heartbeat, redisconn  # noqa: E402
from connector.celery_app import celery, celery_config, queues_for  # noqa: E402
from connector.config import ConfigError, exit_on_config_error  # noqa: E402
from connector.keys import Keys  # noqa: E402
from connector.logs import configure_logging  # noqa: E402
from workers import stop, tasks  # noqa: E402, F401  (tasks: registers the tasks)
from workers.restore import start_sweeper  # noqa: E402
from workers.runtime import build_runtime, set_runtime  # noqa: E402
from workers.settings import load_settings  # noqa: E402

try:
    settings = load_settings()
except ConfigError as exc:
    # Before Celery connects or takes any message: the list, exit status 2, no traceback.
    exit_on_config_error(exc, "worker")
_all_queues = settings.voucherify_queues + settings.segment_queues
celery.conf.update(celery_config(settings.redis, settings.redis_tls_verify, settings.broker))
celery.conf.task_queues = queues_for(list(settings.worker_queues) or _all_queues)
app = celery
# The fleet-wide counters this process (and each prefork child) counts go to Redis every few
# seconds and at stop (connector.fleet): the web's /metrics reads them, on any machine.
fleet.configure(
    redisconn.client(settings.redis, settings.redis_tls_verify, socket_connect_timeout=2, socket_timeout=5),
    Keys(settings.key_prefix),
    settings.tuning.metrics_flush,
)


@setup_logging.connect
def _logging(**_: object) -> None:
    configure_logging("worker", settings.logs)


@worker_process_init.connect
def _fresh_runtime(**_: object) -> None:
    # Each pool process opens its own sockets.
    set_runtime(build_runtime(settings))


@worker_process_shutdown.connect
def _metrics_gone(pid: int | None = None, **_: object) -> None:
    # prefork children: forget their live gauges (counters stay, as for gunicorn's workers);
    # their last fleet counts go to Redis.
    multiprocess.mark_dead(pid or os.getpid())
    fleet.flush_within(stop.STOP_FLUSH_SECONDS)


@worker_ready.connect
def _sweep_unacked(**_: object) -> None:
    # Messages of a worker that died come back after the visibility timeout only if someone
    # sweeps; kombu does not under --pool gevent (see workers.restore).
    start_sweeper(celery)


_beat: list[tuple[redis.Redis, Keys, str]] = []


@worker_ready.connect
def _heartbeat(**_: object) -> None:
    # The "workers absent" alert (connector_workers_alive{queue}, read by the web's /metrics).
    client = redisconn.client(settings.redis, settings.redis_tls_verify, socket_timeout=5)
    name = f"{socket.gethostname()}:{os.getpid()}"
    keys = Keys(settings.key_prefix)
    _beat.append((client, keys, name))
    heartbeat.start(client, keys, name, list(settings.worker_queues) or _all_queues)


@worker_shutdown.connect
def _last_counts(**_: object) -> None:
    # The orderly stop's end (workers.stop): the tasks are done, their counts go to Redis now,
    # not a flush period later (the process exits next).
    fleet.flush_within(stop.STOP_FLUSH_SECONDS)


@worker_shutdown.connect
def _heartbeat_gone(**_: object) -> None:
    for client, keys, name in _beat:
        with contextlib.suppress(redis.RedisError):  # stopping anyway: the entry ages out
            heartbeat.gone(client, keys, name)


@worker_ready.connect
def _orderly_stop(**_: object) -> None:
    # SIGTERM, SIGINT and SIGQUIT: one orderly stop that loses nothing (workers.stop).
    stop.install(settings.tuning.shutdown_grace)
