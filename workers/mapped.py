"""Mapping in the worker: one Segment event or Voucherify webhook into delivery items.

The mapping entry points are looked up lazily (and replaceable in tests); what matched, what did
not and why goes to the event's trace; a mapping failure dead-letters that event only.
"""

from __future__ import annotations

import contextlib
import logging
from datetime import datetime
from typing import Any

import redis

from connector.config import Connection
from connector.contract import (
    DESTINATION,
    REPLAY_DOOR,
    DeliveryItem,
)
from connector.errors import MappingError, SkipEvent
from connector.regulations import subject_digest
from workers.delivery.attempts import new_item
from workers.delivery.context import Context
from workers.delivery.deadletters import INTERNAL_ERROR, MAPPING_ERROR
from workers.delivery.endings import finish_dead, finish_skipped
from workers.outbound import OutboundRequest

log = logging.getLogger("connector.pipeline")


def map_event(event: dict[str, Any], connection: Connection) -> Any:
    """The event's requests and the failures of matching subscriptions (a MappingResult); a
    plain list of requests (the mappers of unit tests) means no failure."""
    from workers.mapping.destination import map_event_detailed

    return map_event_detailed(event, connection)


def map_webhook_payload(payload: dict[str, Any], connection: Connection) -> OutboundRequest:
    from connector.envelope import parse_webhook
    from workers.mapping.source.mapping import map_webhook, to_outbound

    return to_outbound(map_webhook(parse_webhook(payload), connection), connection)


def map_segment_event(
    ctx: Context,
    event: dict[str, Any],
    stored_bytes: int = 0,
    door: str = "segment",
    *,
    own: Any = None,
    ref: str | None = None,
) -> list[DeliveryItem]:
    """``event`` merged (what the mapping sees); ``own``/``ref``: what is stored of it -- its
    own fields and the reference to the batch's objects (without them, ``event`` whole)."""
    message_id = str(event.get("messageId")) if isinstance(event, dict) and event.get("messageId") else None
    received_at = received_at_of(event)
    stored: Any = event if own is None else own
    bare: dict[str, Any] = {
        "payload": stored,
        "received_at": received_at,
        "backlog": 1,
        "backlog_bytes": stored_bytes,
    }
    if ref is not None:
        bare["shared"] = ref
    ctx.trace.received(
        message_id, connection=ctx.connection_id, direction=DESTINATION, door=door, at=received_at
    )
    try:
        mapped = map_event(event, ctx.connection)
        requests, failures = (mapped, []) if isinstance(mapped, list) else (mapped.requests, mapped.failures)
        trace_mapping(ctx, message_id, event, mapped, requests, failures)
        if not requests and failures:
            # Every matching subscription failed: the event is dead-lettered once, with each reason.
            raise failures[0][1] if len(failures) == 1 else MappingError(failure_text(failures))
    except SkipEvent as exc:
        # The sentence says which rule kept it out (e.g. which integrations name was false):
        # what `connector trace` shows beside the reason.
        why = {"why": str(exc)} if str(exc) != exc.reason else {}
        ctx.trace.mapping(
            message_id, type=event.get("type"), skip=exc.reason, subject=subject(event.get("userId")), **why
        )
        finish_skipped(ctx, None, bare, exc.reason, message_id=message_id)
        return []
    except MappingError as exc:
        finish_dead(ctx, bare, MAPPING_ERROR, exc.message)
        return []
    except redis.RedisError:
        raise
    except Exception as exc:
        log.exception("mapping a Segment event failed", extra={"connection": ctx.connection_id})
        finish_dead(ctx, bare, INTERNAL_ERROR, f"{type(exc).__name__}: {exc}")
        return []
    for name, failure in failures:
        # Several subscriptions matched and this one failed while others produced requests: the
        # failure must not vanish.  Its dead letter holds the event (no backlog: that rides on
        # the requests); a replay with --remap maps it again, and the ledger skips what the
        # other subscriptions already delivered.
        finish_dead(
            ctx,
            {**bare, "backlog": 0, "backlog_bytes": 0},
            MAPPING_ERROR,
            f"subscription {name!r}: {failure.message}",
        )
    if not requests:
        finish_skipped(ctx, None, bare, "no_request", message_id=message_id)
        return []
    # The event's backlog (one event, its bytes) rides on its last request: released when the
    # event is finished.
    last = len(requests) - 1
    replay = door == REPLAY_DOOR  # a backfill's upserts may go in bigger bulks (SPEC 15)
    items = [
        new_item(
            r, stored, received_at, 1 if i == last else 0, stored_bytes if i == last else 0, replay=replay
        )
        for i, r in enumerate(requests)
    ]
    if ref is not None:
        for item in items:
            item["shared"] = ref
    return items


def trace_mapping(
    ctx: Context,
    message_id: str | None,
    event: dict[str, Any],
    mapped: Any,
    requests: list[OutboundRequest],
    failures: list[tuple[str, MappingError]],
) -> None:
    """Which subscriptions matched, which did not (and why), which failed, and the calls."""
    ctx.trace.mapping(
        message_id,
        type=event.get("type"),
        matched=list(getattr(mapped, "matched", ())),
        not_matched={name: "trigger did not match" for name in getattr(mapped, "not_matched", ())},
        failed={name: exc.message for name, exc in failures},
        requests=[f"{r.method} {r.path}" for r in requests],
        subject=subject(event.get("userId")),
    )


def subject(user_id: Any) -> str | None:
    """What the trace keeps of whom the event is about, to forget it on a deletion (SPEC 14):
    a digest, never the id itself."""
    if user_id is None or user_id == "" or isinstance(user_id, bool | dict | list):
        return None
    return subject_digest(str(user_id))


def segment_name(request: OutboundRequest) -> str:
    body = request.body
    name = body.get("event") if isinstance(body, dict) else None
    return repr(name) if isinstance(name, str) else ""


def failure_text(failures: list[tuple[str, MappingError]]) -> str:
    return " ".join(f"[{name}] {exc.message}" for name, exc in failures)


def received_at_of(event: Any) -> float | None:
    value = event.get("receivedAt") if isinstance(event, dict) else None
    if isinstance(value, int | float):
        return float(value)
    if isinstance(value, str):
        with contextlib.suppress(ValueError):
            return datetime.fromisoformat(value.replace("Z", "+00:00")).timestamp()
    return None


def webhook_ident(payload: Any) -> tuple[str | None, str | None]:
    """The Voucherify event id (``event.id`` in the 2024 envelope, ``id`` in the older ones) --
    what the web answered the sender with and what ``connector trace`` is asked for -- and the
    event's type."""
    from connector.envelope import parse_webhook

    try:
        event = parse_webhook(payload)
        return event.event_id[:200], event.type[:100]
    except (MappingError, AttributeError, TypeError):
        pass
    if isinstance(payload, dict) and payload.get("id") is not None:
        return str(payload["id"])[:200], None
    return None, None
