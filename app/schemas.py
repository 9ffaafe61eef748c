"""marshmallow schemas for the Segment Spec call types, as the ingest validates them.

Lean on purpose: they check what the pipeline relies on (identities, the per-type required
fields, the types of the objects the mappings read, timestamps, messageId) and let every other
field through untouched (``unknown = INCLUDE``), because Segment events carry arbitrary extra
data and each declared field costs time on the hot path (about 20k events/s per web worker).
"""

from __future__ import annotations

import functools
from datetime import UTC, datetime
from typing import Any

from marshmallow import INCLUDE, Schema, ValidationError, fields, validate, validates_schema

CALL_TYPES = ("identify", "track", "page", "screen", "group", "alias")
MAX_MESSAGE_ID = 100
MISSING = "Missing data for required field."
TIMESTAMP_MESSAGE = "must be an ISO 8601 date-time string representable in UTC"
# Every date-time field of an event: each one that is not a usable date-time rejects the event
# (invalid_timestamp) -- that event only, never its batch.
TIMESTAMP_FIELDS = frozenset({"timestamp", "sentAt", "originalTimestamp"})


class Identity(fields.Field):
    """userId / anonymousId / groupId / previousId: a string or a number (coerced later)."""

    def _deserialize(self, value: Any, attr: str | None, data: Any, **kwargs: Any) -> Any:
        if isinstance(value, bool) or not isinstance(value, (str, int, float)):
            raise ValidationError("must be a string or a number")
        if isinstance(value, str) and len(value) > 1024:
            raise ValidationError("longer than 1024 characters")
        return value


class IsoTimestamp(fields.Field):
    """An ISO 8601 date-time that is representable in UTC (year 1 with a positive offset, or
    9999 with a negative one, is not: it overflows the moment it is converted)."""

    def _deserialize(self, value: Any, attr: str | None, data: Any, **kwargs: Any) -> Any:
        if not isinstance(value, str) or parse_utc(value) is None:
            raise ValidationError(TIMESTAMP_MESSAGE)
        return value


class Scalar(fields.Field):
    """A string, a number or a boolean (``event``, page/screen ``name``, ``category``).

    Segment's Tracking API takes any of them and the destination maps each one (``404`` ->
    ``"404"``, ``0`` -> ``"Viewed 0 Page"``); only objects and arrays can never become a name."""

    def _deserialize(self, value: Any, attr: str | None, data: Any, **kwargs: Any) -> Any:
        if not isinstance(value, (str, int, float)):
            raise ValidationError("must be a string or a number")
        return value


class Object(fields.Field):
    """A JSON object (or null); its contents are free-form."""

    def _deserialize(self, value: Any, attr: str | None, data: Any, **kwargs: Any) -> Any:
        if not isinstance(value, dict):
            raise ValidationError("must be an object")
        return value


class Text(fields.Field):
    def __init__(self, max_length: int | None = None, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.max_length = max_length

    def _deserialize(self, value: Any, attr: str | None, data: Any, **kwargs: Any) -> Any:
        if not isinstance(value, str):
            raise ValidationError("must be a string")
        if self.max_length is not None and len(value) > self.max_length:
            raise ValidationError(f"longer than {self.max_length} characters")
        return value


class BaseEvent(Schema):
    class Meta:
        unknown = INCLUDE

    type = Text()
    userId = Identity(allow_none=True)
    anonymousId = Identity(allow_none=True)
    messageId = Text(max_length=MAX_MESSAGE_ID, allow_none=True)
    timestamp = IsoTimestamp(allow_none=True)
    sentAt = IsoTimestamp(allow_none=True)
    originalTimestamp = IsoTimestamp(allow_none=True)
    context = Object(allow_none=True)
    integrations = Object(allow_none=True)

    @validates_schema
    def _identity(self, data: dict[str, Any], **kwargs: Any) -> None:
        if not _present(data.get("userId")) and not _present(data.get("anonymousId")):
            raise ValidationError("either userId or anonymousId is required", "userId")


class IdentifyEvent(BaseEvent):
    traits = Object(allow_none=True)


class TrackEvent(BaseEvent):
    # Not required: Segment accepts a track without `event` (or with `event: null`) and the
    # destination then names the custom event from `name` (SPEC 3.4c).
    event = Scalar(allow_none=True)
    properties = Object(allow_none=True)


class PageEvent(BaseEvent):
    name = Scalar(allow_none=True)
    category = Scalar(allow_none=True)
    properties = Object(allow_none=True)


class GroupEvent(BaseEvent):
    groupId = Identity(required=True)
    traits = Object(allow_none=True)


class AliasEvent(BaseEvent):
    previousId = Identity(required=True)
    userId = Identity(required=True)


SCHEMAS: dict[str, Schema] = {
    "identify": IdentifyEvent(),
    "track": TrackEvent(),
    "page": PageEvent(),
    "screen": PageEvent(),
    "group": GroupEvent(),
    "alias": AliasEvent(),
}

# Stable rejection codes for a required field that is missing, by call type's field.
MISSING_CODES = {
    "groupId": "missing_group_id",
    "previousId": "missing_previous_id",
    "userId": "missing_user_id",
}


def _present(value: Any) -> bool:
    return value is not None and value != ""


def parse_timestamp(value: str) -> datetime:
    return datetime.fromisoformat(value)


@functools.lru_cache(maxsize=4096)
def parse_utc(value: str) -> datetime | None:
    """``value`` as a UTC datetime (naive means UTC), or None when it is not ISO 8601 or cannot
    be represented in UTC.

    Cached: the fast path validates an event's timestamp and normalization then uses it, and a
    batch's ``sentAt`` is the same string for every event."""
    try:
        dt = parse_timestamp(value)
        return dt.astimezone(UTC) if dt.tzinfo else dt.replace(tzinfo=UTC)
    except (TypeError, ValueError, OverflowError):
        return None


# ---------------------------------------------------------------------------------------------
# The fast path.  marshmallow costs ~30 us per event, most of the ingest's time per event.  The
# checks below are compiled FROM the schemas' declared fields (same fields, same required /
# allow_none flags, same per-field rules) and accept only what the schema accepts; anything they
# do not accept goes through marshmallow, which stays the one source of rejection codes and
# messages.  tests/test_schemas_fastpath.py holds them to that.


def _ok_identity(value: Any) -> bool:
    if isinstance(value, str):
        return len(value) <= 1024
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _ok_timestamp(value: Any) -> bool:
    return isinstance(value, str) and parse_utc(value) is not None


def _ok_object(value: Any) -> bool:
    return isinstance(value, dict)


def _ok_scalar(value: Any) -> bool:
    return isinstance(value, (str, int, float))


def _compile(schema: Schema) -> tuple[tuple[str, Any, bool, bool], ...] | None:
    checks = []
    for name, field in schema.fields.items():
        check: Any
        if isinstance(field, Identity):
            check = _ok_identity
        elif isinstance(field, IsoTimestamp):
            check = _ok_timestamp
        elif isinstance(field, Object):
            check = _ok_object
        elif isinstance(field, Scalar):
            check = _ok_scalar
        elif isinstance(field, Text):
            limit = field.max_length

            def check(value: Any, limit: int | None = limit) -> bool:
                return isinstance(value, str) and (limit is None or len(value) <= limit)

        else:  # a field kind the fast path does not know: always ask marshmallow
            return None
        if field.validators or field.data_key not in (None, name):
            return None
        checks.append((name, check, bool(field.required), bool(field.allow_none)))
    return tuple(checks)


_FAST = {call_type: _compile(schema) for call_type, schema in SCHEMAS.items()}


def surely_valid(event: dict[str, Any], call_type: str) -> bool:
    """True only when ``SCHEMAS[call_type]`` accepts ``event`` (False means: ask marshmallow)."""
    checks = _FAST.get(call_type)
    if checks is None:
        return False
    for name, check, required, allow_none in checks:
        if name in event:
            value = event[name]
            if value is None:
                if not allow_none:
                    return False
            elif not check(value):
                return False
        elif required:
            return False
    return _present(event.get("userId")) or _present(event.get("anonymousId"))


def validate_event(event: dict[str, Any], call_type: str) -> tuple[str, str] | None:
    """None when valid, else ``(code, message)`` for the first problem found."""
    if surely_valid(event, call_type):
        return None
    schema = SCHEMAS[call_type]
    errors = schema.validate(event)
    if not errors:
        return None
    field, messages = next(iter(errors.items()))
    text = messages[0] if isinstance(messages, list) and messages else str(messages)
    if isinstance(text, dict):
        text = "invalid value"
    if text == MISSING:
        return MISSING_CODES.get(field, "missing_field"), f"{call_type} requires {field}"
    if text.startswith("either userId"):
        return "missing_identity", "every event needs a userId or an anonymousId"
    if field in TIMESTAMP_FIELDS:
        return "invalid_timestamp", f"{field} {text}"
    if field == "messageId" and "longer" in text:
        return "message_id_too_long", f"messageId is {text}"
    return "invalid_field", f"{field} {text}" if not text.startswith(field) else text


# --- regulations (SPEC 14: the shape of Segment's Public API createRegulation) -----------------

REGULATION_TYPES = ("SUPPRESS_WITH_DELETE", "DELETE_ONLY", "SUPPRESS_ONLY", "UNSUPPRESS")
MAX_SUBJECTS = 5000


class SubjectId(fields.Field):
    """A user id as the ingest accepts it (a string, or a number: compared as its text)."""

    def _deserialize(self, value: Any, attr: str | None, data: Any, **kwargs: Any) -> Any:
        if isinstance(value, bool) or not isinstance(value, (str, int)):
            raise ValidationError("must be a string")
        text = str(value)
        if not text or len(text) > 1024:
            raise ValidationError("must be 1 to 1024 characters")
        return text


class RegulationSchema(Schema):
    class Meta:
        unknown = INCLUDE  # Segment's API takes more (e.g. a workspace's fields): ignored

    regulationType = fields.String(
        required=True,
        validate=validate.OneOf(REGULATION_TYPES, error="must be one of " + ", ".join(REGULATION_TYPES)),
    )
    subjectType = fields.String(required=True, validate=validate.OneOf(("USER_ID",), error="must be USER_ID"))
    subjectIds = fields.List(
        SubjectId(),
        required=True,
        validate=validate.Length(min=1, max=MAX_SUBJECTS, error=f"must hold 1 to {MAX_SUBJECTS} ids"),
    )
    connections = fields.List(fields.String(), load_default=None, allow_none=True)
