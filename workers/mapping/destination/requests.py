"""Mapped payload -> :class:`~workers.outbound.OutboundRequest`, for both delivery modes (SPEC 3.5).

* ``segmentio``: the body is the mapped payload unchanged, posted to the endpoint Voucherify runs
  for Segment's Actions destination.
* ``rest``: the payload is reshaped into Voucherify's public API bodies (``POST /v1/customers``,
  ``POST /v1/events``), which must validate against ``CustomersCreateRequestBody`` /
  ``EventsCreateRequestBody`` apart from ``null`` values that clear an attribute.  The classic
  destination's fallbacks live here because they are about Voucherify's shape (``name`` joined
  from first and last names, ``street -> line_1``, ``postalCode``, event name from the type).

Credentials never enter an :class:`OutboundRequest` (they are stored in retry and dead-letter
records): the target adds its credentials at the last moment (:mod:`workers.targets.voucherify`).
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Mapping
from datetime import date
from typing import Any, Final

from connector import CHANNEL, USER_AGENT
from workers.mapping.destination.actions import ADD_CUSTOM_EVENT, UPSERT_CUSTOMER, Action
from workers.mapping.destination.fields import coerce_string
from workers.mapping.destination.mapping import MISSING
from workers.outbound import OutboundRequest

JSON_CONTENT_TYPE: Final = "application/json"
_DATE_PREFIX_RE: Final = re.compile(r"^(\d{4}-\d{2}-\d{2})(?:$|[T ])")
_SCALARS: Final = (str, int, float, bool)


def static_headers(mode: str) -> dict[str, str]:
    """Non-secret headers common to every request of a mode (``Idempotency-Key`` is added per call)."""
    if mode == "segmentio":
        return {"Content-Type": JSON_CONTENT_TYPE, "User-Agent": USER_AGENT}
    return {"Content-Type": JSON_CONTENT_TYPE, "User-Agent": USER_AGENT, "X-Voucherify-Channel": CHANNEL}


def fallback_message_id(event: Mapping[str, Any]) -> str:
    """Deterministic stand-in when an event has no messageId (the ingest always sets one)."""
    canonical = json.dumps(event, sort_keys=True, separators=(",", ":"), default=str)
    return "sha1-" + hashlib.sha1(canonical.encode(), usedforsecurity=False).hexdigest()


class RequestBuilder:
    """Everything about one (connection, subscription) that does not depend on the event."""

    __slots__ = ("_action", "_cid", "_headers", "_key_suffix", "_kind", "_mode", "_path", "_prefix")

    def __init__(
        self,
        action: Action,
        *,
        mode: str,
        connection_id: str,
        key_suffix: str = "",
        group_prefix: str = "segment_group_",
    ) -> None:
        if mode not in ("rest", "segmentio"):
            raise ValueError(f"unknown Voucherify mode {mode!r}")
        self._action = action.key
        self._kind = action.key
        self._mode = mode
        self._cid = connection_id
        self._key_suffix = key_suffix
        self._prefix = group_prefix
        self._path = action.segmentio_path if mode == "segmentio" else action.rest_path
        self._headers = static_headers(mode)

    def build(
        self,
        payload: dict[str, Any],
        event: Mapping[str, Any],
        extras: Mapping[str, Any],
        *,
        attributes: Mapping[str, Any] | None = None,
    ) -> OutboundRequest:
        """The request for a mapped payload.  ``attributes``: an Upsert Customer payload whose
        attributes a rest custom event carries in its ``customer`` (classic track tables)."""
        message_id = event.get("messageId")
        if not message_id:
            message_id = fallback_message_id(event)
        key = f"{self._cid}:v:{message_id}:{self._action}{self._key_suffix}"
        kind = self._kind
        if kind == UPSERT_CUSTOMER:
            customer = payload.get("source_id")
        else:
            customer = payload["customer"].get("source_id")
        if self._mode == "segmentio":
            body: dict[str, Any] = payload
            headers = dict(self._headers)
        else:
            if kind == UPSERT_CUSTOMER:
                body = rest_customer_body(payload, extras)
            elif kind == ADD_CUSTOM_EVENT:
                body = rest_event_body(payload, event, attributes)
            else:
                body = rest_group_body(payload, self._prefix)
            headers = {**self._headers, "Idempotency-Key": key}
        timestamp = event.get("timestamp")
        return OutboundRequest(
            method="POST",
            path=self._path,
            body=body,
            idempotency_key=key,
            action=self._action,
            headers=headers,
            customer=customer,
            event_time=timestamp if isinstance(timestamp, str) else None,
            message_id=str(message_id),
        )


# ---------------------------------------------------------------------------------------------
# REST bodies


def _text(value: Any) -> Any:
    """A classic extra (read from the raw event) as a non-empty string, else MISSING."""
    if value is MISSING or value is None:
        return MISSING
    text = value if isinstance(value, str) else coerce_string(value)
    return text if isinstance(text, str) and text.strip() else MISSING


def birthdate(value: Any) -> Any:
    """``YYYY-MM-DD`` from a date or an ISO datetime; ``None`` stays (clears); else MISSING.

    An unparseable birthdate is left out rather than sent: Voucherify would refuse the whole
    upsert, and one bad trait must not lose the rest of the customer update.
    """
    if value is None:
        return None
    if not isinstance(value, str):
        return MISSING
    m = _DATE_PREFIX_RE.match(value.strip())
    if not m:
        return MISSING
    try:
        date.fromisoformat(m.group(1))
    except ValueError:
        return MISSING
    return m.group(1)


def rest_customer_body(payload: Mapping[str, Any], extras: Mapping[str, Any]) -> dict[str, Any]:
    """Upsert Customer payload -> ``CustomersCreateRequestBody``."""
    body: dict[str, Any] = {"source_id": payload["source_id"]}
    if "name" in payload:
        body["name"] = payload["name"]  # a string, or null to clear it
    else:
        first = _text(payload.get("first_name", MISSING)) or _text(extras.get("firstName", MISSING))
        last = _text(payload.get("last_name", MISSING)) or _text(extras.get("lastName", MISSING))
        joined = " ".join(part.strip() for part in (first, last) if part is not MISSING)
        if joined:
            body["name"] = joined
    for key in ("description", "email", "phone"):
        if key in payload:
            body[key] = payload[key]
    raw_birthdate = payload["birthdate"] if "birthdate" in payload else extras.get("birthday", MISSING)
    day = birthdate(raw_birthdate)
    if day is not MISSING:
        body["birthdate"] = day
    address = _rest_address(payload.get("address") or {}, extras)
    if address:
        body["address"] = address
    if "metadata" in payload:
        metadata = payload["metadata"]
        if metadata is None or metadata:  # null clears; an empty object says nothing: left out
            body["metadata"] = metadata
    return body


def _rest_address(src: Mapping[str, Any], extras: Mapping[str, Any]) -> dict[str, Any]:
    address: dict[str, Any] = {}
    for target, value in (
        ("city", src.get("city", MISSING)),
        ("state", src.get("state", MISSING)),
        ("line_1", src.get("street", MISSING) if "street" in src else _text(extras.get("line_1", MISSING))),
        ("line_2", _text(extras.get("line_2", MISSING))),
        ("country", src.get("country", MISSING)),
        (
            "postal_code",
            src.get("postal_code", MISSING)
            if "postal_code" in src
            else _text(extras.get("postalCode", MISSING)),
        ),
    ):
        if value is not MISSING and (value is None or isinstance(value, str)):
            address[target] = value
    return address


def rest_event_body(
    payload: Mapping[str, Any], event: Mapping[str, Any], attributes: Mapping[str, Any] | None = None
) -> dict[str, Any]:
    """Add Custom Event payload -> ``EventsCreateRequestBody``.

    ``attributes`` (an Upsert Customer payload) fill the ``customer`` object beside its
    ``source_id`` and ``email``: Voucherify's events take the customer's attributes
    (``Customer`` = ``CustomerBase`` + ids), and apply them as an upsert would.
    """
    name = payload.get("event")
    if not name:
        # Classic fallback: the call type names the event (Voucherify requires a name).
        name = payload.get("type") or str(event.get("type") or "")
    customer = payload["customer"]
    if attributes is not None:
        customer = dict(customer)
        for key, value in rest_customer_body(attributes, {}).items():
            customer.setdefault(key, value)
    body: dict[str, Any] = {"event": name, "customer": customer}
    # Voucherify requires `code` in both objects: without one they say nothing and are left out.
    referral = payload.get("referral")
    if referral and referral.get("code"):
        body["referral"] = referral
    loyalty = payload.get("loyalty")
    if loyalty and loyalty.get("code"):
        body["loyalty"] = loyalty
    metadata = payload.get("metadata")
    if metadata:
        body["metadata"] = metadata
    return body


def rest_group_body(payload: Mapping[str, Any], prefix: str) -> dict[str, Any]:
    """Assign Customer To Group payload -> a customer upsert carrying the group in its metadata.

    Only scalar traits are copied (Voucherify metadata is flat); a ``null`` trait clears its key.
    The group id is written last so that a trait named ``id`` cannot overwrite it.
    """
    customer = payload["customer"]
    body: dict[str, Any] = {"source_id": customer["source_id"]}
    if "email" in customer:
        body["email"] = customer["email"]
    group_key = prefix + "id"
    metadata: dict[str, Any] = {group_key: payload["group_id"]}
    traits = payload.get("traits")
    if traits:
        for key, value in traits.items():
            if (value is None or isinstance(value, _SCALARS)) and prefix + str(key) != group_key:
                metadata[prefix + str(key)] = value
    body["metadata"] = metadata
    return body
