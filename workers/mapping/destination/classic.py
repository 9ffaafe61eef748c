"""The classic destination's default mappings and its "Identify Mapping" / "Track Mapping" tables
(seed 004, SPEC 3.4b), said in the Actions' own field mappings.

``defaults = "classic"`` in ``[connection.destination]`` makes identify and track calls use the
classic tables below instead of the Actions presets; ``identify_mapping`` / ``track_mapping``
(``"src.path" = "dest.path"``) adjust whichever defaults are in force:

* a user entry replaces the default entries that have the same destination, and comes first;
  an entry whose destination is ``""`` removes the default entry of that source;
* when several sources feed one destination, the first one present (not null) wins, in table
  order; when none is present the first source's own value is used (so ``null`` still clears);
* ``customer.metadata.<key>`` entries build the metadata key by key, merged over a whole
  ``customer.metadata`` entry.

Destinations (``customer.firstName`` and the other camelCase spellings are the classic ones):

* both tables: ``customer.source_id``, ``customer.name``, ``customer.firstName``,
  ``customer.lastName``, ``customer.email``, ``customer.description``, ``customer.phone``,
  ``customer.birthdate``, ``customer.address.{city,state,line_1,country,postal_code}``,
  ``customer.metadata``, ``customer.metadata.<key>``;
* track only: ``event``, ``metadata``, ``metadata.<key>`` (the custom event's own metadata),
  ``referral.code``, ``referral.referrer_id``, ``loyalty.code``.

A track call whose table reaches customer attributes other than ``source_id`` and ``email``
updates the customer too: in ``rest`` mode inside the custom event's ``customer`` (one call, as
Voucherify's ``POST /v1/events`` takes the customer's attributes), in ``segmentio`` mode as a
customer-processing call before the event-processing one (that payload has no room for them).
Classic fallbacks (seed 004): the event name is ``event`` else the call type; ``source_id`` is
``userId`` else ``anonymousId`` (with ``anonymous_fallback``, the default); the name is built
from first and last name when absent (``rest``).  Page, screen and group keep the Actions presets.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Final

from connector.connections import flatten_table
from workers.mapping.destination.actions import (
    ADD_CUSTOM_EVENT,
    UPSERT,
    USER_ID,
    USER_ID_ELSE_ANONYMOUS_ID,
    Action,
    default_mappings,
)
from workers.mapping.destination.mapping import MISSING

Table = tuple[tuple[str, str], ...]

_CLASSIC_CUSTOMER: Final = (
    ("name", "customer.name"),
    ("firstName", "customer.firstName"),
    ("lastName", "customer.lastName"),
    ("email", "customer.email"),
    ("description", "customer.description"),
    ("address.city", "customer.address.city"),
    ("address.state", "customer.address.state"),
    ("address.street", "customer.address.line_1"),
    ("address.country", "customer.address.country"),
    ("address.postalCode", "customer.address.postal_code"),
    ("phone", "customer.phone"),
    ("metadata", "customer.metadata"),
)
# SPEC 3.3: the classic fallbacks understand the snake_case spellings too (after the camelCase).
_SNAKE_CASE: Final = (
    ("first_name", "customer.firstName"),
    ("last_name", "customer.lastName"),
    ("address.postal_code", "customer.address.postal_code"),
)
CLASSIC_IDENTIFY: Final[Table] = tuple((f"traits.{s}", d) for s, d in (*_CLASSIC_CUSTOMER, *_SNAKE_CASE))
CLASSIC_TRACK: Final[Table] = tuple((f"properties.{s}", d) for s, d in (*_CLASSIC_CUSTOMER, *_SNAKE_CASE))

# Destination -> the Upsert Customer field path (customer.* destinations, both tables).
_CUSTOMER_FIELDS: Final[Mapping[str, tuple[str, ...]]] = {
    "customer.source_id": ("source_id",),
    "customer.name": ("name",),
    "customer.firstName": ("first_name",),
    "customer.first_name": ("first_name",),
    "customer.lastName": ("last_name",),
    "customer.last_name": ("last_name",),
    "customer.email": ("email",),
    "customer.description": ("description",),
    "customer.phone": ("phone",),
    "customer.birthdate": ("birthdate",),
    "customer.birthday": ("birthdate",),
    "customer.address.city": ("address", "city"),
    "customer.address.state": ("address", "state"),
    "customer.address.line_1": ("address", "street"),
    "customer.address.street": ("address", "street"),
    "customer.address.country": ("address", "country"),
    "customer.address.postal_code": ("address", "postal_code"),
    "customer.address.postalCode": ("address", "postal_code"),
    "customer.metadata": ("metadata",),
}
# Destination -> the Add Custom Event field path (track only).
_EVENT_FIELDS: Final[Mapping[str, tuple[str, ...]]] = {
    "event": ("event",),
    "metadata": ("metadata",),
    "referral.code": ("referral", "code"),
    "referral.referrer_id": ("referral", "referrer_id"),
    "loyalty.code": ("loyalty", "code"),
    "customer.source_id": ("customer", "source_id"),
    "customer.email": ("customer", "email"),
}
_SOURCE_RE: Final = re.compile(r"^(?:\$\.)?[A-Za-z_$][\w$-]*(?:\.[\w$-]+)*$")
_META_KEY_RE: Final = re.compile(r"^[^.\s]+$")
EVENT_NAME_CLASSIC: Final[Mapping[str, Any]] = {
    "@if": {"exists": {"@path": "$.event"}, "then": {"@path": "$.event"}, "else": {"@path": "$.type"}}
}


def _destination_problem(dest: str, track: bool) -> str | None:
    if dest == "":
        return None
    if dest in _CUSTOMER_FIELDS or (track and dest in _EVENT_FIELDS):
        return None
    for prefix in ("customer.metadata.", *(("metadata.",) if track else ())):
        if dest.startswith(prefix) and _META_KEY_RE.match(dest[len(prefix) :]):
            return None
    known = [*sorted(_CUSTOMER_FIELDS), "customer.metadata.<key>"]
    if track:
        known += [*sorted(set(_EVENT_FIELDS) - set(_CUSTOMER_FIELDS)), "metadata.<key>"]
    return f"unknown destination {dest!r} (known: {', '.join(known)})"


def validate_table(raw: Any, *, track: bool) -> list[str]:
    """Problems with an ``identify_mapping`` / ``track_mapping`` table (start-up errors)."""
    if not isinstance(raw, Mapping):
        return ['must be a table of "src.path" = "dest.path"']
    errors: list[str] = []
    for src, dest in flatten_table(raw).items():
        if not isinstance(dest, str):
            errors.append(f'{src}: the destination must be a string path such as "customer.name"')
            continue
        if not _SOURCE_RE.match(src):
            errors.append(f"{src}: not a path into the event (such as traits.email)")
        problem = _destination_problem(dest, track)
        if problem:
            errors.append(f"{src}: {problem}")
    return errors


def merged_table(defaults: Table, user: Table) -> Table:
    """User entries first; they replace default entries of the same destination; ``""`` removes."""
    removed = {src for src, dest in user if dest == ""}
    targeted = {dest for _src, dest in user if dest}
    kept = tuple((s, d) for s, d in defaults if s not in removed and d not in targeted)
    return tuple((s, d) for s, d in user if d) + kept


def _path(src: str) -> dict[str, str]:
    return {"@path": src if src.startswith("$.") else "$." + src}


def first_present(sources: Sequence[str]) -> Mapping[str, Any]:
    """The first of ``sources`` that exists (not null), else the first one's own value."""
    mapping: Mapping[str, Any] = _path(sources[0])
    if len(sources) == 1:
        return mapping
    for src in reversed(sources):
        mapping = {"@if": {"exists": _path(src), "then": _path(src), "else": mapping}}
    return mapping


def _object_mapping(value: Any) -> dict[str, Any]:
    """A plain object mapping's entries (not a directive), to add keys to; else nothing."""
    if isinstance(value, Mapping) and not any(str(k).startswith("@") for k in value):
        return dict(value)
    return {}


def _with_keys(whole: Any, by_key: dict[str, Any]) -> Any:
    """``whole`` (a mapping of an object, or MISSING) with ``by_key`` merged over it."""
    if whole is MISSING or whole is None:
        return by_key
    if not any(str(k).startswith("@") for k in whole):
        return {**whole, **by_key}
    return {"@merge": {"objects": [whole, by_key], "direction": "right"}}


def _group(entries: Iterable[tuple[str, tuple[str, ...]]]) -> dict[tuple[str, ...], list[str]]:
    out: dict[tuple[str, ...], list[str]] = {}
    for src, target in entries:
        out.setdefault(target, []).append(src)
    return out


def _customer_mappings(table: Table, base: dict[str, Any], *, skip: Iterable[str] = ()) -> dict[str, Any]:
    """``base`` (Upsert Customer field mappings) with the ``customer.*`` entries of ``table``."""
    skipped = set(skip)
    fields = dict(base)
    plain = _group((s, _CUSTOMER_FIELDS[d]) for s, d in table if d in _CUSTOMER_FIELDS and d not in skipped)
    address: dict[str, Any] = {}
    for target, sources in plain.items():
        if target[0] == "address":
            address[target[1]] = first_present(sources)
        else:
            fields[target[0]] = first_present(sources)
    if address:
        fields["address"] = {**_object_mapping(fields.get("address")), **address}
    keys = _group(
        (s, (d[len("customer.metadata.") :],)) for s, d in table if d.startswith("customer.metadata.")
    )
    if keys:
        by_key = {k[0]: first_present(sources) for k, sources in keys.items()}
        fields["metadata"] = _with_keys(fields.get("metadata", MISSING), by_key)
    return fields


def _source_id(table: Table, anonymous_fallback: bool) -> Any:
    sources = [s for s, d in table if d == "customer.source_id"]
    if sources:
        return first_present(sources)
    return USER_ID_ELSE_ANONYMOUS_ID if anonymous_fallback else USER_ID


@dataclass(frozen=True)
class TrackPlan:
    """The mappings of a track call: the custom event's fields, and the customer attributes the
    call also carries (``None`` when the table reaches none)."""

    event_fields: dict[str, Any]
    attributes: dict[str, Any] | None


def identify_mappings(classic: bool, user: Table, *, anonymous_fallback: bool) -> dict[str, Any]:
    """Every Upsert Customer field's mapping for identify calls."""
    preset = default_mappings(UPSERT, anonymous_fallback=anonymous_fallback)
    if not classic and not user:
        return preset
    table = merged_table(CLASSIC_IDENTIFY if classic else (), user)
    base: dict[str, Any] = {f.name: MISSING for f in UPSERT.fields} if classic else preset
    base["type"] = {"@path": "$.type"}
    fields = _customer_mappings(table, base, skip=("customer.source_id",))
    fields["source_id"] = _source_id(table, anonymous_fallback)
    return fields


def track_plan(classic: bool, user: Table, action: Action, *, anonymous_fallback: bool) -> TrackPlan:
    """The Add Custom Event mappings (and customer attributes) for track calls."""
    assert action.key == ADD_CUSTOM_EVENT
    event_fields = default_mappings(action, anonymous_fallback=anonymous_fallback)
    if not classic and not user:
        return TrackPlan(event_fields, None)
    table = merged_table(CLASSIC_TRACK if classic else (), user)
    source_id = _source_id(table, anonymous_fallback)
    if classic:
        # The classic custom event: the customer, the name (event, else the call type), the type.
        event_fields = dict.fromkeys(action.field_names, MISSING)
        event_fields["event"] = EVENT_NAME_CLASSIC
        event_fields["type"] = {"@path": "$.type"}
        event_fields["customer"] = {"source_id": source_id}
    else:
        event_fields["customer"] = {**_object_mapping(event_fields["customer"]), "source_id": source_id}
    for target, sources in _group((s, _EVENT_FIELDS[d]) for s, d in table if d in _EVENT_FIELDS).items():
        mapping = first_present(sources)
        if len(target) == 1:
            event_fields[target[0]] = mapping
        else:
            event_fields[target[0]] = {**_object_mapping(event_fields.get(target[0])), target[1]: mapping}
    event_keys = _group((s, (d[len("metadata.") :],)) for s, d in table if d.startswith("metadata."))
    if event_keys:
        by_key = {k[0]: first_present(sources) for k, sources in event_keys.items()}
        event_fields["metadata"] = _with_keys(event_fields.get("metadata", MISSING), by_key)
    blank: dict[str, Any] = dict.fromkeys(UPSERT.field_names, MISSING)
    attributes = _customer_mappings(table, blank, skip=("customer.source_id", "customer.email"))
    if all(v is MISSING for v in attributes.values()):
        return TrackPlan(event_fields, None)
    attributes["source_id"] = source_id
    attributes["type"] = {"@path": "$.type"}
    return TrackPlan(event_fields, attributes)


def targeted_fields(classic: bool, user: Table) -> set[str]:
    """Upsert Customer fields whose mapping comes from the classic defaults or the user's table."""
    if classic:
        return {f.name for f in UPSERT.fields}
    return {_CUSTOMER_FIELDS[d][0] for _s, d in user if d in _CUSTOMER_FIELDS} | {
        "metadata" for _s, d in user if d.startswith("customer.metadata.")
    }


def carries_attributes(payload: Mapping[str, Any]) -> bool:
    """True when an Upsert Customer payload says something beyond who the customer is."""
    return any(k not in ("source_id", "type", "address") for k in payload) or bool(payload.get("address"))


__all__ = [
    "CLASSIC_IDENTIFY",
    "CLASSIC_TRACK",
    "TrackPlan",
    "carries_attributes",
    "identify_mappings",
    "merged_table",
    "targeted_fields",
    "track_plan",
    "validate_table",
]
