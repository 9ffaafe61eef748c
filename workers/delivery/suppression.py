"""Suppression at the one point every item passes before its call (SPEC 14).

A regulation suppresses a subject (a user id) from its creation on: the ingest drops new events,
and whatever of the subject was already queued, held, parked or waiting is dropped here, never
sent, as its turn comes -- in both directions (a Voucherify item's customer, a Segment item's
``userId``, both the subject under the default identity mapping).  One ``SMISMEMBER`` per task
run (:func:`prefetch`, all its items' subjects), kept a second: Redis counts commands, and one
per call was one of the largest per-event costs.  A regulation is seen within that second.

A regulation's own deletion call concerns the subject by design and is never dropped.
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Mapping
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


# How long a task trusts what it read of the suppressed set (seconds).
FRESH_SECONDS = 1.0


def _known(ctx: Context, subjects: Iterable[Any]) -> set[str]:
    """Which of ``subjects`` are suppressed: read from Redis only for those the task has not
    read within FRESH_SECONDS (once that is over, all it knows are read again, in one command).
    The read is made outside the lock: concurrent calls never wait for each other's."""
    wanted = {str(s) for s in subjects if s}
    seen = ctx.suppressed_seen
    now = time.monotonic()
    with ctx.suppressed_lock:
        fresh = now - seen.at <= FRESH_SECONDS
        if not fresh:  # this call reads all again; calls meanwhile trust what is known, not read it too
            seen.at = now
        # Only the wanted subjects' flags: a copy of all a task knows (thousands) per call
        # would make its calls cost the square of its size.
        flags = {w: seen.flags[w] for w in wanted if w in seen.flags} if fresh else {}
        ask = wanted - flags.keys() if fresh else wanted | seen.flags.keys()
    if ask:
        gone = regulations.suppressed_among(ctx.client, ctx.keys, ctx.connection_id, ask)
        read = {a: a in gone for a in ask}
        flags.update(read)
        with ctx.suppressed_lock:
            seen.flags.update(read)
    return {w for w in wanted if flags.get(w)}


def prefetch(ctx: Context, items: Iterable[Mapping[str, Any]]) -> None:
    """Read the suppression of all of a task run's subjects at once."""
    _known(ctx, (s for item in items for s in subjects_of_item(item)))


def suppressed(ctx: Context, request: OutboundRequest, item: DeliveryItem) -> set[str]:
    subjects = subjects_of(request, item)
    if not subjects:
        return set()
    return _known(ctx, subjects)


def live_parts(request: OutboundRequest, gone: set[str]) -> list[Mapping[str, Any]]:
    """A coalesced request's parts of customers not suppressed."""
    return [p for p in request.parts or () if str((p or {}).get("customer")) not in gone]
