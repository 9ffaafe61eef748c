"""gunicorn settings for the web process (Heroku sets PORT and WEB_CONCURRENCY).

Worker class: gevent.  A sync worker is held by one client for as long as that client takes to
send its request (a partial body held one for 30 s; two such sockets took a two-worker web
process down).  Under gevent a connection costs a greenlet, not a worker: headers must arrive
within ``keepalive`` seconds (gunicorn's own timeout around reading them), bodies within
``CONNECTOR_BODY_TIMEOUT_SECONDS`` (app.body), and ``worker_connections`` bounds the sockets a
worker holds at once.  /healthz and ingest keep answering while many sockets dribble bytes.
"""

import os
from typing import Any

worker_class = os.environ.get("GUNICORN_WORKER_CLASS", "gevent")
if worker_class == "gevent":
    # Patched before the app is preloaded (below), so that the Redis and broker clients created
    # at import time use cooperative sockets and locks; gunicorn's worker patches again (no-op).
    from gevent import monkey

    monkey.patch_all()

from connector import multiprocess  # noqa: E402

# Before the app (and connector.metrics) is loaded: with PROMETHEUS_MULTIPROC_DIR set, every
# gunicorn worker writes its metrics there and /metrics merges them with the Celery workers'.
multiprocess.setup("web")

bind = f"0.0.0.0:{os.environ.get('PORT', '8000')}"
workers = int(os.environ.get("WEB_CONCURRENCY", "2"))
# Sockets one worker holds at once (slow or not); beyond it, connections wait in the backlog.
worker_connections = int(os.environ.get("WEB_WORKER_CONNECTIONS", "1000"))
timeout = 30
graceful_timeout = 25
# Also the deadline for a request's headers under gevent (see the docstring).
keepalive = 5
# Bounded request line and headers (gunicorn's defaults, said here on purpose).
limit_request_line = 4094
limit_request_fields = 100
limit_request_field_size = 8190
# Access logs would carry nothing secret (paths only), but per-event outcome lines are ours.
accesslog = None
errorlog = "-"
# Fail at start-up, not at the first request, when the configuration is wrong (ops.wsgi prints
# the list of problems and exits with status 2).
preload_app = True


def worker_exit(server: Any, worker: Any) -> None:
    # In the gunicorn worker that stops: its last fleet counts go to Redis (connector.fleet), and
    # so do the traces and overview counts it buffered (written at most once a second: a
    # restart would lose the last second's skips and refusals).
    from connector import fleet

    fleet.flush()
    extensions = getattr(getattr(worker, "wsgi", None), "extensions", None) or {}
    recorder = extensions.get("connector.trace")
    if recorder is not None and "connector.redis" in extensions:
        recorder.flush(extensions["connector.redis"])


def child_exit(server: Any, worker: Any) -> None:
    # A worker that exited (restart, timeout, crash) leaves its counters; its live gauges go.
    multiprocess.mark_dead(worker.pid)


# gunicorn >= 25 opens a control socket at a fixed path per user; several instances on one
# machine (tests, benchmarks, per-region deployments) would fight over it, and nothing uses it.
control_socket_disable = True
