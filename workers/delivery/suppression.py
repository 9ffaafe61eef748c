"""Suppression at the one point every item passes before its call (SPEC 14).

A regulation suppresses a subject (a user id) from its creation on: the ingest drops new events,
and whatever of the subject was already queued, held, parked or waiting is dropped here, never
sent, as its turn comes -- in both directions (a Voucherify item's customer, a Segment item's
``userId``, both the subject under the default identity mapping).  One ``SMISMEMBER`` per call.

A regulation's own deletion call concerns the subject by design and is never dropped.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from connector import regulations
from connector.contract import DeliveryItem
from workers.delivery.context import Context
from workers.outbound import OutboundRequest


def subjects_of(request: OutboundRequest, item: Mapping[str, Any]) -> list[Any]:
    """Whom a call concerns: its customer, the event's ``userId``, its coalesced parts'."""
    if request.action == regulations.DELETE_ACTION:
        return []
    found: list[Any] = [request.customer]
    payload = item.get("payload")
    if isinstance(payload, Mapping):
        found.append(payload.get("userId"))
    found.extend((p or {}).get("customer") for p in request.parts or ())
    return [f for f in found if f]


def subjects_of_item(item: Mapping[str, Any]) -> list[Any]:
    """:func:`subjects_of` of a stored item (JSON): an outbox's, whatever its request holds."""
    request = item.get("request") or {}
    if request.get("action") == regulations.DELETE_ACTION:
        return []
    found: list[Any] = [request.get("customer")]
    payload = item.get("payload")
    if isinstance(payload, Mapping):
        found.append(payload.get("userId"))
    found.extend((p or {}).get("customer") for p in request.get("parts") or ())
    return [f for f in found if f]


def suppressed(ctx: Context, request: OutboundRequest, item: DeliveryItem) -> set[str]:
    subjects = subjects_of(request, item)
    if not subjects:
        return set()
    return regulations.suppressed_among(ctx.client, ctx.keys, ctx.connection_id, subjects)


def live_parts(request: OutboundRequest, gone: set[str]) -> list[Mapping[str, Any]]:
    """A coalesced request's parts of customers not suppressed."""
    return [p for p in request.parts or () if str((p or {}).get("customer")) not in gone]
