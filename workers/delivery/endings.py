"""How a delivery item ends: delivered (with a regulation's part), skipped, or dead-lettered --
each reported once, its backlog released (SPEC 7).  The sending and the per-attempt records are
:mod:`workers.delivery.attempts`; this module only ends items.

::

    finish_delivered ── delivered + a regulation's deletion part counted down
    finish_skipped ──── skipped (unchanged, stale, duplicate, ...): reported, backlog released
    finish_dead / report_dead ── the retry rule is spent or the answer is final: a dead letter
    raise_stale / skipped_parts ── a coalesced call's parts: stale marks raised, parts skipped
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from connector import metrics, overview, regulations
from connector.contract import DeliveryItem, backlog_of
from workers.delivery import forget, outcomes
from workers.delivery.attempts import (
    Step,
    delivered,
    error_text,
    excerpt,
    payload_id,
    status_of,
    trace_ids,
)
from workers.delivery.context import Context
from workers.delivery.deadletters import DeadLetter
from workers.delivery.target import Answer
from workers.delivery.transport import HTTPResult
from workers.outbound import OutboundRequest


def finish_delivered(ctx: Context, item: DeliveryItem, answer: HTTPResult) -> Step:
    delivered(ctx, [item], answer)
    regulation_step(ctx, item)
    return Step.done("delivered")


def regulation_step(ctx: Context, item: Mapping[str, Any], refused: str = "") -> None:
    """A regulation's deletion call has ended (``refused``: the answer, when Voucherify refused):
    forget the subject once more (what a worker wrote while the call waited) and count the
    regulation's part down (SPEC 14)."""
    regulation = item.get("regulation")
    if not isinstance(regulation, Mapping) or not regulation.get("id"):
        return
    subject = str(regulation.get("subject") or "")
    if subject:
        forget.forget(ctx, [subject])
    regulations.deletion_finished(ctx.client, ctx.keys, str(regulation["id"]), ctx.connection_id, refused)


def finish_skipped(
    ctx: Context,
    request: OutboundRequest | None,
    item: Mapping[str, Any],
    reason: str,
    *,
    message_id: str | None = None,
) -> Step:
    outcomes.skipped(
        ctx.connection_id,
        ctx.direction,
        reason,
        message_id=request.message_id if request else message_id,
        action=request.action if request else None,
    )
    ids = trace_ids(item) or ([message_id] if message_id else [])
    ctx.trace.outcome(ids, connection=ctx.connection_id, outcome=overview.SKIPPED, reason=reason)
    ctx.release_backlog(*backlog_of(item))
    regulation_step(ctx, item)  # a deletion found done already (the ledger): its part is done
    return Step.done(reason)


@dataclass
class Failure:
    """Why an item is dead-lettered: a reason of the closed set, the error, and what the target
    answered (status, a bounded excerpt) and the attempts' history when there was an answer."""

    reason: str
    error: str
    status: int | None = None
    excerpt: str = ""
    history: list[dict[str, Any]] | None = None  # default: the item's own

    @classmethod
    def of(cls, reason: str, answer: Answer, history: list[dict[str, Any]] | None = None) -> Failure:
        return cls(reason, error_text(answer), status_of(answer), excerpt(answer), history)


def finish_dead(ctx: Context, item: Mapping[str, Any], failure: Failure | str, error: str = "") -> Step:
    """Dead-letter ``item`` (``failure``: a :class:`Failure`, or a reason with ``error``)."""
    if isinstance(failure, str):
        failure = Failure(failure, error)
    ctx.dead_letters.add(dead_letter_for(ctx, item, failure))
    return report_dead(ctx, item, failure)


def dead_letter_for(ctx: Context, item: Mapping[str, Any], failure: Failure) -> DeadLetter:
    """The dead-letter record of ``item`` (not written: see :func:`finish_dead`)."""
    return DeadLetter(
        connection_id=ctx.connection_id,
        direction=ctx.direction,
        reason=failure.reason,
        error=failure.error,
        queue=ctx.queue,
        payload=item.get("payload"),
        # The payload is the event's own fields: the batch's objects are referenced, and the
        # dead-letter store keeps one copy of them per connection and digest (SPEC 16).
        shared=item.get("shared"),
        shared_blob=ctx.shared_blob(item.get("shared")),
        request=item.get("request"),
        status=failure.status,
        response_excerpt=failure.excerpt,
        history=failure.history if failure.history is not None else list(item.get("history") or []),
        attempts=int(item.get("attempts") or 0),
        first_attempt_at=item.get("first_attempt_at"),
        received_at=item.get("received_at"),
    )


def report_dead(ctx: Context, item: Mapping[str, Any], failure: Failure) -> Step:
    """The rest of a dead letter once its record is written: metrics, the log line, the backlog."""
    request = item.get("request")
    message_id = (request or {}).get("message_id") or payload_id(item.get("payload"))
    metrics.child(metrics.DEAD_LETTERS, ctx.connection_id, ctx.direction, failure.reason).inc()
    metrics.child(
        metrics.DELIVERIES,
        ctx.connection_id,
        ctx.direction,
        ctx.region,
        "dead_letter",
        outcomes.status_label(failure.status),
    ).inc()
    outcomes.report(
        connection=ctx.connection_id,
        direction=ctx.direction,
        outcome="dead_letter",
        reason=failure.reason,
        message_id=message_id,
        action=(request or {}).get("action"),
        status=failure.status,
        attempt=item.get("attempts"),
        error=failure.error,
    )
    ctx.trace.outcome(
        trace_ids(item) or ([message_id] if message_id else []),
        connection=ctx.connection_id,
        outcome=overview.DEAD_LETTER,
        reason=failure.reason,
        status=failure.status,
        error=failure.error,
    )
    ctx.release_backlog(*backlog_of(item))
    refused = f"{failure.status} {failure.excerpt or failure.error}" if failure.status else failure.error
    regulation_step(ctx, item, f"Voucherify refused the deletion: {refused}".strip())
    return Step.done(failure.reason)


def skipped_unchanged(ctx: Context, request: OutboundRequest, item: Mapping[str, Any]) -> None:
    """An upsert not sent: Voucherify already holds exactly this (outcome ``skipped_unchanged``)."""
    metrics.child(metrics.EVENTS_SKIPPED, ctx.connection_id, ctx.direction, "unchanged").inc()
    outcomes.report(
        connection=ctx.connection_id,
        direction=ctx.direction,
        outcome="skipped_unchanged",
        message_id=request.message_id,
        action=request.action,
    )
    ctx.release_backlog(*backlog_of(item))


def raise_stale(ctx: Context, parts: Sequence[Mapping[str, Any]]) -> None:
    """The newest event time of each customer among ``parts`` of a call Voucherify took: older
    upserts of those customers are stale from now on (the stale rule is the target's)."""
    newest: dict[str, int] = {}
    for part in parts:
        ms = ctx.target.stale_time(part.get("action"), part.get("event_time"))
        if ms is not None and part.get("customer"):
            newest[part["customer"]] = max(ms, newest.get(part["customer"], ms))
    for customer, ms in newest.items():
        ctx.stale.applied(customer, ms, ctx.tuning.stale_ttl)


def skipped_parts(ctx: Context, parts: Sequence[Mapping[str, Any]], reason: str) -> None:
    """Parts of a coalesced call left out of it (e.g. a suppressed customer's): each one its
    event's skip, as :func:`finish_skipped` reports a whole item's.  Their backlog rides on the
    call, released when it finishes."""
    for part in parts:
        message_id = part.get("message_id")
        outcomes.skipped(
            ctx.connection_id, ctx.direction, reason, message_id=message_id, action=part.get("action")
        )
        if message_id:
            ctx.trace.outcome(
                [message_id], connection=ctx.connection_id, outcome=overview.SKIPPED, reason=reason
            )
