"""A Voucherify event -> one Segment track call (SPEC 4.2, 4.3).

What is sent
    Only events with a customer whose ``source_id`` is known (it becomes ``userId``; Voucherify's
    source never sends ``anonymousId``).  The twelve events of Segment's catalog keep their catalog
    names; every other ``customer.*`` type is named by the catalog's own rule (drop ``customer.``,
    split on ``.`` and ``_``, Title Case, prefix ``Customer``) and may be limited by the
    connection's ``segment.events`` allow-list.  Everything else is skipped with a reason
    (:class:`~connector.errors.SkipEvent`), counted by the caller, never an error.

The call
    ``messageId`` is derived from the connection and the Voucherify event id only, so retries,
    Voucherify's redeliveries and the same event in another envelope version are deduplicated by
    Segment, while two connections receiving one project's event stay distinct.  ``properties``
    holds ``email``, ``customer {id, email, source_id, name}``, ``campaign {id, name, created_at,
    type, active, campaign_type}``, the event id and type, and every other object of the event
    flattened by :mod:`workers.mapping.source.flatten` (which also bounds the size).
"""

from __future__ import annotations

import fnmatch
import re
import uuid
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Any, Final, TypeGuard

from connector import CHANNEL, __version__
from connector.config import Connection
from connector.envelope import VoucherifyEvent, normalize_type
from connector.errors import SkipEvent
from workers.mapping.source.flatten import fit_track, flatten_properties
from workers.outbound import OutboundRequest

ACTION: Final = "segment_track"
DIRECTION: Final = "voucherify_to_segment"
BATCH_PATH: Final = "/v1/batch"

# Segment's Voucherify Source catalog: Voucherify type -> Segment event name.
CATALOG: Final[Mapping[str, str]] = {
    "customer.redemption.succeeded": "Customer Redemption Succeeded",
    "customer.redemption.failed": "Customer Redemption Failed",
    "customer.redemption.rollback.succeeded": "Customer Redemption Rollback Succeeded",
    "customer.redemption.rollback.failed": "Customer Redemption Rollback Failed",
    "customer.reward_redemptions.created": "Customer Reward Redemptions Created",
    "customer.reward_redemptions.completed": "Customer Reward Redemptions Completed",
    "customer.rewarded": "Customer Rewarded",
    "customer.rewarded.loyalty_points": "Customer Rewarded Loyalty Points",
    "customer.validation.succeeded": "Customer Validation Succeeded",
    "customer.validation.failed": "Customer Validation Failed",
    "customer.publication.succeeded": "Customer Publication Succeeded",
    "customer.publication.failed": "Customer Publication Failed",
}

# Project-settings webhooks offer only these non-customer forms of catalog events (the
# customer.* forms come from distributions).  With a customer attached they describe the same
# moment, so they take the catalog name; without one they are skipped like any other.
CATALOG_ALIASES: Final[Mapping[str, str]] = {
    "redemption.succeeded": "customer.redemption.succeeded",
    "redemption.failed": "customer.redemption.failed",
    "redemption.rollback.succeeded": "customer.redemption.rollback.succeeded",
    "redemption.rollback.failed": "customer.redemption.rollback.failed",
    "publication.succeeded": "customer.publication.succeeded",
}

CUSTOMER_FIELDS: Final = ("id", "email", "source_id", "name")
CAMPAIGN_FIELDS: Final = ("id", "name", "created_at", "type", "active", "campaign_type")

# Keys of event data that are not sent as objects: the customer and campaign have their own
# shaped properties; `user` is the Voucherify dashboard operator, not the Segment user.
_NOT_OBJECTS: Final = frozenset({"customer", "campaign", "user"})
# Property names we set ourselves; an event object of the same name never overwrites them.
_OWN_PROPERTIES: Final = frozenset(
    {"email", "customer", "campaign", "voucherify_event_id", "voucherify_event_type"}
)
_PROTECTED: Final = frozenset(
    {
        ("email",),
        ("customer",),
        ("campaign", "id"),
        ("campaign", "name"),
        ("voucherify_event_id",),
        ("voucherify_event_type",),
    }
)

# Where else an event carries its customer, in order of preference after data.customer.
_CUSTOMER_CARRIERS: Final = ("redemption", "redemption_rollback", "publication", "validation", "order")

# Voucherify renames a deleted customer's source_id to "<source_id>_deleted<ISO date-time>"; the
# Segment profile is still known by the original id.
_DELETED_SUFFIX = re.compile(r"_deleted\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}(?:\.\d+)?Z?$")

# Fixed namespace of the connector's message ids: changing it would re-send every redelivered
# event to Segment as new, so it never changes.
_MESSAGE_ID_NAMESPACE: Final = uuid.UUID("7d0b6f3e-2c1a-5e9b-9f4d-3a8e6c1b2d40")

CONTEXT_LIBRARY: Final[Mapping[str, str]] = {"name": CHANNEL, "version": __version__}


def segment_event_name(vf_type: str) -> str | None:
    """Segment event name for a Voucherify type; None for types that are not customer events."""
    normalized = normalize_type(vf_type)
    catalog_type = CATALOG_ALIASES.get(normalized, normalized)
    if catalog_type in CATALOG:
        return CATALOG[catalog_type]
    if not normalized.startswith("customer."):
        return None
    words = [part.capitalize() for part in re.split(r"[._]", normalized[len("customer.") :]) if part]
    return "Customer " + " ".join(words) if words else None


def is_catalog_type(vf_type: str) -> bool:
    normalized = normalize_type(vf_type)
    return normalized in CATALOG or normalized in CATALOG_ALIASES


def message_id_for(connection_id: str, event_id: str) -> str:
    """Deterministic Segment ``messageId`` (and idempotency key) of one Voucherify event."""
    name = f"{connection_id}\n{DIRECTION}\n{event_id}\n{ACTION}"
    return f"vf-{uuid.uuid5(_MESSAGE_ID_NAMESPACE, name)}"


def event_allowed(vf_type: str, connection: Connection) -> bool:
    """Catalog events always; others when the connection's allow-list (None = all) names them.

    Entries are Segment names (``Customer Loyalty Tier Joined``, case-insensitive), Voucherify
    types in either spelling (``customer.loyalty.tier.joined``, ``EVENTS.CUSTOMER.LOYALTY.TIER.JOINED``)
    or type patterns with ``*`` (``customer.loyalty.*``).
    """
    if is_catalog_type(vf_type):
        return True
    allow = connection.segment.extra_events if connection.segment else None
    if allow is None:
        return True
    normalized = normalize_type(vf_type)
    name = (segment_event_name(normalized) or "").casefold()
    for entry in allow:
        entry_type = normalize_type(entry)
        if entry_type == normalized or entry.strip().casefold() == name:
            return True
        if "*" in entry_type and fnmatch.fnmatchcase(normalized, entry_type):
            return True
    return False


def map_webhook(event: VoucherifyEvent, connection: Connection) -> dict[str, Any]:
    """The Segment track call for ``event``, or :class:`SkipEvent` saying why there is none."""
    if connection.segment is None:
        raise SkipEvent("segment_not_configured", f"connection {connection.id!r} has no [connection.segment]")
    name = segment_event_name(event.type)
    if name is None:
        raise SkipEvent("not_customer_event", f"{event.type} is not a customer event")
    if not event_allowed(event.type, connection):
        raise SkipEvent("not_allowed", f"{event.type} ({name}) is not in the connection's segment.events")
    customer = find_customer(event)

    properties: dict[str, Any] = {}
    if customer.email:
        properties["email"] = customer.email
    properties["customer"] = customer.as_property()
    campaign = _campaign(event.data)
    if campaign:
        properties["campaign"] = campaign
    properties["voucherify_event_id"] = event.event_id
    properties["voucherify_event_type"] = event.type
    objects = list(_event_objects(event.data))
    # Objects sent in full at the top level: nested copies of them shrink to their ids.
    known = {key: value.get("id") for key, value in objects if isinstance(value, Mapping) and value.get("id")}
    if customer.id:
        known["customer"] = customer.id
    for key, value in flatten_properties(objects, known).items():
        properties.setdefault(key, value)

    track: dict[str, Any] = {
        "type": "track",
        "event": name,
        "userId": customer.source_id,
        "messageId": message_id_for(connection.id, event.event_id),
    }
    # Segment needs an ISO 8601 timestamp; an unreadable one is left out (Segment then uses the
    # time it received the call) rather than sent to be rejected.
    if event.created_at_epoch is not None:
        track["timestamp"] = event.created_at
    track["properties"] = properties
    track["context"] = {"integration": {"name": "voucherify"}, "library": dict(CONTEXT_LIBRARY)}
    return fit_track(track, protected=_PROTECTED)


def to_outbound(track: Mapping[str, Any], connection: Connection) -> OutboundRequest:
    """One track call as an outbound item; the batcher packs many into ``POST /v1/batch``."""
    return OutboundRequest(
        method="POST",
        path=BATCH_PATH,
        body=dict(track),
        idempotency_key=track["messageId"],
        action=ACTION,
        customer=track.get("userId"),
        event_time=track.get("timestamp"),
        message_id=track["messageId"],
    )


# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Customer:
    id: str | None
    source_id: str
    name: str | None
    email: str | None

    def as_property(self) -> dict[str, Any]:
        values = {field: getattr(self, field) for field in CUSTOMER_FIELDS}
        return {k: v for k, v in values.items() if v is not None}


def find_customer(event: VoucherifyEvent) -> Customer:
    """The event's customer; SkipEvent ``no_customer`` / ``no_customer_source_id`` when unusable."""
    candidates = list(_customer_candidates(event.data))
    if not candidates:
        raise SkipEvent("no_customer", f"{event.type} {event.event_id} has no customer")
    primary = candidates[0]
    primary_id = _text(primary.get("id"))
    # Other copies of the same customer (redemption.customer...) may be richer than data.customer:
    # the holder-assignment example has a customer with source_id null.
    same = [primary] + [
        c for c in candidates[1:] if primary_id is None or _text(c.get("id")) in (None, primary_id)
    ]
    source_id = _first(same, "source_id")
    if source_id is None:
        raise SkipEvent(
            "no_customer_source_id", f"{event.type} {event.event_id}: the customer has no source_id"
        )
    if event.type == "customer.deleted":
        source_id = _DELETED_SUFFIX.sub("", source_id) or source_id
    return Customer(
        id=primary_id, source_id=source_id, name=_first(same, "name"), email=_first(same, "email")
    )


def _customer_candidates(data: Mapping[str, Any]) -> Iterator[Mapping[str, Any]]:
    direct = data.get("customer")
    if _is_customer(direct):
        yield direct
    for carrier in _CUSTOMER_CARRIERS:
        holder_of = data.get(carrier)
        if isinstance(holder_of, Mapping) and _is_customer(holder_of.get("customer")):
            yield holder_of["customer"]
    # The voucher holder is the customer of reward and loyalty events; a redeemable_holder
    # record (holder assignments) is not a customer object.
    holder = data.get("holder")
    if _is_customer(holder) and holder.get("object", "customer") == "customer":
        yield holder


def _is_customer(value: Any) -> TypeGuard[Mapping[str, Any]]:
    return isinstance(value, Mapping) and (value.get("id") is not None or value.get("source_id") is not None)


def _first(customers: list[Mapping[str, Any]], field: str) -> str | None:
    for customer in customers:
        value = _text(customer.get(field))
        if value is not None:
            return value
    return None


def _text(value: Any) -> str | None:
    if isinstance(value, bool) or value is None:
        return None
    if isinstance(value, int | float):
        value = str(value)
    if isinstance(value, str) and value.strip():
        return value
    return None


def _campaign(data: Mapping[str, Any]) -> dict[str, Any]:
    campaign = data.get("campaign")
    if not isinstance(campaign, Mapping):
        # Events without a campaign object often still name it through the voucher or tier.
        tier = data.get("promotion_tier")
        voucher = data.get("voucher")
        if isinstance(tier, Mapping) and isinstance(tier.get("campaign"), Mapping):
            campaign = tier["campaign"]
        elif isinstance(voucher, Mapping):
            campaign = {"id": voucher.get("campaign_id"), "name": voucher.get("campaign")}
        else:
            return {}
    return {
        field: campaign[field]
        for field in CAMPAIGN_FIELDS
        if isinstance(campaign.get(field), str | int | float | bool)
    }


def _event_objects(data: Mapping[str, Any]) -> Iterator[tuple[str, Any]]:
    for key, value in data.items():
        if key not in _NOT_OBJECTS and key not in _OWN_PROPERTIES:
            yield key, value
