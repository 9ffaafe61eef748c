"""``GET /``: a small status page for people (``make run``'s sandbox first of all).

It shows the configured connections (ids, regions, modes, queues -- never a credential), the
queue depths read from Redis, the delivery overview per connection (:mod:`connector.overview`:
last hour and day by outcome and reason, sample ids that open their trace), a search box for
one event's trace (``GET /trace?id=...``, :mod:`connector.trace`), and, in the sandbox, the last
requests the fake Voucherify and fake Segment received with their bodies, as Segment's Event
Tester shows them.

The fakes' records are fetched by the web process itself (so the page works through a port
forward), from ``CONNECTOR_SANDBOX_FAKES``: loopback URLs only, set by ``ops.run`` and never in
production.  That is the one outbound call of the web process, made with the standard library
(``http.client``, a second or less) rather than an HTTP client package.  Bodies are shown,
never headers (the sandbox's credentials travel there), and any configured credential that
would appear in a body is replaced; Jinja escapes everything.

``GET /status.json`` is the same data for scripts.

All of them need ``STATUS_TOKEN`` (``Authorization: Bearer <token>``, or the password of Basic
auth, which is what a browser's login prompt sends) and answer 404 when no token is configured:
the page lists every connection id, the door of each connection's webhooks.  The sandbox
(``make run`` without a configured connection: ``Settings.sandbox``, true only when every
connection is wired to the loopback fakes of ``CONNECTOR_SANDBOX_FAKES``) shows it without a
token to loopback callers unless one is set; ``make run`` binds that web to 127.0.0.1.  ``STATUS_PAGE=off`` turns them off whatever else is set (``/metrics`` and ``/readyz``
stay).
"""

from __future__ import annotations

import http.client
import ipaddress
import json
from typing import Any
from urllib.parse import urlsplit

import redis
from flask import Blueprint, Response, abort, current_app, jsonify, render_template, request

from app.auth import require_token
from app.status_quota import quota_data
from connector import depths, overview, trace, tracereader
from connector.config import Settings
from connector.keys import Keys

status_bp = Blueprint("status", __name__, template_folder="templates")


def _guard() -> None:
    """404 when the page is off (STATUS_PAGE=off, or no STATUS_TOKEN outside the sandbox), 401
    without the token."""
    settings: Settings = current_app.extensions["connector.settings"]
    if not settings.status_page:
        abort(404)
    if settings.status_token is None:
        # Tokenless only in the real sandbox, and only to this machine (the sandbox web listens
        # on loopback; the check holds should it be exposed some other way).
        if not settings.sandbox or not _loopback(request.remote_addr):
            abort(404)
        return
    require_token(request, settings.status_token, "connector status")


def _loopback(address: str | None) -> bool:
    try:
        return address is not None and ipaddress.ip_address(address).is_loopback
    except ValueError:
        return False


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
        seen = overview.read(client, Keys(settings.key_prefix), [c.id for c in settings.connections])
        quota = quota_data(client, settings)
    except redis.RedisError:  # Redis going away between two reads is an answer, not a bug
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
            "overview": seen,
        }
    )
    data["quota"] = quota
    return data


MAX_SHOWN_REQUESTS = 30
MAX_BODY_CHARS = 4000


def _fetch_records(url: str) -> list[dict[str, Any]]:
    parts = urlsplit(url)
    conn = http.client.HTTPConnection(parts.hostname or "127.0.0.1", parts.port, timeout=1.0)
    try:
        conn.request("GET", "/__fake/requests")
        answer = conn.getresponse()
        records = json.loads(answer.read()) if answer.status == 200 else []
    finally:
        conn.close()
    return records if isinstance(records, list) else []


def _credentials(settings: Settings) -> list[str]:
    found: list[str] = []
    for c in settings.connections:
        for value in (
            c.voucherify.app_id,
            c.voucherify.secret_key,
            c.voucherify.webhook_secret,
            c.segment.write_key if c.segment else None,
            c.segment_webhook_secret,
            *c.write_keys,
        ):
            text = value.reveal() if value is not None else None
            if isinstance(text, str) and len(text) >= 4:
                found.append(text)
    return found


def _shown_body(record: dict[str, Any], hidden: list[str]) -> str:
    body = record.get("body")
    if body is None:
        body = record.get("raw")
    if body is None:
        return ""
    text = body if isinstance(body, str) else json.dumps(body, indent=2, ensure_ascii=False, default=str)
    for value in hidden:
        text = text.replace(value, "<redacted>")
    return text if len(text) <= MAX_BODY_CHARS else text[:MAX_BODY_CHARS] + "\n…"


def fake_requests(settings: Settings) -> list[dict[str, Any]]:
    """The sandbox fakes' last requests (newest first) with their bodies; [] outside it."""
    if not settings.sandbox or not settings.sandbox_fakes:
        return []
    hidden = _credentials(settings)
    rows: list[dict[str, Any]] = []
    for name, url in settings.sandbox_fakes.items():
        try:
            records = _fetch_records(url)
        except (OSError, ValueError, http.client.HTTPException):
            rows.append(
                {"fake": name, "time": 0, "method": "", "path": "(not reachable)", "status": "", "body": ""}
            )
            continue
        for r in records[-MAX_SHOWN_REQUESTS:]:
            if not isinstance(r, dict):
                continue
            rows.append(
                {
                    "fake": name,
                    "time": float(r.get("time") or 0),
                    "method": str(r.get("method") or ""),
                    "path": str(r.get("path") or ""),
                    "status": r.get("status"),
                    "body": _shown_body(r, hidden),
                }
            )
    rows.sort(key=lambda row: row["time"], reverse=True)
    for row in rows:  # shown as ISO 8601 in UTC, as the traces are: not epoch seconds
        row["when"] = tracereader.when(row["time"]) if row["time"] else ""
    return rows[:MAX_SHOWN_REQUESTS]


@status_bp.get("/")
def page() -> str:
    _guard()
    settings: Settings = current_app.extensions["connector.settings"]
    return render_template("status.html", data=status_data(), deliveries=fake_requests(settings))


@status_bp.get("/trace")
def trace_view() -> tuple[str, int]:
    """One event's journey, server-rendered (the search box of the status page): every
    connection's trace of the id (ids are the clients'), or ``connection``'s only."""
    _guard()
    settings: Settings = current_app.extensions["connector.settings"]
    event_id = (request.args.get("id") or "").strip()[: trace.MAX_ID_CHARS]
    connection = (request.args.get("connection") or "").strip()[: trace.MAX_ID_CHARS] or None
    found: dict[str, list[dict[str, Any]]] = {}
    error = None
    if event_id:
        try:
            found = tracereader.find(
                current_app.extensions["connector.redis"], Keys(settings.key_prefix), event_id, connection
            )
        except redis.RedisError:
            error = "Redis does not answer."
    traces = [
        {
            "connection": cid,
            "info": tracereader.summary(event_id, records),
            "rows": tracereader.rows(records),
        }
        for cid, records in found.items()
    ]
    return render_template("trace.html", event_id=event_id, traces=traces, error=error), (
        200 if found or not event_id else 404
    )


@status_bp.get("/status.json")
def as_json() -> Response:
    _guard()
    return jsonify(status_data())
