"""The three actions of the Voucherify (Actions) destination: field declarations and presets.

Field names, labels, types, ``required``/``allowNull`` flags and default mappings are the
reference's (SPEC 3.2): labels matter because they appear in error messages, e.g.
``Customer Object is missing the required field 'source_id'.``  Field order is the reference's
too, so that bodies come out with the same key order.

Two connector additions, both opt-out per connection (see :func:`default_mappings`):

* the classic anonymous fallback (SPEC 3.3): the customer's ``source_id`` defaults to ``userId``,
  else ``anonymousId``.  The Actions destination itself shipped exactly this default in earlier
  versions; ``anonymous_fallback = false`` restores today's preset (``$.userId`` only, and the
  reference's "missing the required field 'source_id'" error for anonymous events);
* :data:`CLASSIC_EXTRAS`: extra paths read only when building REST bodies (Voucherify's own
  shape), for the classic destination's trait spellings (``firstName``, ``postalCode``...).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Final

from workers.mapping.destination.fields import Field

UPSERT_CUSTOMER: Final = "upsert_customer"
ADD_CUSTOM_EVENT: Final = "add_custom_event"
ASSIGN_GROUP: Final = "assign_group"

USER_ID: Final[Mapping[str, Any]] = {"@path": "$.userId"}
# `blank` rather than `exists`: an empty userId falls back too (the classic `userId || anonymousId`).
USER_ID_ELSE_ANONYMOUS_ID: Final[Mapping[str, Any]] = {
    "@if": {"blank": {"@path": "$.userId"}, "then": {"@path": "$.userId"}, "else": {"@path": "$.anonymousId"}}
}


def _string(name: str, label: str, path: str | None = None, *, default: Any = None, **kw: Any) -> Field:
    return Field(name, label, "string", default={"@path": path} if path else default, **kw)


@dataclass(frozen=True)
class Action:
    key: str  # OutboundRequest.action
    title: str
    fields: tuple[Field, ...]
    segmentio_path: str
    rest_path: str
    # Where the customer's source_id lives in the payload: ("source_id",) or ("customer", "source_id").
    source_id_at: tuple[str, ...]

    def field(self, name: str) -> Field | None:
        return next((f for f in self.fields if f.name == name), None)

    @property
    def field_names(self) -> tuple[str, ...]:
        return tuple(f.name for f in self.fields)


_nullable = {"allow_null": True}

UPSERT = Action(
    key=UPSERT_CUSTOMER,
    title="Upsert Customer",
    fields=(
        Field("source_id", "Source ID", "string", required=True, default=USER_ID),
        _string("name", "Name", "$.traits.name", **_nullable),
        _string("first_name", "First Name", "$.traits.first_name", **_nullable),
        _string("last_name", "Last Name", "$.traits.last_name", **_nullable),
        _string("description", "Description", "$.traits.description", **_nullable),
        _string("email", "Email Address", "$.traits.email", **_nullable),
        _string("phone", "Phone", "$.traits.phone", **_nullable),
        _string("birthdate", "Birthdate", "$.traits.birthdate", **_nullable),
        Field(
            "address",
            "Address",
            "object",
            properties=(
                Field("city", "City", "string", allow_null=True),
                Field("state", "State", "string", allow_null=True),
                Field("postal_code", "Postal Code", "string", allow_null=True),
                Field("street", "Street", "string", allow_null=True),
                Field("country", "Country", "string", allow_null=True),
            ),
            default={
                "city": {"@path": "$.traits.address.city"},
                "state": {"@path": "$.traits.address.state"},
                "postal_code": {"@path": "$.traits.address.postal_code"},
                "street": {"@path": "$.traits.address.street"},
                "country": {"@path": "$.traits.address.country"},
            },
        ),
        Field("metadata", "Metadata", "object", allow_null=True, default={"@path": "$.traits.metadata"}),
        _string("type", "Event Type", "$.type", required=True),
    ),
    segmentio_path="/segmentio/customer-processing",
    rest_path="/v1/customers",
    source_id_at=("source_id",),
)

CUSTOMER_PROPERTIES: Final = (
    Field("source_id", "Source ID", "string", required=True),
    Field("email", "Email", "string"),
)

ADD_EVENT = Action(
    key=ADD_CUSTOM_EVENT,
    title="Add Custom Event",
    fields=(
        Field(
            "customer",
            "Customer Object",
            "object",
            required=True,
            properties=CUSTOMER_PROPERTIES,
            default={
                "source_id": USER_ID,
                "email": {
                    "@if": {
                        "exists": {"@path": "$.properties.email"},
                        "then": {"@path": "$.properties.email"},
                        "else": {"@path": "$.context.traits.email"},
                    }
                },
            },
        ),
        Field(
            "referral",
            "Referral Object",
            "object",
            properties=(
                Field("code", "Referral Code", "string"),
                Field("referrer_id", "Referrer ID", "string"),
            ),
            default={
                "code": {"@path": "$.properties.referral.code"},
                "referrer_id": {"@path": "$.properties.referral.referrer_id"},
            },
        ),
        Field(
            "loyalty",
            "Loyalty Object",
            "object",
            properties=(Field("code", "Loyalty Card Code", "string"),),
            default={"code": {"@path": "$.properties.loyalty.code"}},
        ),
        Field("metadata", "Track Event Metadata", "object", default={"@path": "$.properties.metadata"}),
        _string(
            "event",
            "Event Name",
            default={
                "@if": {
                    "exists": {"@path": "$.event"},
                    "then": {"@path": "$.event"},
                    "else": {"@path": "$.name"},
                }
            },
        ),
        _string("type", "Event Type", "$.type", required=True),
    ),
    segmentio_path="/segmentio/event-processing",
    rest_path="/v1/events",
    source_id_at=("customer", "source_id"),
)

ASSIGN = Action(
    key=ASSIGN_GROUP,
    title="Assign Customer To Group",
    fields=(
        Field(
            "customer",
            "Customer Object",
            "object",
            required=True,
            properties=CUSTOMER_PROPERTIES,
            default={"source_id": USER_ID, "email": {"@path": "$.email"}},
        ),
        _string("group_id", "Group ID", "$.groupId", required=True),
        Field("traits", "Group Traits", "object", default={"@path": "$.traits"}),
        _string("type", "Event Type", "$.type", required=True),
    ),
    segmentio_path="/segmentio/group-processing",
    rest_path="/v1/customers",
    source_id_at=("customer", "source_id"),
)

ACTIONS: Final[Mapping[str, Action]] = {a.key: a for a in (UPSERT, ADD_EVENT, ASSIGN)}

# Names accepted for `action =` in a subscription: ours, the spec's and Segment's own slugs.
ACTION_ALIASES: Final[Mapping[str, str]] = {
    "upsert_customer": UPSERT_CUSTOMER,
    "upsertCustomer": UPSERT_CUSTOMER,
    "add_custom_event": ADD_CUSTOM_EVENT,
    "addCustomEvent": ADD_CUSTOM_EVENT,
    "assign_customer_to_group": ASSIGN_GROUP,
    "assignCustomerToGroup": ASSIGN_GROUP,
    "assign_group": ASSIGN_GROUP,
}


@dataclass(frozen=True)
class Preset:
    """A default subscription of the reference (SPEC 3.1): its name, action and overrides."""

    name: str  # as the reference names it (reports, `connector map`)
    action: str
    overrides: Mapping[str, Any]


# The default subscriptions, the ONE table: event type -> preset.
PRESETS: Final[Mapping[str, Preset]] = {
    "identify": Preset("Create Or Update Customer", UPSERT_CUSTOMER, {}),
    "track": Preset("Add Custom Event (Track Event)", ADD_CUSTOM_EVENT, {}),
    "page": Preset(
        "Add Custom Event (Page Event)", ADD_CUSTOM_EVENT, {"event": {"@template": "Viewed {{name}} Page"}}
    ),
    "screen": Preset(
        "Add Custom Event (Screen Event)",
        ADD_CUSTOM_EVENT,
        {"event": {"@template": "Viewed {{name}} Screen"}},
    ),
    "group": Preset("Assign Customer To Group", ASSIGN_GROUP, {}),
}
PRESET_NAMES: Final[Mapping[str, str]] = {t: p.name for t, p in PRESETS.items()}
MAPPED_TYPES: Final = tuple(PRESETS)

# Classic-destination spellings read for REST bodies when the field keeps its default mapping:
# action -> field it extends -> {extra name: path}.
CLASSIC_EXTRAS: Final[Mapping[str, Mapping[str, Mapping[str, str]]]] = {
    UPSERT_CUSTOMER: {
        "first_name": {"firstName": "$.traits.firstName"},
        "last_name": {"lastName": "$.traits.lastName"},
        "birthdate": {"birthday": "$.traits.birthday"},  # Segment's reserved trait is `birthday`
        "address": {
            "postalCode": "$.traits.address.postalCode",
            "line_1": "$.traits.address.line_1",
            "line_2": "$.traits.address.line_2",
        },
    },
}


def default_mappings(action: Action, *, anonymous_fallback: bool) -> dict[str, Any]:
    """Every field's default mapping for ``action`` on a connection."""
    mappings = {f.name: f.default for f in action.fields}
    if anonymous_fallback:
        if action.source_id_at == ("source_id",):
            mappings["source_id"] = USER_ID_ELSE_ANONYMOUS_ID
        else:
            mappings["customer"] = {**mappings["customer"], "source_id": USER_ID_ELSE_ANONYMOUS_ID}
    return mappings
