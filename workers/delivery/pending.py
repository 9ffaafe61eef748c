"""Calls a target only queued (Voucherify's bulk upsert: ``202`` and an async action), read back
before anything is counted delivered (SPEC 10).

Knows no system: the target says whether an answer only queued the work (``queued_as``), how to
read the queued work's state (``poll_request`` for the budgets, ``read_action`` for the call),
and how a queued request splits per customer (``per_customer``)::

    engine: before the call (target.may_queue) ── the customers' ``out`` markers ``sending:<ms>``
           (a process killed with the call on the wire leaves them, for at most the bound: a
           newer upsert does not land before a bulk Voucherify may still run); cleared after
           an answer that did not queue it, kept (to expire) when its fate is unknown (5xx)
    engine: 2xx, target.queued_as -> an action id
        ── every part's key recorded done (nothing is sent twice while it runs), the customers'
           ``out`` markers set (no newer upsert overtakes the queued one), the item PARKED
           ``async_action`` in the delayed store (no worker waits)
    deliver task: the item back ── past the bound (10 min) ──> RESEND each customer singly, and
           WATCH the original (it may still run: the customers' newer upserts wait for it, at
           most WATCH_SECONDS more; the resent singles are not newer and go at once)
        ── the poll's budgets denied ──> parked (throttled)
        ── poll ── not finished / no answer ──> parked again (backoff, >= the server's wait)
                ── FAILED (nothing applied), or unknown (404) ──> RESEND each customer singly
                ── DONE ── each customer in the errors: dead-lettered on its own with the
                           target's key and message (its keys forgotten: a replay sends it)
                        └─ the others: delivered (digests remembered; stale marks were raised
                           at the 202: Voucherify applies in the order it accepted)

A worker killed in the middle leaves the parked item in the delayed store or the broker (late
acks): it is polled again; a resend claims the parts' keys like any call.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol

from connector import metrics
from connector.contract import DeliveryItem, backlog_of
from workers.delivery import attempts, endings, refusals, shutdown
from workers.delivery.attempts import Step, new_item
from workers.delivery.context import Context
from workers.delivery.deadletters import REJECTED
from workers.delivery.endings import Failure, finish_dead
from workers.delivery.holds import Holds
from workers.delivery.pauses import PAUSED_REASON
from workers.delivery.store import DelayedStore, Parked
from workers.delivery.target import Answer
from workers.delivery.transport import HTTPResult
from workers.outbound import OutboundRequest

ASYNC_KEY = "async_action"  # the item's record of its queued call: {"id", "at", "polls"}
REASON = "async_action"  # the parked reason while it runs
FIRST_POLL_SECONDS = 1.0
MAX_POLL_SECONDS = 30.0
# Not finished this long after it was accepted (``CONNECTOR_ASYNC_ACTION_BOUND_SECONDS``): the
# customers are sent again singly, and the original is still watched (it may yet run): newer
# upserts of those customers wait for it at most WATCH_SECONDS more, then go.
WATCH_SECONDS = 3600.0


@dataclass(frozen=True)
class ActionState:
    status: str  # ENQUEUED | IN_PROGRESS | DONE | FAILED | UNKNOWN
    finished: bool
    # customer -> the target's reason ("key: message"), for each customer that failed
    errors: Mapping[str, str] = field(default_factory=dict)


class QueuingTarget(Protocol):
    def queued_as(self, request: OutboundRequest, answer: HTTPResult) -> str | None: ...

    def poll_request(self, action_id: str) -> OutboundRequest: ...

    def read_action(self, action_id: str) -> tuple[Answer, ActionState | None]: ...

    def per_customer(self, request: OutboundRequest) -> list[OutboundRequest]: ...

    def applied(self, requests: list[OutboundRequest]) -> None: ...


def is_pending(item: Mapping[str, Any]) -> bool:
    return isinstance(item.get(ASYNC_KEY), dict)


SENDING = "sending:"  # an ``out`` marker's value before the call: ``sending:<newest event ms>``


def sending(ctx: Context, request: OutboundRequest) -> dict[str, str]:
    """Before a call that may only be queued: mark its customers (``sending:<ms>``, the newest
    event time of each one's upserts in it) for at most the bound, and return the marks."""
    target = ctx.target  # the Target protocol's own may_queue and stale_time: no cast
    if not request.parts or not target.may_queue(request):
        return {}
    newest: dict[str, int] = {}
    for part in request.parts:
        customer = str(part.get("customer") or "")
        if customer:
            ms = target.stale_time(part.get("action"), part.get("event_time"))
            newest[customer] = max(newest.get(customer, -1), -1 if ms is None else ms)
    marks = {customer: f"{SENDING}{ms}" for customer, ms in newest.items()}
    Holds(ctx.client, ctx.keys, ctx.connection_id).mark_sending(marks, ctx.tuning.async_action_bound)
    return marks


def answered(ctx: Context, request: OutboundRequest, marks: dict[str, str], answer: Answer) -> None:
    """After the call: its marks go, unless it may have been queued (``queued`` then replaces
    them) or its fate is unknown (no answer, a 5xx: Voucherify may have queued it, so they
    stay until the bound, or until the call, sent again, is read back)."""
    if not marks or not isinstance(answer, HTTPResult) or answer.status >= 500:
        return
    if 200 <= answer.status < 300 and ctx.target.queued_as(request, answer) is not None:
        return
    Holds(ctx.client, ctx.keys, ctx.connection_id).clear_marks(marks)


def unsent(ctx: Context, marks: dict[str, str]) -> None:
    """The marked call did not go after all (its budgets said wait): its marks go."""
    if marks:
        Holds(ctx.client, ctx.keys, ctx.connection_id).clear_marks(marks)


def queued(ctx: Context, request: OutboundRequest, item: DeliveryItem, action_id: str) -> Step:
    """``request`` was accepted for later: park it to be read back."""
    now = time.time()
    parts = list(request.parts or ())
    customers = {str(p["customer"]) for p in parts if p.get("customer")}
    # Raised now, as for a delivered call: Voucherify will apply these in the order accepted,
    # so an older upsert arriving meanwhile must still be skipped as stale.  (True from the
    # 202 on: should the process die before the rest, the bulk sent again is not older.)
    endings.raise_stale(ctx, parts)
    item["async_action"] = {"id": action_id, "at": now, "polls": 0}
    item["parked"] = True
    due = now + FIRST_POLL_SECONDS
    # One transaction: the keys done, the customers' markers ``queued`` (Voucherify applies the
    # queued upserts later: a newer one sent meanwhile would be overwritten by the older queued
    # one, so the customers' next upserts wait for it) and the read-back stored.  Written one
    # after the other, a worker killed between them left the keys done (its task, run again,
    # skipped the bulk as a duplicate) with nothing to read it back and lift its customers'
    # ``sending`` markers: their next upserts and events waited for the bound (seen: a kill -9
    # test's customers waiting past its two minutes, their bulk "skipped duplicate").
    pipe = ctx.client.pipeline(transaction=True)
    keys = [request.idempotency_key, *(p["idempotency_key"] for p in parts)]
    ctx.ledger.complete_many(keys, ctx.ledger_keep, pipe=pipe)
    bound = ctx.tuning.async_action_bound
    Holds(ctx.client, ctx.keys, ctx.connection_id).mark_out(
        customers, bound + WATCH_SECONDS + 60.0, pipe=pipe
    )
    parked = Parked(ctx.connection_id, ctx.direction, ctx.queue, [item], due, REASON)
    DelayedStore(ctx.client, ctx.keys).add([parked], pipe=pipe)
    pipe.execute()
    metrics.child(metrics.ASYNC_ACTIONS, ctx.connection_id, "accepted").inc()
    attempts.parked(ctx, request, item, REASON, due)
    return Step.done(REASON)


def settle(ctx: Context, item: DeliveryItem) -> tuple[list[DeliveryItem], Step | None]:
    """Read a parked queued call back: (items to run now, or a step when it parks again)."""
    target: QueuingTarget = ctx.target  # type: ignore[assignment]
    info: dict[str, Any] = item["async_action"]
    request = OutboundRequest.from_dict(item["request"])
    now = time.time()
    age = now - float(info.get("at") or now)
    watching = bool(info.get("watch"))
    if watching and age > ctx.tuning.async_action_bound + WATCH_SECONDS:
        return _unwatch(ctx, request), None  # newer upserts wait no longer
    if not watching and age > ctx.tuning.async_action_bound:
        # Sent again singly now; the original may still run at Voucherify and land later, so
        # it is watched and its customers' newer upserts wait for it (the ``queued`` marker).
        again = _resend(ctx, item, request, "expired", keep_marker=True)
        info["watch"] = True
        item["backlog"] = 0  # the resent customers carry the backlog now
        item.pop("backlog_bytes", None)
        item["payload"] = None
        return again, Step.parked(REASON, now + FIRST_POLL_SECONDS)
    if not info.get("id"):  # the 2xx named no action to read back
        return _resend(ctx, item, request, "unknown"), None
    if shutdown.stopping():  # a stopping worker makes no new call: another one reads it back
        return [], Step.parked(shutdown.REASON, now)
    poll = target.poll_request(str(info["id"]))
    budgets = ctx.target.budgets_for(poll)
    grant = ctx.budgets.acquire(budgets, has_slot=True)
    if not grant.granted:
        if grant.reason == PAUSED_REASON:  # until the resume, not in a loop through the scheduler
            return [], Step.parked(PAUSED_REASON, now + ctx.tuning.auth_probe)
        attempts.throttled(ctx)
        return [], Step.parked("throttled", now + grant.wait)
    answer, state = target.read_action(str(info["id"]))
    observation = attempts.observe(ctx, budgets, answer, grant)
    polls = int(info.get("polls") or 0) + 1
    # A refused read-back: the credentials (the connection pauses; the read-back waits for its
    # resume), or only the read-back (a key without async-actions: it counts as an unfinished
    # poll, and the bound sends the customers again singly).
    whose = refusals.judge(ctx, min(polls, refusals.REFUSAL_ATTEMPTS - 1)) if observation.auth_refused else ""
    if whose == refusals.PAUSE:
        attempts.auth_refused(ctx, answer)
    if whose:  # a refusal judged (once paused): its probe place, if any, is free again
        ctx.budgets.release(grant)
    if whose == refusals.PAUSE:
        return [], Step.parked(PAUSED_REASON, now + ctx.tuning.auth_probe)
    info["polls"] = polls
    unknown = state is None and isinstance(answer, HTTPResult) and answer.status == 404
    if watching and (unknown or (state is not None and state.finished)):
        return _unwatch(ctx, request), None  # the original has run (or never will): done
    if unknown:
        return _resend(ctx, item, request, "unknown"), None
    if state is None or not state.finished:
        delay = min(MAX_POLL_SECONDS, FIRST_POLL_SECONDS * (2 ** min(polls, 5)))
        delay = max(delay, observation.wait or 0.0)
        return [], Step.parked(REASON, now + delay)
    if state.status != "DONE":
        return _resend(ctx, item, request, "failed"), None
    assert isinstance(answer, HTTPResult)
    metrics.child(metrics.ASYNC_ACTIONS, ctx.connection_id, "done").inc()
    ok: list[OutboundRequest] = []
    ok_items: list[DeliveryItem] = []
    customers: list[str] = []
    for single in target.per_customer(request):
        customer = str(single.customer)
        customers.append(customer)
        sub = _sub_item(item, single)
        reason = state.errors.get(customer)
        if reason is not None:
            # Not applied: its keys forgotten, so that a replay of the dead letter sends it.
            _forget(ctx, single)
            finish_dead(
                ctx,
                sub,
                Failure(REJECTED, f"async action {info['id']}: {reason}", answer.status, reason[:500]),
            )
            continue
        ok.append(single)
        ok_items.append(sub)
    if ok_items:
        attempts.delivered(ctx, ok_items, answer, attempt=item.get("attempts"))
        target.applied(ok)
    ctx.release_backlog(*backlog_of(item))
    Holds(ctx.client, ctx.keys, ctx.connection_id).clear_out(customers, only="queued")
    return [], None


def _unwatch(ctx: Context, request: OutboundRequest) -> list[DeliveryItem]:
    """The watched original has finished: its customers' newer upserts may go."""
    target: QueuingTarget = ctx.target  # type: ignore[assignment]
    customers = [str(s.customer) for s in target.per_customer(request)]
    Holds(ctx.client, ctx.keys, ctx.connection_id).clear_out(customers, only="queued")
    return []


def _resend(
    ctx: Context, item: DeliveryItem, request: OutboundRequest, why: str, *, keep_marker: bool = False
) -> list[DeliveryItem]:
    """Each customer of a queued call that did not complete, as its own call again
    (``keep_marker``: the original may still run, its customers' newer upserts wait for it)."""
    target: QueuingTarget = ctx.target  # type: ignore[assignment]
    metrics.child(metrics.ASYNC_ACTIONS, ctx.connection_id, why).inc()
    singles = target.per_customer(request)
    for single in singles:
        _forget(ctx, single)
    units, stored = backlog_of(item)
    out: list[DeliveryItem] = []
    for index, single in enumerate(singles):
        # The queued call's backlog rides on the first: released when it is finished.
        sub = _sub_item(item, single, units if index == 0 else 0, stored if index == 0 else 0)
        out.append(sub)
    if not keep_marker:
        Holds(ctx.client, ctx.keys, ctx.connection_id).clear_out(
            (str(s.customer) for s in singles), only="queued"
        )
    return out


def _forget(ctx: Context, single: OutboundRequest) -> None:
    keys = [single.idempotency_key, *(p["idempotency_key"] for p in single.parts or ())]
    ctx.client.delete(*[ctx.keys.ledger(ctx.connection_id, k) for k in keys])


def _sub_item(item: DeliveryItem, single: OutboundRequest, units: int = 0, stored: int = 0) -> DeliveryItem:
    """One customer's share of a queued call's item: its own request, its own events."""
    ids = {p.get("message_id") for p in single.parts or ()} or {single.message_id}
    payload = item.get("payload")
    events = payload if isinstance(payload, list) else [payload]
    mine = [e for e in events if isinstance(e, dict) and e.get("messageId") in ids]
    sub = new_item(single, mine if len(mine) != 1 else mine[0], item.get("received_at"), units, stored)
    sub["first_attempt_at"] = item.get("first_attempt_at")
    sub["attempts"] = int(item.get("attempts") or 0)
    sub["history"] = list(item.get("history") or [])
    return sub
