"""Recognise a Voucherify webhook body and normalise it (SPEC 4.1).

Three shapes arrive at ``/webhooks/voucherify/<connection_id>``:

``2024-01-01``
    ``{id: <sendout id>, project_id, created_at, type, data: {...objects}, source: {id, object,
    target_url}, event: {id, type, created_at, entity_id, group_id, event_source}}``.  The event id
    is ``event.id``; ``id`` changes with every sendout, so it is useless for deduplication.
``2018-08-01``
    ``{id: <event id>, object: "event", webhook_id, project_id, created_at, type, data, metadata}``.
``activity``
    A customer activity object as the API lists it (``{id, type, data, created_at, group_id}``), with
    ``type`` either dotted (``customer.redemption.succeeded``) or an internal webhook name
    (``EVENTS.CUSTOMER.REDEMPTION.SUCCEEDED``).

Whatever the shape, :class:`VoucherifyEvent` carries the same ``event_id``, normalised ``type``,
``created_at`` and ``data`` (the mapping of objects: ``customer``, ``order``, ``voucher``...), so
the same event delivered in two envelope versions maps to the same Segment call.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Final

from connector.errors import MappingError

ENVELOPE_2024: Final = "2024-01-01"
ENVELOPE_2018: Final = "2018-08-01"
ENVELOPE_ACTIVITY: Final = "activity"

# A webhook's created_at may run this far ahead of our clock (clocks differ a little); further
# ahead it is refused, as its age could not be trusted.
FUTURE_SKEW_SECONDS: Final = 300.0

# Bounds on what we accept as identifiers: they end up in Redis keys, log lines and metrics.
MAX_ID_LENGTH: Final = 200
MAX_TYPE_LENGTH: Final = 200

# Internal (dashboard / OpenAPI) names that do not lower-case into the dotted webhook name.
_TYPE_ALIASES: Final[Mapping[str, str]] = {
    "customer.rewarded.main": "customer.rewarded",
}
_PREFIX_ALIASES: Final = (("bus_val_rule.", "business_validation_rule."),)

_SHAPES_HELP: Final = (
    "expected a Voucherify webhook: v2024-01-01 (id, type, data, event {id, type, created_at}), "
    'v2018-08-01 (id, object "event", webhook_id, type, data, created_at) or a customer activity '
    "(id, type, data, created_at)"
)


@dataclass(frozen=True)
class VoucherifyEvent:
    event_id: str
    type: str  # normalised: lower-case, dotted, e.g. "customer.redemption.succeeded"
    created_at: str  # as sent
    created_at_epoch: float | None  # None when created_at is not an ISO 8601 date-time
    data: Mapping[str, Any]  # the event's objects: customer, order, voucher, ...
    envelope_version: str  # ENVELOPE_2024 | ENVELOPE_2018 | ENVELOPE_ACTIVITY
    project_id: str | None
    raw_type: str = ""  # the type as sent, for logs
    sendout_id: str | None = None  # 2024 `id` / 2018 `webhook_id`: one delivery, not the event


def normalize_type(raw: str) -> str:
    """``EVENTS.CUSTOMER.REWARDED.MAIN`` / ``Customer.Rewarded`` -> ``customer.rewarded``."""
    text = raw.strip()
    if text[:7].upper() == "EVENTS.":
        text = text[7:]
    text = text.lower()
    text = _TYPE_ALIASES.get(text, text)
    for old, new in _PREFIX_ALIASES:
        if text.startswith(old):
            text = new + text[len(old) :]
    return text


def parse_webhook(body: Mapping[str, Any]) -> VoucherifyEvent:
    """Normalise a webhook body; :class:`MappingError` when it is not a recognisable webhook."""
    if not isinstance(body, Mapping):
        raise MappingError(f"{_SHAPES_HELP}; got a JSON {_json_kind(body)}")
    envelope_event = body.get("event")
    if isinstance(envelope_event, Mapping):
        return _parse_2024(body, envelope_event)
    if body.get("object") == "event" or "webhook_id" in body:
        return _parse_flat(body, ENVELOPE_2018, "v2018-08-01 webhook", body.get("webhook_id"))
    if "type" in body and "data" in body and "id" in body:
        return _parse_flat(body, ENVELOPE_ACTIVITY, "customer activity", None)
    raise MappingError(_SHAPES_HELP)


def event_age_seconds(event: VoucherifyEvent, now_epoch: float) -> float | None:
    """Seconds since the event was created (negative if it claims to be from the future).

    None when ``created_at`` could not be read: the caller decides what unknown age means.
    """
    if event.created_at_epoch is None:
        return None
    return now_epoch - event.created_at_epoch


def parse_timestamp(value: str) -> float | None:
    """Epoch seconds of an ISO 8601 date-time; naive values are taken as UTC.  None if unreadable
    or not representable (year 1 with a positive offset, 9999 with a negative one)."""
    try:
        parsed = datetime.fromisoformat(value.strip())
        if parsed.tzinfo is None:
            parsed = parsed.replace(tzinfo=UTC)
        return parsed.astimezone(UTC).timestamp()
    except (ValueError, OverflowError):
        return None


# --------------------------------------------------------------------------------------------


def _parse_2024(body: Mapping[str, Any], event: Mapping[str, Any]) -> VoucherifyEvent:
    where = "v2024-01-01 webhook"
    event_id = _identifier(event.get("id"), where, "event.id")
    source = body.get("source")
    from_distribution = isinstance(source, Mapping) and source.get("object") == "distribution"
    # Project-settings webhooks name the event in `type`; a distribution's `type` is whatever the
    # user typed in the distribution's "Event name" field, so the real type is event.type there.
    candidates = (
        (event.get("type"), body.get("type")) if from_distribution else (body.get("type"), event.get("type"))
    )
    raw_type = _first_str(*candidates)
    created_at = _first_str(event.get("created_at"), body.get("created_at"))
    return _event(
        event_id=event_id,
        raw_type=raw_type,
        created_at=created_at,
        data=body.get("data"),
        version=ENVELOPE_2024,
        project_id=body.get("project_id"),
        sendout_id=body.get("id"),
        where=where,
        type_field="type (or event.type)",
        created_field="event.created_at (or created_at)",
    )


def _parse_flat(body: Mapping[str, Any], version: str, where: str, sendout_id: Any) -> VoucherifyEvent:
    """The 2018-08-01 envelope and customer activity objects: the event's fields at the top."""
    return _event(
        event_id=_identifier(body.get("id"), where, "id"),
        raw_type=_first_str(body.get("type")),
        created_at=_first_str(body.get("created_at")),
        data=body.get("data"),
        version=version,
        project_id=body.get("project_id"),
        sendout_id=sendout_id,
        where=where,
        type_field="type",
        created_field="created_at",
    )


def _event(
    *,
    event_id: str,
    raw_type: str | None,
    created_at: str | None,
    data: Any,
    version: str,
    project_id: Any,
    sendout_id: Any,
    where: str,
    type_field: str,
    created_field: str,
) -> VoucherifyEvent:
    if not raw_type or not raw_type.strip():
        raise MappingError(f"{where}: {type_field} is missing or not a string")
    if len(raw_type) > MAX_TYPE_LENGTH:
        raise MappingError(f"{where}: {type_field} is longer than {MAX_TYPE_LENGTH} characters")
    if not created_at:
        raise MappingError(f"{where}: {created_field} is missing or not a string")
    if not isinstance(data, Mapping):
        raise MappingError(f"{where}: data must be an object, got {_json_kind(data)}")
    return VoucherifyEvent(
        event_id=event_id,
        type=normalize_type(raw_type),
        created_at=created_at,
        created_at_epoch=parse_timestamp(created_at),
        data=_event_objects(data),
        envelope_version=version,
        project_id=project_id if isinstance(project_id, str) else None,
        raw_type=raw_type,
        sendout_id=sendout_id if isinstance(sendout_id, str) else None,
    )


def _event_objects(data: Mapping[str, Any]) -> Mapping[str, Any]:
    """The mapping of the event's objects, wherever the envelope put it."""
    # Customer activities (and the documented v2024 publication.succeeded payload) nest the
    # objects one level deeper: {"data": {"data": {...objects}, "event_source": {...}}}.
    for _ in range(2):
        inner = data.get("data")
        if isinstance(inner, Mapping) and "customer" not in data:
            data = inner
        else:
            break
    # Older v2018-08-01 payloads carried {"object": {...}, "related_object": {...}}: name each by
    # its own `object` tag so the customer is found the same way as in newer payloads.
    if isinstance(data.get("object"), Mapping):
        objects: dict[str, Any] = {}
        for key in ("object", "related_object"):
            value = data.get(key)
            if isinstance(value, Mapping):
                tag = value.get("object")
                objects.setdefault(tag if isinstance(tag, str) and tag else key, value)
        for key, value in data.items():
            if key not in ("object", "related_object"):
                objects.setdefault(key, value)
        return objects
    return data


def _identifier(value: Any, where: str, field: str) -> str:
    if isinstance(value, int) and not isinstance(value, bool):
        value = str(value)
    if not isinstance(value, str) or not value.strip():
        raise MappingError(f"{where}: {field} (the event id) is missing or not a string")
    if len(value) > MAX_ID_LENGTH:
        raise MappingError(f"{where}: {field} is longer than {MAX_ID_LENGTH} characters")
    return value


def _first_str(*values: Any) -> str | None:
    for value in values:
        if isinstance(value, str) and value.strip():
            return value
    return None


def _json_kind(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, int | float):
        return "number"
    if isinstance(value, str):
        return "string"
    if isinstance(value, list):
        return "array"
    if isinstance(value, Mapping):
        return "object"
    return type(value).__name__
