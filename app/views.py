"""HTTP endpoints of the web process: Tracking API, webhook receivers, health.

Views only parse, authenticate, validate and enqueue; the rules live in :mod:`app.ingest`,
:mod:`app.body` and :mod:`app.enqueue`.
"""

from __future__ import annotations

import logging
import secrets
import time
from typing import Any

from flask import Blueprint, Response, current_app, g, jsonify, request

from app import body as bodies
from app.auth import basic_user, connection_for_key
from app.errors import ApiError, bad_request, unauthorized
from app.ingest import PATH_TYPES, IngestResult, Rejection, ingest_body
from app.metrics import count_received, count_rejected
from app.regulations import drop_suppressed
from connector import envelope
from connector.config import Connection, Settings
from connector.contract import DESTINATION, SOURCE
from connector.errors import MappingError
from connector.secrets import Secret
from connector.signatures import (
    SEGMENT_SIGNATURE_HEADER,
    VOUCHERIFY_SIGNATURE_HEADER,
    segment_signature_valid,
    voucherify_signature_valid,
)

log = logging.getLogger("connector.web")

tracking = Blueprint("tracking", __name__)
webhooks = Blueprint("webhooks", __name__)
ops = Blueprint("ops", __name__)


def _settings() -> Settings:
    settings: Settings = current_app.extensions["connector.settings"]
    return settings


def _enqueuer() -> Any:
    return current_app.extensions["connector.enqueuer"]


def _ingesting(direction: str, source: str) -> None:
    """Label this request for the ingest metrics: the error handlers of ``app.create_app``
    count a refused request under its code (once, or ``g.ingest_events`` times)."""
    g.ingest_direction = direction
    g.ingest_source = source


def _trace_rejections(connection: Connection | None, rejections: list[Rejection]) -> None:
    """Refused events that carry a messageId get a trace (``connector trace ID`` says why) and
    may be the overview's samples; the web writes them at most once a second."""
    if connection is None:
        return
    recorder = current_app.extensions["connector.trace"]
    door = g.get("ingest_source", "tracking_api")
    for r in rejections:
        if r.message_id:
            recorder.rejected(
                r.message_id, connection=connection.id, direction=DESTINATION, door=door, code=r.code
            )


def _reject_one(connection: Connection | None, rejection: Rejection) -> ApiError:
    """A single event refused: counted here under its own code, then answered 400."""
    _trace_rejections(connection, [rejection])
    count_rejected(connection.id if connection else "unknown", DESTINATION, [rejection.code])
    g.ingest_counted = True
    return bad_request(rejection.code, rejection.message)


def _accept(connection: Connection, result: IngestResult) -> Response:
    g.ingest_connection = connection.id
    _trace_rejections(connection, result.rejected)
    count_rejected(connection.id, DESTINATION, (r.code for r in result.rejected))
    door = g.get("ingest_source", "tracking_api")
    valid = len(result.accepted)
    if valid:
        drop_suppressed(connection, result, door)
    if valid and not result.accepted:  # every valid event was a suppressed user's: 200, as Segment
        count_received(connection, DESTINATION, door, valid)
        payload: dict[str, Any] = {"success": True}
        if result.rejected:
            payload["rejected"] = [r.as_dict() for r in result.rejected]
        return jsonify(payload)
    if not result.accepted:
        g.ingest_counted = True
        first = result.rejected[0] if result.rejected else None
        raise bad_request(
            first.code if first and len(result.rejected) == 1 else "no_valid_events",
            first.message if first and len(result.rejected) == 1 else "no event in the request is valid",
            rejected=[r.as_dict() for r in result.rejected],
        )
    g.ingest_events = len(result.accepted)  # a 429/503 from the enqueue refuses them all
    # Which door took the events, for their traces: stored once per message, never merged.
    result.shared["door"] = door
    result.stored_bytes += len(door) + 10
    _enqueuer().segment_events(connection, result.encoded, result.shared, result.stored_bytes)
    count_received(connection, DESTINATION, door, valid)
    payload = {"success": True}
    if result.rejected:
        payload["rejected"] = [r.as_dict() for r in result.rejected]
    return jsonify(payload)


@tracking.post("/v1/<kind>")
def track_api(kind: str) -> Response:
    path_type = PATH_TYPES.get(kind)
    if path_type is None:
        raise ApiError(404, "not_found", f"unknown endpoint /v1/{kind}")
    _ingesting(DESTINATION, "tracking_api")
    settings = _settings()
    key = basic_user(request)
    connection = connection_for_key(settings, key) if key else None
    if connection is not None:
        g.ingest_connection = connection.id
    # Only now is the body read (the key in the header was checked first), within a deadline.
    limit = bodies.MAX_BATCH_BYTES if path_type == "batch" else bodies.MAX_EVENT_BYTES
    raw = bodies.read_raw(request, limit, timeout=settings.body_timeout)
    body = bodies.parse_json(raw)
    if connection is None:
        key_in_body = body.get("writeKey") if isinstance(body, dict) else None
        connection = connection_for_key(settings, key_in_body if isinstance(key_in_body, str) else None)
    if path_type != "batch" and isinstance(body, dict) and bodies.depth_exceeds(body):
        raise bad_request("nesting_too_deep", f"JSON nesting deeper than {bodies.MAX_DEPTH} levels")
    result = ingest_body(body, path_type, raw_size=len(raw))
    if path_type != "batch" and result.rejected:
        raise _reject_one(connection, result.rejected[0])
    return _accept(connection, result)


# A secret nobody knows, drawn once per process: what an unknown connection id's webhook
# signatures are checked against.  Unknown ids, known ids with a wrong signature and known ids
# with no secret configured then answer alike (same status, same code and message, and an HMAC
# computed over the body all the same), so the webhook doors do not tell a stranger which
# connection ids exist -- ids are short, readable and guessable.
_UNKNOWN_SECRET = Secret(secrets.token_hex(32))

_SEGMENT_BAD_SIGNATURE = "X-Signature is missing or does not match the body"
_VOUCHERIFY_BAD_SIGNATURE = "x-voucherify-signature is missing or does not match the body"


def _unconfigured(connection: Connection, door: str, setting: str) -> None:
    """A known connection whose webhook door has no secret: the caller is told no more than a
    stranger (401 invalid_signature); the operator learns why from the log."""
    log.warning(
        "webhook refused: the connection has no secret for this door",
        extra={"connection": connection.id, "door": door, "setting": setting},
    )


@webhooks.post("/webhooks/segment/<connection_id>")
def segment_webhook(connection_id: str) -> Response:
    _ingesting(DESTINATION, "segment_webhook")
    connection = _settings().connection(connection_id)
    secret: Secret | None = _UNKNOWN_SECRET
    if connection is not None:
        g.ingest_connection = connection.id
        if connection.segment_webhook_secret is not None:
            secret = connection.segment_webhook_secret
        elif connection.segment_webhook_unsigned:
            secret = None  # knowingly open (README: Security)
        else:
            _unconfigured(connection, "segment_webhook", "segment_webhook_secret")
    signature = request.headers.get(SEGMENT_SIGNATURE_HEADER)
    # Refused before the body is read when there is no signature (unknown ids alike).
    if secret is not None and not signature:
        raise unauthorized("invalid_signature", _SEGMENT_BAD_SIGNATURE)
    raw = bodies.read_raw(request, timeout=_settings().body_timeout)
    if secret is not None:
        valid = segment_signature_valid(raw, signature, secret.reveal())
        if not valid or secret is _UNKNOWN_SECRET:
            raise unauthorized("invalid_signature", _SEGMENT_BAD_SIGNATURE)
    assert connection is not None  # an unknown id has the unknown secret: refused above
    body = bodies.parse_json(raw)
    if isinstance(body, list):
        # The Actions webhook sends a JSON array of events: treat it as a batch.
        if len(body) > bodies.MAX_BATCH_EVENTS:
            raise bad_request("too_many_events", f"at most {bodies.MAX_BATCH_EVENTS} events per request")
        result = ingest_body({"batch": body}, "batch", raw_size=len(raw))
    elif isinstance(body, dict):
        result = ingest_body({"batch": [body]}, "batch", raw_size=len(raw))
        if result.rejected:
            raise _reject_one(connection, result.rejected[0])
    else:
        raise bad_request("not_an_object", "the body must be a JSON object or an array of objects")
    return _accept(connection, result)


@webhooks.post("/webhooks/voucherify/<connection_id>")
def voucherify_webhook(connection_id: str) -> tuple[Response, int]:
    _ingesting(SOURCE, "voucherify_webhook")
    connection = _settings().connection(connection_id)
    secret = _UNKNOWN_SECRET
    if connection is not None:
        g.ingest_connection = connection.id
        if connection.voucherify.webhook_secret is not None:
            secret = connection.voucherify.webhook_secret
        else:
            _unconfigured(connection, "voucherify_webhook", "webhook_secret")
    signature = request.headers.get(VOUCHERIFY_SIGNATURE_HEADER)
    if not signature:  # refused before the body is read
        raise unauthorized("invalid_signature", _VOUCHERIFY_BAD_SIGNATURE)
    raw = bodies.read_raw(request, timeout=_settings().body_timeout)
    body = bodies.parse_json(raw)
    valid = voucherify_signature_valid(raw, signature, secret.reveal(), body)
    if not valid or secret is _UNKNOWN_SECRET or connection is None:
        raise unauthorized("invalid_signature", _VOUCHERIFY_BAD_SIGNATURE)
    if not isinstance(body, dict):
        raise bad_request("not_an_object", "the body must be a JSON object")
    if bodies.depth_exceeds(body):
        raise bad_request("nesting_too_deep", f"JSON nesting deeper than {bodies.MAX_DEPTH} levels")
    if bodies.holds_out_of_range(body):
        raise bad_request(
            "number_out_of_range", "an integer is outside the 64-bit range; it would not stay exact"
        )
    try:
        event = envelope.parse_webhook(body)
    except MappingError as exc:
        raise bad_request("invalid_webhook", exc.message) from None
    now = time.time()
    _check_webhook_age(connection, event, now)
    if connection.segment is None:
        raise ApiError(409, "segment_not_configured", "this connection has no [connection.segment]")
    _enqueuer().voucherify_webhook(connection, body, now, len(raw))
    count_received(connection, SOURCE, "voucherify_webhook", 1)
    return jsonify({"accepted": True, "event_id": event.event_id}), 202


def _check_webhook_age(connection: Connection, event: Any, now: float) -> None:
    """Replay protection (SPEC 4.1, 6): only events whose age is KNOWN to be within the accepted
    window pass.  An unreadable or future ``created_at`` would otherwise skip the check -- and
    outlive the dedupe memory, which is sized from that window."""
    age = envelope.event_age_seconds(event, now)
    if age is None:
        raise bad_request(
            "invalid_created_at", "created_at is not a representable ISO 8601 date-time; refused"
        )
    if age < -envelope.FUTURE_SKEW_SECONDS:
        raise bad_request("invalid_created_at", "created_at is in the future; refused")
    if age > connection.voucherify.max_event_age_seconds:
        raise bad_request(
            "event_too_old",
            f"the event is older than {connection.voucherify.max_event_age_seconds // 3600} h; refused",
        )


@ops.get("/healthz")
def healthz() -> Response:
    return jsonify({"status": "ok"})


@ops.get("/readyz")
def readyz() -> tuple[Response, int]:
    try:
        current_app.extensions["connector.redis"].ping()
    except Exception:  # any failure to reach Redis means "not ready"
        return jsonify({"code": "redis_unavailable", "message": "Redis is not reachable"}), 503
    return jsonify({"status": "ready"}), 200
