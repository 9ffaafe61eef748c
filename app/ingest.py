"""From a parsed Tracking API body to accepted events, as Segment's own API does it.

- batch-level ``context`` and ``integrations`` merge into each item (the item's values win) --
  stored once per broker message and merged by the worker (:mod:`connector.contract`),
  but counted against every item's 32 KB here;
- ``sentAt`` from the item or else the batch;
- ``timestamp`` corrected for client clock skew: ``receivedAt - (sentAt - originalTimestamp)``;
  a time later than the receipt plus :data:`FUTURE_SKEW` is clamped to the receipt time (one bad
  device clock must not freeze a customer's stale-update protection for years);
- a date-time that cannot be parsed or represented, in any timestamp field or in the skew
  arithmetic, rejects that item (``invalid_timestamp``), never the batch;
- ``messageId`` kept (at most 100 characters) or assigned;
- each item validated by its call type's schema; invalid items are dropped with a reason while
  the rest are accepted (Segment's behaviour), the reasons reported back to the client;
- the bytes a request puts into Redis are bounded by :data:`STORED_FACTOR` times its
  decompressed size (plus a constant), whatever its shape.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import orjson

from app.body import MAX_BATCH_EVENTS, MAX_DEPTH, MAX_EVENT_BYTES, depth_exceeds, holds_out_of_range
from app.errors import bad_request
from app.schemas import CALL_TYPES, parse_utc, validate_event
from connector.contract import MERGED, expand

# Event times up to this far past the receipt are taken as they are (clocks differ a little);
# later ones are clamped to the receipt time.
FUTURE_SKEW = timedelta(seconds=60)
# What one request may store: this many times its decompressed size, plus STORED_SLACK.  The
# connector adds a few small fields per event (messageId, the corrected timestamp); with the
# batch-level objects stored once, real requests stay well under 2x.
STORED_FACTOR = 4
STORED_SLACK = 16 * 1024
_OUT_OF_RANGE = (
    "number_out_of_range",
    "an integer is outside the 64-bit range; send it as a string to keep it exact",
)

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

# Never forwarded: credentials that may travel inside the body, and what the connector sets.
_STRIPPED = ("writeKey", "receivedAt")


@dataclass
class Rejection:
    index: int
    code: str
    message: str
    message_id: str | None = None  # the item's own, when it has one (its trace, the overview)

    def as_dict(self) -> dict[str, Any]:
        return {"index": self.index, "code": self.code, "message": self.message}


@dataclass
class IngestResult:
    accepted: list[dict[str, Any]] = field(default_factory=list)
    rejected: list[Rejection] = field(default_factory=list)
    # The accepted events serialized once (as orjson fragments): the size and depth checks read
    # these bytes, and the broker message embeds them without encoding the events again.
    encoded: list[orjson.Fragment] = field(default_factory=list)
    # Fields common to every event, stored once per message (connector.contract).
    shared: dict[str, Any] = field(default_factory=dict)
    # Bytes the message will hold: the encoded events and the shared fields.
    stored_bytes: int = 0

    def expanded(self) -> list[dict[str, Any]]:
        """The accepted events as the workers will see them (shared fields merged in)."""
        return [expand(dict(event), self.shared) for event in self.accepted]


def iso(dt: datetime) -> str:
    """``2024-05-01T12:00:00.000Z``: Segment's form, UTC with milliseconds."""
    if dt.tzinfo is not UTC:
        dt = dt.astimezone(UTC)
    return dt.isoformat(timespec="milliseconds")[:-6] + "Z"  # drop "+00:00"


class InvalidTimestamp(Exception):
    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


def normalize(item: dict[str, Any], received_at: datetime, batch_sent_at: Any = None) -> dict[str, Any]:
    """A new dict: corrected (and clamped) timestamp, messageId; the fields the request's
    events share (receivedAt, batch sentAt, batch context/integrations) are NOT copied in.
    Raises :class:`InvalidTimestamp` when the skew arithmetic leaves the representable range."""
    event = dict(item)
    for key in _STRIPPED:
        event.pop(key, None)
    if event.get("sentAt") in (None, ""):
        event.pop("sentAt", None)
    sent_at = event.get("sentAt") or batch_sent_at
    timestamp = event.get("timestamp")
    if isinstance(timestamp, str) and timestamp:
        original = parse_utc(timestamp)
        if original is None:  # validated before; kept as a guard
            raise InvalidTimestamp("timestamp is not a representable ISO 8601 date-time")
        event["originalTimestamp"] = timestamp
        sent = parse_utc(sent_at) if isinstance(sent_at, str) and sent_at else None
        try:
            corrected = received_at - (sent - original) if sent is not None else original
        except OverflowError:
            raise InvalidTimestamp(
                "timestamp corrected for clock skew (receivedAt - (sentAt - timestamp)) is out of range"
            ) from None
        if corrected > received_at + FUTURE_SKEW:
            corrected = received_at
        event["timestamp"] = iso(corrected)
    else:
        event.pop("timestamp", None)  # the worker sets it to receivedAt (segment_message.expand)
    message_id = event.get("messageId")
    if not message_id:
        event["messageId"] = f"api-{uuid.uuid4()}"
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
        # A 20-digit userId fails its schema as "not a string or a number": say what it is.
        return _OUT_OF_RANGE if holds_out_of_range(item) else problem
    return str(kind)


def encode_checked(
    event: dict[str, Any], item: dict[str, Any], shared_objects: dict[str, Any], shared_size: int
) -> bytes | tuple[str, str]:
    """The event as JSON bytes, or ``(code, message)`` when too deep or too large.

    One ``orjson.dumps`` per event serves three purposes: the bytes go to the broker as they
    are, their length bounds the size, and their bracket count bounds the nesting (a JSON text
    with at most MAX_DEPTH brackets cannot nest deeper; only above that is the event walked).

    Segment's 32 KB applies to the event as it is once the batch-level objects are merged into
    it (``shared_size`` bounds what they add); the few fields the connector adds itself
    (messageId, the corrected timestamp) do not count.  Only when the cheap bound says "maybe
    too large" is the merged event built and measured.
    """
    try:
        dumped: bytes | None = orjson.dumps(event)
    except orjson.JSONEncodeError:  # nesting deeper than orjson's own bound, or an OUT_OF_RANGE
        dumped = None
    if (dumped is None or dumped.count(b"{") + dumped.count(b"[") > MAX_DEPTH) and depth_exceeds(event):
        return "nesting_too_deep", "the event nests objects too deeply"
    if dumped is None:
        if holds_out_of_range(event):
            return _OUT_OF_RANGE
        return "event_too_large", f"the event exceeds {MAX_EVENT_BYTES // 1024} KB"
    if len(dumped) + shared_size > MAX_EVENT_BYTES:
        merged = expand(dict(item), shared_objects)
        try:
            size = len(orjson.dumps(merged))
        except orjson.JSONEncodeError:
            size = MAX_EVENT_BYTES + 1
        if size > MAX_EVENT_BYTES:
            return "event_too_large", (
                f"the event exceeds {MAX_EVENT_BYTES // 1024} KB"
                + (" with the batch's context and integrations merged in" if shared_size else "")
            )
    return dumped


def _batch_objects(body: dict[str, Any]) -> tuple[dict[str, Any], int]:
    """The batch-level objects merged into every item, and an upper bound of what they add.

    Refused for the whole request when unusable for every item: nested too deep (merged into an
    item, ``{"context": ...}`` nests as deep as here) or holding an out-of-range integer."""
    objects = {key: body[key] for key in MERGED if isinstance(body.get(key), dict) and body[key]}
    if not objects:
        return {}, 0
    if depth_exceeds(objects):
        raise bad_request("nesting_too_deep", "the batch's context or integrations nest too deeply")
    if holds_out_of_range(objects):
        raise bad_request(*_OUT_OF_RANGE)
    try:
        return objects, len(orjson.dumps(objects))
    except orjson.JSONEncodeError:  # pragma: no cover - depth and types were checked above
        return objects, MAX_EVENT_BYTES + 1


def ingest_body(
    body: Any, path_type: str, now: datetime | None = None, *, raw_size: int | None = None
) -> IngestResult:
    """Validate and normalize a Tracking API body for ``path_type`` (a call type or 'batch').

    ``raw_size``: the decompressed size of the request, which bounds what it may store."""
    if not isinstance(body, dict):
        raise bad_request("not_an_object", "the body must be a JSON object")
    received_at = now or datetime.now(UTC)
    result = IngestResult()
    result.shared["receivedAt"] = iso(received_at)
    shared_objects: dict[str, Any] = {}
    shared_size = 0
    batch_sent_at: Any = None
    sent_problem: tuple[str, str] | None = None
    if path_type == "batch":
        items = body.get("batch")
        if not isinstance(items, list):
            raise bad_request("invalid_batch", "a batch body needs a 'batch' array of events")
        if len(items) > MAX_BATCH_EVENTS:
            raise bad_request(
                "too_many_events", f"a batch holds at most {MAX_BATCH_EVENTS} events, got {len(items)}"
            )
        shared_objects, shared_size = _batch_objects(body)
        result.shared.update(shared_objects)
        batch_sent_at = body.get("sentAt")
        if batch_sent_at in (None, ""):
            batch_sent_at = None
        elif isinstance(batch_sent_at, str) and parse_utc(batch_sent_at) is not None:
            result.shared["sentAt"] = batch_sent_at
        else:
            # Items that have no sentAt of their own would use it: those are refused.
            sent_problem = (
                "invalid_timestamp",
                "the batch's sentAt is not a representable ISO 8601 date-time",
            )
            batch_sent_at = None
        default_type = None
    else:
        items = [body]
        default_type = path_type
    for index, item in enumerate(items):
        checked = check_item(item, default_type)
        if isinstance(checked, tuple):
            result.rejected.append(Rejection(index, *checked))
            continue
        if sent_problem is not None and item.get("sentAt") in (None, ""):
            result.rejected.append(Rejection(index, *sent_problem))
            continue
        try:
            event = normalize(item, received_at, batch_sent_at)
        except InvalidTimestamp as exc:
            result.rejected.append(Rejection(index, "invalid_timestamp", exc.message))
            continue
        event["type"] = checked
        encoded = encode_checked(event, item, shared_objects, shared_size)
        if isinstance(encoded, tuple):
            result.rejected.append(Rejection(index, *encoded))
            continue
        result.accepted.append(event)
        result.encoded.append(orjson.Fragment(encoded))
        result.stored_bytes += len(encoded)
    for rejection in result.rejected:
        item = items[rejection.index]
        own = item.get("messageId") if isinstance(item, dict) else None
        if isinstance(own, str) and own:
            rejection.message_id = own[:100]
    if result.accepted:
        result.stored_bytes += len(orjson.dumps(result.shared))
    if raw_size is not None and result.stored_bytes > STORED_FACTOR * raw_size + STORED_SLACK:
        raise bad_request(
            "request_too_large",
            f"the request would store {result.stored_bytes} bytes, more than {STORED_FACTOR}x its size",
        )
    return result
