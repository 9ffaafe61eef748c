"""Regulations (SPEC 14): ``POST /v1/regulations``, ``GET /v1/regulations/{id}``, and the
ingest's suppression filter.

The door is an operator's: ``Authorization: Bearer $ADMIN_TOKEN`` (404 when ``ADMIN_TOKEN`` is not
set, so an unconfigured deployment does not even show the door; a write key never suffices).
Creating a regulation applies its suppression before answering (:func:`connector.regulations.create`),
so the subject's events are dropped from the 202 on; the deletion is the workers'
(``connector.regulate``, one task per connection).
"""

from __future__ import annotations

import logging
from typing import Any

import orjson
import redis
from flask import Blueprint, Response, current_app, jsonify, request
from marshmallow import ValidationError

from app import body as bodies
from app.auth import require_token
from app.enqueue import unavailable
from app.errors import ApiError, bad_request
from app.ingest import IngestResult
from app.metrics import count_suppressed
from app.schemas import RegulationSchema
from connector import regulations
from connector.config import Connection, Settings
from connector.keys import Keys

log = logging.getLogger("connector.web")

regulations_bp = Blueprint("regulations", __name__)

_SCHEMA = RegulationSchema()
# 5,000 ids of up to 1 KB each, and room for the rest of the body.
MAX_REGULATION_BYTES = 5_300_000


def _settings() -> Settings:
    settings: Settings = current_app.extensions["connector.settings"]
    return settings


def _redis() -> redis.Redis:
    client: redis.Redis = current_app.extensions["connector.redis"]
    return client


def _keys() -> Keys:
    return Keys(_settings().key_prefix)


def _guard() -> None:
    settings = _settings()
    if settings.admin_token is None:
        raise ApiError(404, "not_found", "regulations are off: ADMIN_TOKEN is not set")
    require_token(request, settings.admin_token, "connector regulations")


@regulations_bp.post("/v1/regulations")
def create_regulation() -> tuple[Response, int]:
    _guard()
    raw = bodies.read_raw(request, MAX_REGULATION_BYTES, timeout=_settings().body_timeout)
    body = bodies.parse_json(raw)
    if not isinstance(body, dict):
        raise bad_request("not_an_object", "the body must be a JSON object")
    try:
        data: dict[str, Any] = _SCHEMA.load(body)
    except ValidationError as exc:
        messages = exc.normalized_messages()
        field = sorted(messages)[0] if isinstance(messages, dict) and messages else "body"
        detail = messages.get(field) if isinstance(messages, dict) else messages
        raise bad_request(f"invalid_{field}", f"{field}: {_first(detail)}", field=field) from None
    settings = _settings()
    named = data.get("connections")
    if named is None:
        connections = list(settings.connections)
    else:
        if not named:
            raise bad_request(
                "invalid_connections",
                "connections: name at least one, or leave it out (all)",
                field="connections",
            )
        unknown = [c for c in named if settings.connection(c) is None]
        if unknown:
            raise bad_request(
                "invalid_connections", f"connections: unknown connection {unknown[0]!r}", field="connections"
            )
        connections = [c for c in settings.connections if c.id in set(named)]
    subjects = list(dict.fromkeys(data["subjectIds"]))
    kind = data["regulationType"]
    try:
        regulation_id = regulations.create(_redis(), _keys(), kind, subjects, [c.id for c in connections])
    except redis.RedisError:
        raise unavailable() from None
    if kind in regulations.DELETING:
        enqueuer = current_app.extensions["connector.enqueuer"]
        for connection in connections:
            try:
                enqueuer.regulation(connection, regulation_id)
            except ApiError:
                # The suppression holds; the deletion part says why it has not started, and
                # the operator repeats the regulation (a deletion is idempotent).
                regulations.set_detail(
                    _redis(), _keys(), regulation_id, connection.id, "not started: the queue was unavailable"
                )
                raise
    log.info(
        "regulation created",
        extra={
            "regulation": regulation_id,
            "type": kind,
            "subjects": len(subjects),
            "connections": len(connections),
        },
    )
    return jsonify({"data": {"regulateId": regulation_id}}), 202


def _first(detail: Any) -> str:
    """The first message of marshmallow's nested messages ({index: [..]} for a list's items)."""
    while isinstance(detail, dict) and detail:
        detail = detail[sorted(detail, key=str)[0]]
    if isinstance(detail, list) and detail:
        return _first(detail[0])
    return str(detail)


@regulations_bp.get("/v1/regulations/<regulation_id>")
def get_regulation(regulation_id: str) -> Response:
    _guard()
    if len(regulation_id) > 64:
        raise ApiError(404, "not_found", "no such regulation")
    try:
        found = regulations.read(_redis(), _keys(), regulation_id)
    except redis.RedisError:
        raise unavailable() from None
    if found is None:
        raise ApiError(404, "not_found", "no such regulation")
    return jsonify({"data": {"regulation": found}})


# --- the ingest's filter -----------------------------------------------------------------------


def drop_suppressed(connection: Connection, result: IngestResult, door: str) -> None:
    """Take the events of suppressed users out of ``result`` (answered 200 as the others:
    Segment drops them silently), counted and traced ``suppressed``.  One ``SMISMEMBER``."""
    found = current_app.extensions["connector.enqueuer"].suppressed(
        connection, [e.get("userId") for e in result.accepted]
    )
    if not found:
        return
    keep_events, keep_encoded, dropped = [], [], []
    for event, encoded in zip(result.accepted, result.encoded, strict=True):
        user = event.get("userId")
        if user is not None and not isinstance(user, bool) and str(user) in found:
            dropped.append(event.get("messageId"))
            result.stored_bytes -= len(orjson.dumps(encoded))
        else:
            keep_events.append(event)
            keep_encoded.append(encoded)
    result.accepted, result.encoded = keep_events, keep_encoded
    count_suppressed(connection.id, door, dropped)
