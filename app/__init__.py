"""The web process: a Flask app that validates, authenticates and enqueues (SPEC 2).

It never imports an HTTP client and never maps or delivers; that is the workers' job.
"""

from __future__ import annotations

import logging

from flask import Flask, Response, g, has_request_context, jsonify
from werkzeug.exceptions import HTTPException

from app.enqueue import Enqueuer
from app.errors import ApiError
from app.metrics import announce_mode, count_refused_request, metrics_bp
from app.regulations import regulations_bp
from app.status import status_bp
from app.views import ops, tracking, webhooks
from connector import fleet, redisconn
from connector.celery_app import create_celery
from connector.config import Settings
from connector.keys import Keys
from connector.memory import MemoryGuard
from connector.trace import Recorder

log = logging.getLogger("connector.web")


def create_app(settings: Settings) -> Flask:
    """Application factory, on the settings the process loaded at start-up (``ops.wsgi``)."""
    app = Flask(__name__)
    app.config["MAX_CONTENT_LENGTH"] = None  # bounded by app.body, which also bounds gzip
    client = redisconn.client(
        settings.redis, settings.redis_tls_verify, socket_connect_timeout=1, socket_timeout=2
    )
    celery = create_celery(settings.redis, settings.redis_tls_verify, settings.broker, settings.key_prefix)
    app.extensions["connector.settings"] = settings
    app.extensions["connector.redis"] = client
    app.extensions["connector.celery"] = celery
    app.extensions["connector.enqueuer"] = Enqueuer(
        celery, client, Keys(settings.key_prefix), MemoryGuard(client, settings.memory_high_water)
    )
    # The overview's ingest counts and the traces of refused events: collected in memory and
    # written at most once a second (never a Redis round trip per request).
    app.extensions["connector.trace"] = Recorder(Keys(settings.key_prefix), settings.trace)
    # The fleet-wide counters this process counts (ingest) go to Redis every few seconds, where
    # every web's /metrics reads the fleet's totals (connector.fleet).
    fleet.configure(client, Keys(settings.key_prefix), settings.tuning.metrics_flush)
    app.register_blueprint(tracking)
    app.register_blueprint(webhooks)
    app.register_blueprint(ops)
    app.register_blueprint(metrics_bp)
    app.register_blueprint(status_bp)
    app.register_blueprint(regulations_bp)
    _register_errors(app)
    announce_mode(settings.metrics_dir)
    return app


def _count_refusal(code: str) -> None:
    """A refused ingest request, under its code, unless the view counted its events itself."""
    if not has_request_context() or "ingest_direction" not in g or g.get("ingest_counted"):
        return
    count_refused_request(
        g.get("ingest_connection", "unknown"), g.ingest_direction, code, g.get("ingest_events", 1)
    )


def _json_error(
    status: int, code: str, message: str, headers: dict[str, str] | None = None, **extra: object
) -> Response:
    response = jsonify({"code": code, "message": message, **extra})
    response.status_code = status
    for name, value in (headers or {}).items():
        response.headers[name] = value
    return response


def _register_errors(app: Flask) -> None:
    @app.errorhandler(ApiError)
    def api_error(exc: ApiError) -> Response:
        _count_refusal(exc.code)
        return _json_error(exc.status, exc.code, exc.message, exc.headers, **exc.extra)

    @app.errorhandler(HTTPException)
    def http_error(exc: HTTPException) -> Response:
        code = (exc.name or "error").lower().replace(" ", "_")
        return _json_error(exc.code or 400, code, exc.description or exc.name or "error")

    @app.errorhandler(Exception)
    def unexpected(exc: Exception) -> Response:
        # A bug of ours, never the client's input: log it (without the body) and answer 503 so
        # Segment's clients retry instead of dropping the events.
        log.exception("unexpected error while handling a request")
        _count_refusal("internal_error")
        return _json_error(
            503, "internal_error", "the request could not be processed; retry later", {"Retry-After": "5"}
        )
