"""The contract between the web process, the workers and the operator commands.

Everything here travels through Redis between processes of possibly different versions during
a rolling upgrade, so names and shapes only ever grow:

- task names (the web publishes by *name*, never importing the workers' code);
- direction labels (``segment_to_voucherify`` | ``voucherify_to_segment``): metric labels, log
  fields, dead letters and parked entries carry them;
- the broker message of accepted Segment events (``connector.segment_events``), below;
- the delivery *item*: what a parked entry, a ``connector.deliver`` task and a dead-letter
  replay carry (:class:`DeliveryItem`).

``connector.segment_events`` takes ``[connection_id, events, shared, stored_bytes]``:

- ``events``: each accepted item with only its own fields (``messageId`` assigned when absent,
  ``timestamp`` corrected for clock skew when it was sent, ``originalTimestamp`` as sent);
- ``shared``: what every event of the request has in common, stored ONCE per message instead
  of once per event -- ``receivedAt``, the batch-level ``sentAt``, ``context`` and
  ``integrations``, and ``door`` (which endpoint took it, for the trace; never merged).  Copied into each of up to 2,500 items, a 30 KB batch ``context`` made a
  request of a few hundred bytes of gzip occupy tens of megabytes in Redis;
- ``stored_bytes``: the bytes the message holds, reserved on the connection's backlog by the web
  and released by the workers as its events finish.

Past the mapping, an event is never stored merged: a delivery item keeps the event's own fields
and a reference (``DeliveryItem.shared``, a digest) to the batch's objects, stored once
(:func:`shared_objects`, :func:`shared_digest`).

Older messages (``[connection_id, events]``, events already merged) stay readable: with no
``shared``, :func:`expand` leaves an event as it is.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from typing import Any, Final, TypedDict

# --- task names ----------------------------------------------------------------------------
TASK_SEGMENT_EVENTS: Final = "connector.segment_events"
TASK_VOUCHERIFY_WEBHOOK: Final = "connector.voucherify_webhook"
TASK_DELIVER: Final = "connector.deliver"
TASK_SEGMENT_FLUSH: Final = "connector.segment_flush"
# [regulation_id, connection_id]: a regulation's deletion part for one connection (SPEC 14).
TASK_REGULATE: Final = "connector.regulate"

# Longest a single task may run before it parks its remaining work in Redis.  The broker's
# visibility timeout must stay well above it so that a running task is never handed to a second
# worker.
TASK_TIME_BUDGET_SECONDS: Final = 20

# Segment's Tracking API refuses an event over 32 KB: the ingest refuses it first, the source
# mapping shrinks a track call under it, the Segment outbox dead-letters one over it.
SEGMENT_MAX_EVENT_BYTES: Final = 32 * 1024

# The ``door`` of the events ``connector replay`` publishes (the ``shared`` field below): their
# items carry the ``replay`` mark (DeliveryItem).
REPLAY_DOOR: Final = "replay"

# --- directions ----------------------------------------------------------------------------
DESTINATION: Final = "segment_to_voucherify"
SOURCE: Final = "voucherify_to_segment"
# The target systems (``Target.name``): what pauses are per (SPEC 13), towards each direction.
SYSTEMS = ("voucherify", "segment")


def ingest_call(
    direction: str, connection_id: str, payload: Any, received_at: float
) -> tuple[str, list[Any]]:
    """The task and arguments that take an original event of ``direction`` in again, as the web
    publishes it (a dead letter replayed with ``--remap`` goes through today's mapping)."""
    if direction == SOURCE:
        return TASK_VOUCHERIFY_WEBHOOK, [connection_id, payload, received_at]
    return TASK_SEGMENT_EVENTS, [connection_id, [payload]]


# --- the web -> worker message of Segment events --------------------------------------------

# Batch-level objects merged into every event (the event's own keys win), as Segment does.
MERGED = ("context", "integrations")


def expand(event: dict[str, Any], shared: Mapping[str, Any] | None) -> dict[str, Any]:
    """``event`` (changed in place and returned) as Segment's Tracking API would hand it on:
    batch-level ``context``/``integrations`` merged under the event's own, ``receivedAt``,
    ``sentAt`` from the batch when the event has none, ``timestamp`` = ``receivedAt`` when the
    client sent none."""
    if not shared or not isinstance(event, dict):
        return event
    merge_objects(event, shared)
    return expand_scalars(event, shared)


def merge_objects(event: dict[str, Any], shared: Mapping[str, Any] | None) -> dict[str, Any]:
    """The batch-level objects (``context``, ``integrations``) merged under the event's own
    (``event`` changed in place: new dicts, the event's own objects are not mutated)."""
    if not shared or not isinstance(event, dict):
        return event
    for key in MERGED:
        batch = shared.get(key)
        if isinstance(batch, dict) and batch:
            own = event.get(key)
            event[key] = {**batch, **own} if isinstance(own, dict) else dict(batch)
    return event


def shared_objects(shared: Mapping[str, Any] | None) -> dict[str, Any]:
    """What of ``shared`` is multiplied when merged into each event -- the batch's ``context``
    and ``integrations`` -- and so must stay shared (stored once, referenced) in every later
    stage: holds, parked work, deliver tasks, dead letters (SPEC 16, memory is a budget)."""
    if not shared:
        return {}
    return {k: v for k in MERGED if isinstance(v := shared.get(k), dict) and v}


def expand_scalars(event: dict[str, Any], shared: Mapping[str, Any] | None) -> dict[str, Any]:
    """The batch's small per-event fields only (``receivedAt``, ``sentAt``, ``timestamp``): what
    an event keeps of ``shared`` in its own stored copy (a few dozen bytes)."""
    if not shared or not isinstance(event, dict):
        return event
    received = shared.get("receivedAt")
    if received is not None:
        event["receivedAt"] = received
        if not event.get("timestamp"):
            event["timestamp"] = received
    sent_at = shared.get("sentAt")
    if sent_at and not event.get("sentAt"):
        event["sentAt"] = sent_at
    return event


def shared_digest(blob: bytes) -> str:
    """The reference an item or a dead letter keeps to a batch's shared objects (their JSON):
    content-addressed, so equal contexts of many requests are stored once."""
    return hashlib.blake2b(blob, digest_size=16).hexdigest()


def backlog_shares(stored_bytes: int, count: int) -> list[int]:
    """``stored_bytes`` split over ``count`` events (integers summing to exactly that total), so
    that releasing every event's share releases what the web reserved, to the byte."""
    if count <= 0:
        return []
    base, extra = divmod(max(0, int(stored_bytes)), count)
    return [base + (1 if i < extra else 0) for i in range(count)]


# --- the delivery item -----------------------------------------------------------------------


class DeliveryItem(TypedDict, total=False):
    """One outbound call on its way: what parked entries, ``connector.deliver`` tasks, Segment
    outboxes and dead-letter replays carry (JSON; keys only ever added)."""

    request: dict[str, Any]  # workers.outbound.OutboundRequest.to_dict(): no credentials
    payload: Any  # the original event or webhook (a list for a coalesced call)
    received_at: float | None  # when the ingest accepted it (epoch seconds)
    first_attempt_at: float | None  # the retry window runs from here
    attempts: int
    history: list[dict[str, Any]]  # [{"t", "status", "error", "latency_ms"}], bounded
    last_delay: float | None  # the previous backoff (decorrelated jitter starts from it)
    backlog: int  # events to release from the connection's backlog when finished
    backlog_bytes: int  # their bytes
    parked: bool  # came back from the delayed store (holds a budget parking slot)
    enqueued_at: float  # appended to a Segment outbox (its retry window starts here)
    metadata_refreshed: bool  # a refused upsert already waited for a fresh metadata schema
    metadata_counted: bool  # its dropped metadata keys were counted once
    schema_waits: int  # attempts that found no readable metadata schema (bounded, then none)
    trace_id: str  # the event id its trace records go under (a Voucherify event id)
    held: bool  # an upsert that waited in the hold window (workers.delivery.holds)
    # From ``connector replay`` (SPEC 15): its upserts may go in bulks past the live 100; the
    # item's first key when present (workers.delivery.attempts.new_item says why).
    replay: bool
    pregranted: bool | dict[str, Any]  # budgets granted when the call was planned (one attempt)
    async_action: dict[str, Any]  # a queued call being read back (workers.delivery.pending)
    # The digest of the batch's shared objects (``shared_objects``) the payload was mapped with:
    # the payload is the event's OWN fields, the objects are stored once per batch under
    # ``Keys.shared`` (and once per dead-letter store, ``Keys.dlq_shared``), never per item.
    shared: str
    # A regulation's deletion call (SPEC 14): {"id": regulation id, "subject": user id}; its
    # end (delivered, 404, refused) counts the regulation's part down (workers.delivery.attempts).
    regulation: dict[str, str]


def backlog_of(item: Mapping[str, Any]) -> tuple[int, int]:
    """(events, bytes) of the backlog an item holds, released when it is finished."""
    return int(item.get("backlog") or 0), int(item.get("backlog_bytes") or 0)
