"""From a parsed Tracking API body to normalized events, as Segment's own API does it.

- batch-level ``context`` and ``integrations`` merge into each item (the item's values win);
- ``sentAt`` from the item or else the batch;
- ``timestamp`` corrected for client clock skew: ``receivedAt - (sentAt - originalTimestamp)``;
- ``messageId`` kept (at most 100 characters) or assigned;
- each item validated by its call type's schema; invalid items are dropped with a reason while
  the rest are accepted (Segment's behaviour), the reasons reported back to the client.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import orjson

from app.body import MAX_BATCH_EVENTS, MAX_DEPTH, MAX_EVENT_BYTES, depth_exceeds
from app.errors import bad_request
from app.schemas import CALL_TYPES, parse_utc, validate_event

# Short forms used by analytics.js, and the long ones.
PATH_TYPES = {
    "identify": "identify",
    "i": "identify",
    "track": "track",
    "t": "track",
    "page": "page",
    "p": "page",
    "screen": "screen",
    "s": "screen",
    "group": "group",
    "g": "group",
    "alias": "alias",
    "a": "alias",
    "batch": "batch",
    "b": "batch",
    "import": "batch",
}

# Never forwarded: credentials that may travel inside the body.
_STRIPPED = ("writeKey",)


@dataclass
class Rejection:
    index: int
    code: str
    message: str

    def as_dict(self) -> dict[str, Any]:
        return {"index": self.index, "code": self.code, "message": self.message}


@dataclass
class IngestResult:
    accepted: list[dict[str, Any]] = field(default_factory=list)
    rejected: list[Rejection] = field(default_factory=list)
    # The accepted events serialized once (as orjson fragments): the size and depth checks read
    # these bytes, and the broker message embeds them without encoding the events again.
    encoded: list[orjson.Fragment] = field(default_factory=list)


def iso(dt: datetime) -> str:
    """``2024-05-01T12:00:00.000Z``: Segment's form, UTC with milliseconds."""
    if dt.tzinfo is not UTC:
        dt = dt.astimezone(UTC)
    return dt.isoformat(timespec="milliseconds")[:-6] + "Z"  # drop "+00:00"


def normalize(
    item: dict[str, Any],
    received_at: datetime,
    received_iso: str,
    batch_context: dict[str, Any] | None = None,
    batch_integrations: dict[str, Any] | None = None,
    batch_sent_at: Any = None,
) -> dict[str, Any]:
    """A new dict: merged context, corrected timestamp, messageId, receivedAt."""
    event = dict(item)
    for key in _STRIPPED:
        event.pop(key, None)
    if batch_context:
        ctx = event.get("context")
        event["context"] = {**batch_context, **ctx} if isinstance(ctx, dict) else dict(batch_context)
    if batch_integrations:
        integ = event.get("integrations")
        event["integrations"] = (
            {**batch_integrations, **integ} if isinstance(integ, dict) else dict(batch_integrations)
        )
    sent_at = event.get("sentAt") or batch_sent_at
    timestamp = event.get("timestamp")
    if isinstance(timestamp, str) and timestamp:
        original = parse_utc(timestamp)
        event["originalTimestamp"] = timestamp
        sent = parse_utc(sent_at) if isinstance(sent_at, str) and sent_at else None
        if original is not None and sent is not None:
            event["timestamp"] = iso(received_at - (sent - original))
        elif original is not None:
            event["timestamp"] = iso(original)
    else:
        event["timestamp"] = received_iso
    if isinstance(sent_at, str) and sent_at:
        event["sentAt"] = sent_at
    message_id = event.get("messageId")
    if not message_id:
        event["messageId"] = f"api-{uuid.uuid4()}"
    event["receivedAt"] = received_iso
    return event


def check_item(item: Any, call_type: str | None) -> tuple[str, str] | str:
    """The call type when the item passes its schema, else ``(code, message)``."""
    if not isinstance(item, dict):
        return "not_an_object", "an event must be a JSON object"
    raw_type = item.get("type")
    kind = raw_type if raw_type is not None else call_type
    if kind is None:
        return "missing_type", "the event has no type (identify, track, page, screen, group or alias)"
    if kind not in CALL_TYPES:
        return "invalid_type", f"unknown event type {kind!r}"
    problem = validate_event(item, kind)
    if problem is not None:
        return problem
    return str(kind)


def encode_checked(event: dict[str, Any], item: dict[str, Any]) -> bytes | tuple[str, str]:
    """The normalized event as JSON bytes, or ``(code, message)`` when too deep or too large.

    One ``orjson.dumps`` per event serves three purposes: the bytes go to the broker as they
    are, their length bounds the size, and their bracket count bounds the nesting (a JSON text
    with at most MAX_DEPTH brackets cannot nest deeper; only above that is the event walked).
    """
    try:
        dumped: bytes | None = orjson.dumps(event)
    except orjson.JSONEncodeError:  # only nesting deeper than orjson's own bound gets here
        dumped = None
    if (dumped is None or dumped.count(b"{") + dumped.count(b"[") > MAX_DEPTH) and depth_exceeds(event):
        return "nesting_too_deep", "the event nests objects too deeply"
    # Segment's 32 KB applies to the event as sent; normalizing adds a few fields and the
    # batch context, so only when the normalized form is over the bound is the original measured.
    if dumped is None or (len(dumped) > MAX_EVENT_BYTES and len(orjson.dumps(item)) > MAX_EVENT_BYTES):
        return "event_too_large", f"the event exceeds {MAX_EVENT_BYTES // 1024} KB"
    return dumped


def ingest_body(body: Any, path_type: str, now: datetime | None = None) -> IngestResult:
    """Validate and normalize a Tracking API body for ``path_type`` (a call type or 'batch')."""
    if not isinstance(body, dict):
        raise bad_request("not_an_object", "the body must be a JSON object")
    received_at = now or datetime.now(UTC)
    received_iso = iso(received_at)
    result = IngestResult()
    if path_type == "batch":
        items = body.get("batch")
        if not isinstance(items, list):
            raise bad_request("invalid_batch", "a batch body needs a 'batch' array of events")
        if len(items) > MAX_BATCH_EVENTS:
            raise bad_request(
                "too_many_events", f"a batch holds at most {MAX_BATCH_EVENTS} events, got {len(items)}"
            )
        ctx = body.get("context") if isinstance(body.get("context"), dict) else None
        integ = body.get("integrations") if isinstance(body.get("integrations"), dict) else None
        sent_at = body.get("sentAt")
        default_type = None
    else:
        items = [body]
        ctx = integ = None
        sent_at = None
        default_type = path_type
    for index, item in enumerate(items):
        checked = check_item(item, default_type)
        if isinstance(checked, tuple):
            result.rejected.append(Rejection(index, *checked))
            continue
        event = normalize(item, received_at, received_iso, ctx, integ, sent_at)
        event["type"] = checked
        encoded = encode_checked(event, item)
        if isinstance(encoded, tuple):
            result.rejected.append(Rejection(index, *encoded))
            continue
        result.accepted.append(event)
        result.encoded.append(orjson.Fragment(encoded))
    return result
