"""Customer metadata kept to the project's metadata schema (``metadata_schema = "defined"``).

Seed 003: "The integration updates only the defined customer metadata.  The undefined metadata or
data that does not match the defined data type is omitted."  Voucherify's segmentio endpoint
does that by itself; in ``rest`` mode the connector does it, with the schema Voucherify answers
to ``GET /v1/metadata-schemas`` (its ``related_object: "customer"`` entry).

Pure: the schema is data passed in (:class:`CustomerMetadataSchema`); reading it, caching it and
refreshing it is the delivery side's job (:mod:`workers.targets.voucherify_schema`).  A key is
kept when the schema defines it (and does not mark it ``deleted``) and the value has the defined
type (``array: true``: a list of such values) and, when the schema lists allowed values (``eq``),
is one of them.  ``null`` is kept for a defined key: it removes the key, as a user clearing an
attribute expects.  Everything else is dropped and reported as ``(key, reason)``.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from datetime import date, datetime
from typing import Any, Final

from workers.outbound import OutboundRequest

UNDEFINED: Final = "undefined"
WRONG_TYPE: Final = "wrong_type"
NOT_ALLOWED: Final = "not_allowed"
_DATE_RE: Final = re.compile(r"^\d{4}-\d{2}-\d{2}$")


@dataclass(frozen=True)
class Property:
    type: str  # string number object date datetime geopoint boolean image_url (or unknown)
    array: bool = False
    allowed: tuple[Any, ...] | None = None  # `eq` of the schema


@dataclass(frozen=True)
class CustomerMetadataSchema:
    properties: Mapping[str, Property] = field(default_factory=dict)

    @classmethod
    def from_listing(cls, body: Any) -> CustomerMetadataSchema:
        """From the answer to ``GET /v1/metadata-schemas`` (no customer schema: nothing defined)."""
        schemas = body.get("schemas") if isinstance(body, Mapping) else None
        if not isinstance(schemas, list):
            raise ValueError("not a metadata schema listing (no `schemas` array)")
        props: dict[str, Property] = {}
        for schema in schemas:
            if not isinstance(schema, Mapping) or schema.get("related_object") != "customer":
                continue
            definitions = schema.get("properties")
            for name, spec in definitions.items() if isinstance(definitions, Mapping) else ():
                if not isinstance(spec, Mapping) or spec.get("deleted") is True:
                    continue
                allowed = spec.get("eq")
                props[str(name)] = Property(
                    type=str(spec.get("type") or ""),
                    array=spec.get("array") is True,
                    allowed=tuple(allowed) if isinstance(allowed, list) and allowed else None,
                )
        return cls(props)

    def to_json(self) -> dict[str, Any]:
        return {
            name: {"type": p.type, "array": p.array, "allowed": list(p.allowed) if p.allowed else None}
            for name, p in self.properties.items()
        }

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> CustomerMetadataSchema:
        return cls(
            {
                name: Property(
                    str(p.get("type") or ""),
                    bool(p.get("array")),
                    tuple(p["allowed"]) if p.get("allowed") else None,
                )
                for name, p in data.items()
                if isinstance(p, Mapping)
            }
        )


def _is_datetime(value: str) -> bool:
    try:
        datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        return False
    return "T" in value or " " in value


def _is_date(value: str) -> bool:
    if not _DATE_RE.match(value):
        return False
    try:
        date.fromisoformat(value)
    except ValueError:
        return False
    return True


def _one_of_type(kind: str, value: Any) -> bool:
    if kind in ("string", "image_url"):
        return isinstance(value, str)
    if kind == "number":
        return isinstance(value, int | float) and not isinstance(value, bool)
    if kind == "boolean":
        return isinstance(value, bool)
    if kind in ("object", "geopoint"):
        return isinstance(value, Mapping)
    if kind == "date":
        return isinstance(value, str) and _is_date(value)
    if kind == "datetime":
        return isinstance(value, str) and _is_datetime(value)
    return True  # a type this connector does not know: Voucherify decides


def check_value(prop: Property, value: Any) -> str | None:
    """None when ``value`` suits the definition, else the reason it does not."""
    items = value if prop.array else [value]
    if prop.array and not isinstance(value, list):
        return WRONG_TYPE
    for item in items:
        if not _one_of_type(prop.type, item):
            return WRONG_TYPE
        if prop.allowed is not None and item not in prop.allowed:
            return NOT_ALLOWED
    return None


def filter_metadata(
    metadata: Mapping[str, Any], schema: CustomerMetadataSchema
) -> tuple[dict[str, Any], list[tuple[str, str]]]:
    """The metadata the schema allows, and what was dropped as ``(key, reason)``."""
    kept: dict[str, Any] = {}
    dropped: list[tuple[str, str]] = []
    for key, value in metadata.items():
        prop = schema.properties.get(key)
        if prop is None:
            dropped.append((key, UNDEFINED))
            continue
        reason = None if value is None else check_value(prop, value)
        if reason is None:
            kept[key] = value
        else:
            dropped.append((key, reason))
    return kept, dropped


def _filtered_customer(customer: Any, schema: CustomerMetadataSchema, dropped: list[tuple[str, str]]) -> Any:
    if not isinstance(customer, Mapping) or not isinstance(customer.get("metadata"), Mapping):
        return customer
    kept, lost = filter_metadata(customer["metadata"], schema)
    if not lost:
        return customer
    dropped.extend(lost)
    out = dict(customer)
    if kept:
        out["metadata"] = kept
    else:
        del out["metadata"]  # an empty object says nothing
    return out


def carries_customer_metadata(request: OutboundRequest) -> bool:
    """Does this rest request write customer metadata (upserts, bulk upserts, events' customer)?"""
    return request.path in ("/v1/customers", "/v1/customers/bulk/async", "/v1/events")


def filter_request(
    request: OutboundRequest, schema: CustomerMetadataSchema
) -> tuple[OutboundRequest, list[tuple[str, str]]]:
    """``request`` with its customer metadata kept to ``schema`` (the same object when nothing is
    dropped), and the dropped ``(key, reason)`` pairs."""
    dropped: list[tuple[str, str]] = []
    body = request.body
    if request.path == "/v1/customers":
        new_body: Any = _filtered_customer(body, schema, dropped)
    elif request.path == "/v1/customers/bulk/async" and isinstance(body, list):
        new_body = [_filtered_customer(c, schema, dropped) for c in body]
    elif request.path == "/v1/events" and isinstance(body, Mapping):
        customer = _filtered_customer(body.get("customer"), schema, dropped)
        new_body = {**body, "customer": customer} if dropped else body
    else:
        return request, dropped
    if not dropped:
        return request, dropped
    return replace(request, body=new_body), dropped


__all__ = [
    "NOT_ALLOWED",
    "UNDEFINED",
    "WRONG_TYPE",
    "CustomerMetadataSchema",
    "Property",
    "carries_customer_metadata",
    "filter_metadata",
    "filter_request",
]
