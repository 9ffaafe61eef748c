"""``GET /``: a small status page for people (``make run``'s sandbox first of all).

It shows the configured connections (ids, regions, modes, queues -- never a credential), the
queue depths read from Redis, and, in the sandbox, the last requests the fake Voucherify and
fake Segment received.  Those come from the fakes' ``/__fake/requests`` fetched *by the
browser* (the web process never imports an HTTP client); ``ops.run`` tells the page where
the fakes listen through ``CONNECTOR_SANDBOX_FAKES`` (``name=url,name=url``, loopback only).
Only method, path, status and time of a recorded request are displayed, never its headers or
body (they carry the sandbox's credentials and the events).

``GET /status.json`` is the same data for scripts and the page's refresh.

Both need ``STATUS_TOKEN`` (``Authorization: Bearer <token>``, or the password of Basic auth,
which is what a browser's login prompt sends) and answer 404 when no token is configured: the
page lists every connection id, the door of each connection's webhooks.  The sandbox (``make
run``, marked by ``CONNECTOR_SANDBOX_FAKES``) shows it without a token unless one is set.
``STATUS_PAGE=off`` turns both off whatever else is set (``/metrics`` and ``/readyz`` stay).
"""

from __future__ import annotations

from typing import Any

import redis
from flask import Blueprint, Response, abort, current_app, jsonify, render_template, request

from app.auth import require_token
from app.status_quota import quota_data
from connector import depths
from connector.config import Settings

status_bp = Blueprint("status", __name__, template_folder="templates")


def _guard() -> None:
    """404 when the page is off (STATUS_PAGE=off, or no STATUS_TOKEN outside the sandbox), 401
    without the token."""
    settings: Settings = current_app.extensions["connector.settings"]
    if not settings.status_page:
        abort(404)
    if settings.status_token is None:
        if not settings.sandbox:
            abort(404)
        return
    require_token(request, settings.status_token, "connector status")


def status_data() -> dict[str, Any]:
    settings: Settings = current_app.extensions["connector.settings"]
    client: redis.Redis = current_app.extensions["connector.redis"]
    connections = []
    for c in settings.connections:
        connections.append(
            {
                "id": c.id,
                "voucherify": {
                    "region": c.voucherify.region,
                    "dedicated": bool(c.voucherify.api_url),
                    "mode": c.voucherify.mode,
                    "queue": c.voucherify.queue,
                    "rate_limit_per_minute": c.voucherify.rate_limit_per_minute,
                    "webhooks": c.voucherify.webhook_secret is not None,
                },
                "segment": (
                    {"region": c.segment.region, "queue": c.segment.queue} if c.segment is not None else None
                ),
                "write_keys": len(c.write_keys),
            }
        )
    data: dict[str, Any] = {
        "connections": connections,
        "redis": True,
        "sandbox": dict(settings.sandbox_fakes),
    }
    try:
        snap = depths.snapshot(client, settings)
    except redis.RedisError:
        data["redis"] = False
        return data
    data.update(
        {
            "queues": snap.queues,
            "unacked": snap.unacked,
            "delayed": snap.delayed,
            "delayed_due": snap.delayed_due,
            "dead_letters": snap.dead_letters,
            "per_connection": {
                s.id: {"backlog": s.backlog, "dead_letters": s.dead_letters} for s in snap.connections
            },
        }
    )
    data["quota"] = quota_data(client, settings)
    return data


@status_bp.get("/")
def page() -> str:
    _guard()
    return render_template("status.html", data=status_data())


@status_bp.get("/status.json")
def as_json() -> Response:
    _guard()
    return jsonify(status_data())
