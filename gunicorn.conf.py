"""gunicorn settings for the web process (Heroku sets PORT and WEB_CONCURRENCY)."""

import os
from typing import Any

from connector import multiprocess

# Before the app (and connector.metrics) is loaded: with PROMETHEUS_MULTIPROC_DIR set, every
# gunicorn worker writes its metrics there and /metrics merges them with the Celery workers'.
multiprocess.setup("web")

bind = f"0.0.0.0:{os.environ.get('PORT', '8000')}"
workers = int(os.environ.get("WEB_CONCURRENCY", "2"))
worker_class = os.environ.get("GUNICORN_WORKER_CLASS", "sync")
timeout = 30
graceful_timeout = 25
keepalive = 5
# Access logs would carry nothing secret (paths only), but per-event outcome lines are ours.
accesslog = None
errorlog = "-"
# Fail at start-up, not at the first request, when the configuration is wrong.
preload_app = True


def child_exit(server: Any, worker: Any) -> None:
    # A worker that exited (restart, timeout, crash) leaves its counters; its live gauges go.
    multiprocess.mark_dead(worker.pid)


# gunicorn >= 25 opens a control socket at a fixed path per user; several instances on one
# machine (tests, benchmarks, per-region deployments) would fight over it, and nothing uses it.
control_socket_disable = True
