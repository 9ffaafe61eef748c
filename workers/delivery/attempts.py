"""One send-and-record for every path (one call of the engine, one batch of an outbox flush),
and the outcomes every path ends in, reported once each way (SPEC 7).

::

    send ──────── credentials added at the last moment, the transport, the latency metric
    attempt ───── send + the item's record: first attempt, attempt count, bounded history
    observe ───── the target's reading of the answer applied to the call's budgets
    delivered ─── metrics, log line, backlog released            (Step.done "delivered")
    retrying ──── metrics, log line                              (the caller parks "retry")
    parked ────── metric, log line (DEBUG: throttled, busy, deferred can be many)
    (the terminal outcomes -- delivered and finished, skipped, dead -- in workers.delivery.endings)

A *step* is what one item came to: DONE (terminal, reported by endings) or PARKED until ``due``
(written to the delayed store by the pipeline, which keeps each customer's order).
"""

from __future__ import annotations

import enum
import logging
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from connector import USER_AGENT, metrics, overview
from connector.contract import DeliveryItem, backlog_of
from connector.errors import TransportFailure
from connector.jsonvalues import dumps_kept
from workers.delivery import outcomes, pauses
from workers.delivery.budgets import Budget, Grant, Observation
from workers.delivery.context import Context
from workers.delivery.deadletters import MAX_HISTORY
from workers.delivery.target import Answer
from workers.delivery.transport import HTTPResult
from workers.outbound import OutboundRequest

log = logging.getLogger("connector.delivery")


class StepKind(enum.Enum):
    DONE = "done"
    PARKED = "parked"


@dataclass(frozen=True)
class Step:
    kind: StepKind
    due: float = 0.0  # epoch seconds, for PARKED
    reason: str = ""

    @classmethod
    def done(cls, reason: str = "") -> Step:
        return cls(StepKind.DONE, reason=reason)

    @classmethod
    def parked(cls, reason: str, due: float) -> Step:
        return cls(StepKind.PARKED, due=due, reason=reason)


def new_item(
    request: OutboundRequest,
    payload: Any,
    received_at: float | None,
    backlog_units: int,
    backlog_bytes: int = 0,
    *,
    replay: bool = False,
) -> DeliveryItem:
    """A new item.  ``replay``: it comes from ``connector replay`` (its upserts may go in the
    big bulks of a backfill, SPEC 15); the mark is the item's FIRST key, which is how the hold's
    RELEASE script tells a replayed customer's items from live ones without parsing them."""
    item: DeliveryItem = {
        "request": request.to_dict(),
        "payload": payload,
        "received_at": received_at,
        "first_attempt_at": None,
        "attempts": 0,
        "history": [],
        "last_delay": None,
        "backlog": backlog_units,
        "parked": False,
    }
    if backlog_bytes:
        item["backlog_bytes"] = backlog_bytes
    if replay:
        item = {"replay": True, **item}
    return item


def keep_shared(item: DeliveryItem, sources: Sequence[Mapping[str, Any]]) -> DeliveryItem:
    """A coalesced ``item`` keeps the reference to its events' batch objects when they all
    share one (their payloads are their own fields: see ``DeliveryItem.shared``)."""
    refs = {s.get("shared") for s in sources}
    if len(refs) == 1 and (ref := refs.pop()):
        item["shared"] = ref
    return item


# ---------------------------------------------------------------------------------------------
# Sending and recording


def send(ctx: Context, method: str, path: str, body: bytes | None, headers: Mapping[str, str]) -> Answer:
    """One HTTP call to the task's target: never raises for a missing answer."""
    full = {
        "Content-Type": "application/json",
        "User-Agent": USER_AGENT,
        **headers,
        **ctx.target.auth_headers(),
    }
    answer: Answer
    ctx.count_call()
    try:
        answer = ctx.transport.send(
            method, ctx.base_url + path, full, body, (ctx.tuning.connect_timeout, ctx.tuning.read_timeout)
        )
    except TransportFailure as exc:
        answer = exc
    metrics.child(metrics.REQUEST_LATENCY, ctx.target.name).observe(answer.latency)
    # Calls and 429s per connection, fleet-wide (SPEC 16): what the quota alerts reason about.
    status = metrics.status_label(answer.status if isinstance(answer, HTTPResult) else None)
    metrics.child(metrics.CALLS, ctx.connection_id, ctx.target.name, status).inc()
    return answer


def history_entry(answer: Answer, at: float) -> dict[str, Any]:
    return {
        "t": round(at, 3),
        "status": answer.status if isinstance(answer, HTTPResult) else None,
        "error": answer.message if isinstance(answer, TransportFailure) else None,
        "latency_ms": int(answer.latency * 1000),
    }


def append_history(history: list[dict[str, Any]], entry: dict[str, Any], keep: int = MAX_HISTORY) -> None:
    """Bounded: the first attempt (when the trouble started) and the most recent ones."""
    history.append(entry)
    if len(history) > keep:
        del history[1 : len(history) - keep + 1]


def payload_id(payload: Any) -> str | None:
    if isinstance(payload, dict):
        value = payload.get("messageId") or payload.get("id")
        return str(value)[:200] if value is not None else None
    return None


def trace_ids(item: Mapping[str, Any]) -> list[str]:
    """The event ids an item's trace records go under: the id the pipeline gave it (a
    Voucherify event id), else the request's message id and those of its coalesced parts, else
    the payload's own id."""
    if item.get("trace_id"):
        return [str(item["trace_id"])]
    request = item.get("request") or {}
    ids = [request.get("message_id"), *((p or {}).get("message_id") for p in request.get("parts") or ())]
    found = [str(i) for i in ids if i]
    if not found:
        own = payload_id(item.get("payload"))
        return [own] if own else []
    return found


def record_attempt(ctx: Context, ids: Sequence[str], method: str, path: str, answer: Answer) -> None:
    """The attempt in the trace of each of ``ids``: never a header, the answer cut short."""
    ctx.trace.attempt(
        ids,
        method=method,
        path=path,
        status=status_of(answer),
        latency_ms=int(answer.latency * 1000),
        answer=excerpt(answer) or None,
        error=answer.message if isinstance(answer, TransportFailure) else None,
    )


def attempt(ctx: Context, request: OutboundRequest, item: DeliveryItem) -> Answer:
    """Send ``request`` for ``item`` and record the attempt on the item (and its trace)."""
    body = dumps_kept(request.body) if request.body is not None else None  # held for a send slot
    now = time.time()
    if not item.get("first_attempt_at"):
        item["first_attempt_at"] = now
    item["attempts"] = int(item.get("attempts") or 0) + 1
    answer = send(ctx, request.method, request.path, body, request.headers)
    append_history(item.setdefault("history", []), history_entry(answer, now))
    record_attempt(ctx, trace_ids(item), request.method, request.path, answer)
    return answer


def observe(ctx: Context, spent: tuple[Budget, ...], answer: Answer, grant: Grant | None) -> Observation:
    """The target's reading of ``answer``, applied to the budgets the call spent (``grant``'s);
    answered after its count's granule ended, the call is counted again (``Budgets.answered``)."""
    ctx.budgets.answered(spent, grant)
    observation = ctx.target.interpret(answer, spent)
    if ctx.budgets.apply(spent, observation, slowdown_seconds=ctx.tuning.slowdown_seconds, grant=grant):
        metrics.child(metrics.RATE_LIMIT_SLOWDOWNS, ctx.connection_id, ctx.target.name).inc()
    return observation


def auth_refused(ctx: Context, answer: Answer, since: float | None = None) -> None:
    """The target refused the connection's credentials: pause the connection's delivery to that
    system only (one ERROR log, by the worker that paused it; the others find it paused).
    ``since``: a failed probe's pause, set again with its first time and not logged again."""
    if ctx.budgets.pools is not None:
        ctx.budgets.pools.drop(ctx.connection_id, None)  # grants held ahead must not be spent
    paused = pauses.pause(ctx.client, ctx.keys, ctx.connection_id, pauses.AUTH, ctx.target.name, since)
    if paused and since is None:
        log.error(
            "credentials refused: connection paused until a probe succeeds or `connector resume`",
            extra={
                "connection": ctx.connection_id,
                "direction": ctx.direction,
                "system": ctx.target.name,
                "status": status_of(answer),
                "reason": pauses.AUTH,
            },
        )


def status_of(answer: Answer) -> int | None:
    return answer.status if isinstance(answer, HTTPResult) else None


def error_text(answer: Answer) -> str:
    return answer.message if isinstance(answer, TransportFailure) else f"HTTP {answer.status}"


def excerpt(answer: Answer) -> str:
    return answer.body if isinstance(answer, HTTPResult) else ""


# ---------------------------------------------------------------------------------------------
# Outcomes


def delivered(
    ctx: Context, items: Sequence[DeliveryItem], answer: HTTPResult, *, attempt: int | None = None
) -> None:
    """Each of ``items`` acknowledged by ``answer``: counted, logged, its backlog released."""
    now = time.time()
    units = stored = 0
    for item in items:
        request = item.get("request") or {}
        metrics.child(
            metrics.DELIVERIES, ctx.connection_id, ctx.direction, ctx.region, "delivered", str(answer.status)
        ).inc()
        received_at = item.get("received_at")
        if received_at:
            metrics.child(metrics.DELIVERY_LATENCY, ctx.direction).observe(max(0.0, now - float(received_at)))
        outcomes.report(
            connection=ctx.connection_id,
            direction=ctx.direction,
            outcome="delivered",
            message_id=request.get("message_id"),
            action=request.get("action"),
            status=answer.status,
            attempt=attempt if attempt is not None else item.get("attempts"),
            latency_ms=int(answer.latency * 1000),
        )
        ctx.trace.outcome(
            trace_ids(item), connection=ctx.connection_id, outcome=overview.DELIVERED, status=answer.status
        )
        item_units, item_bytes = backlog_of(item)
        units += item_units
        stored += item_bytes
    ctx.release_backlog(units, stored)


def retrying(
    ctx: Context,
    answer: Answer,
    *,
    reason: str,
    attempt: int | None,
    message_id: str | None = None,
    action: str | None = None,
    ids: Sequence[str] = (),
    until: float | None = None,
) -> None:
    """A failed attempt that will be tried again (the caller parks it until ``until``)."""
    status = status_of(answer)
    ctx.trace.outcome(
        ids, connection=ctx.connection_id, outcome=overview.FAILED, status=status, error=error_text(answer)
    )
    if until is not None:
        ctx.trace.wait(ids, connection=ctx.connection_id, reason="retry", until=until)
    metrics.child(metrics.RETRIES_SCHEDULED, ctx.connection_id, ctx.direction).inc()
    metrics.child(
        metrics.DELIVERIES,
        ctx.connection_id,
        ctx.direction,
        ctx.region,
        "retry",
        outcomes.status_label(status),
    ).inc()
    outcomes.report(
        connection=ctx.connection_id,
        direction=ctx.direction,
        outcome="retry",
        reason=reason,
        message_id=message_id,
        action=action,
        status=status,
        attempt=attempt,
        latency_ms=int(answer.latency * 1000),
        error=error_text(answer),
    )


def throttled(ctx: Context) -> None:
    """A call that waits for its budget (no attempt counted)."""
    metrics.child(metrics.RATE_LIMIT_WAITS, ctx.connection_id, ctx.target.name).inc()
    ctx.trace.count(ctx.connection_id, overview.WAITING_QUOTA)


def parked(ctx: Context, request: OutboundRequest, item: DeliveryItem, reason: str, due: float) -> None:
    metrics.child(metrics.PARKED, ctx.connection_id, ctx.direction, reason).inc()
    ctx.trace.wait(trace_ids(item), connection=ctx.connection_id, reason=reason, until=due)
    outcomes.report(
        connection=ctx.connection_id,
        direction=ctx.direction,
        outcome=reason,
        message_id=request.message_id,
        action=request.action,
        attempt=item.get("attempts"),
    )
