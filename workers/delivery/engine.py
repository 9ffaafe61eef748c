"""Delivering one :class:`~workers.outbound.OutboundRequest`: the per-item state machine.

::

    deliver_one(item)
      the worker is stopping (SIGTERM) ────────────────────────────> PARKED stopping (due now)
      no send slot before the deadline ────────────────────────────> PARKED deferred (due now)
      ledger.claim ── DUPLICATE ───────────────────────────────────> DONE   skipped/duplicate
                   ── BUSY (another attempt in flight) ────────────> PARKED busy (claim's TTL)
      older than the newest applied call of its customer? ─────────> DONE   skipped/stale
      newer than a bulk of its customer (maybe) still running ─────> PARKED bulk_in_progress
      its customer's send lock held elsewhere ─────────────────────> PARKED busy
        (a bulk: waits for all of them, a call's time at the most, never parks)
      merged call: each part's key claimed too ── a part BUSY ─────> PARKED busy (nothing sent)
                   every part delivered or stale ──────────────────> DONE   skipped
      its subject suppressed (SPEC 14; a merged call: its parts) ──> DONE   skipped/suppressed
      target.prepare ── a wait (e.g. no metadata schema yet) ──────> PARKED (its reason)
      (a call that may only be queued: its customers marked ``sending`` first, pending.sending)
      budgets.acquire ── denied (no attempt counted; marks cleared) > PARKED throttled (slot)
                      └─ the connection is paused ─────────────────> PARKED paused (until resumed)
        (a grant -- a planned one too -- late by the wire: handed back, asked for again)
      attempt ── 429 (quota) / 401, 403 (pauses the connection) ───> PARKED throttled / paused
                 (not an attempt: no retry spent, the window's clock stopped, quota_waits)
              └─ 401, 403 but the credentials probe is accepted ──> PARKED retry, then DONE
                 (this kind of call's refusal, workers.delivery.refusals)   dead letter refused
      attempt ── classify ── SUCCESS ─ only queued (202 bulk) ─────> DONE   its read-back parked (pending)
                                   └ ledger done, stale raised ──> DONE   delivered
                          ── RETRY ── retries.decide ── in window ─> PARKED retry (backoff)
                                                     └─ spent ─────> DONE   dead letter
                          ── PERMANENT ── target.after_refusal ────> PARKED (one more try)
                                       └───────────────────────────> DONE   dead letter

Everything that differs between systems (budgets, what an answer's headers mean, the stale
rule, a coalesced call rebuilt, a request kept to a schema) is the task's
:class:`~workers.delivery.target.Target`'s; this module names no system.

A *send slot* (one of ``CONNECTOR_WORKER_INFLIGHT`` per target system and process, shared by all
tasks of the process) is held from the claim to the end of the item: however many tasks and
customers run at once, a worker process keeps that many calls in flight per target, its HTTP
pool holds as many connections, and a task waits for a slot at most until its deadline.  While
several connections have work, each holds at most its fair share and a call over it is parked
at once (:mod:`workers.delivery.fairslots`).

Every path that is not PARKED is *terminal*: reported and its backlog released
(:mod:`workers.delivery.attempts`).  Parking itself (writing to the delayed store, keeping
per-customer order) belongs to the pipeline.  The item is a
:class:`~connector.contract.DeliveryItem`.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from typing import Any

from connector.contract import DeliveryItem
from connector.regulations import DELETE_ACTION, SUPPRESSED
from workers.delivery import attempts, endings, pending, quota_waits, refusals, shutdown, suppression
from workers.delivery.attempts import Step
from workers.delivery.budgets import Budget
from workers.delivery.classify import Verdict, classify
from workers.delivery.context import Context
from workers.delivery.deadletters import REFUSED, REJECTED, RETRY_WINDOW_EXCEEDED
from workers.delivery.endings import Failure, finish_dead, finish_skipped
from workers.delivery.leases import Grant
from workers.delivery.ledger import ClaimState, new_token
from workers.delivery.pauses import PAUSED_REASON
from workers.delivery.retries import decide
from workers.delivery.target import Answer, Wait
from workers.delivery.transport import HTTPResult
from workers.outbound import OutboundRequest


def deliver_one(ctx: Context, item: DeliveryItem) -> Step:
    request = OutboundRequest.from_dict(item["request"])
    quota_waits.resumed(item, time.time())  # type: ignore[arg-type]
    # Budgets granted when the call was planned (a bulk call: bulk or singles is decided by its
    # budgets) are good for this attempt only: an item parked before it sends asks again.
    pregranted = Grant.from_item(item.pop("pregranted", None))
    if shutdown.stopping():  # the worker is stopping: nothing new on the wire, the item waits in Redis
        return _park(ctx, request, item, shutdown.REASON, time.time())
    if ctx.slots is None:
        if ctx.out_of_time():
            return _park(ctx, request, item, "deferred", time.time())
        return _deliver(ctx, request, item, pregranted)
    # Waiting for a slot, never past the task's deadline (out of time: not even a try).
    wait = ctx.deadline - time.monotonic()
    if wait <= 0 or not ctx.slots.acquire(timeout=wait):
        return _park(ctx, request, item, shutdown.REASON if shutdown.stopping() else "deferred", time.time())
    try:
        if shutdown.stopping():  # the stop began while this item waited for its slot
            return _park(ctx, request, item, shutdown.REASON, time.time())
        return _deliver(ctx, request, item, pregranted)
    finally:
        ctx.slots.release()


def _park(ctx: Context, request: OutboundRequest, item: DeliveryItem, reason: str, due: float) -> Step:
    attempts.parked(ctx, request, item, reason, due)
    return Step.parked(reason, due)


def _wait(ctx: Context, request: OutboundRequest, item: DeliveryItem, wait: Wait) -> Step:
    if wait.reason == "throttled":
        attempts.throttled(ctx)
    now = time.time()
    quota_waits.parked(item, wait.reason, now)  # type: ignore[arg-type]
    return _park(ctx, request, item, wait.reason, now + wait.seconds)


# A customer's upsert in flight elsewhere: look again this soon (the lock lives one call).
BUSY_CUSTOMER_SECONDS = 0.5
# How long a bulk waits for its customers' send locks before it goes without them.
BULK_LOCK_PATIENCE_SECONDS = 2.0
# A newer upsert of a customer whose bulk still runs at Voucherify looks again this often (the
# bulk's read-back lifts the marker when the action has finished).
BULK_RUNNING = "bulk_in_progress"
BULK_RUNNING_SECONDS = 5.0
# Grants asked for, one after another late by the wire, before the item waits (parked).
LATE_GRANT_TRIES = 3


def _newest_ms(ctx: Context, request: OutboundRequest, event_ms: int | None) -> int | None:
    """The newest event time an upsert carries (a coalesced one: of its parts)."""
    if event_ms is not None or not request.parts:
        return event_ms
    times = [ctx.target.stale_time(p.get("action"), p.get("event_time")) for p in request.parts]
    known = [t for t in times if t is not None]
    return max(known) if known else None


def _deliver(ctx: Context, request: OutboundRequest, item: DeliveryItem, pregranted: Grant | None) -> Step:
    token = new_token()
    key = request.idempotency_key
    claim = ctx.ledger.claim(key, token, ctx.tuning.claim_ttl)
    if claim.state is ClaimState.DUPLICATE:
        return finish_skipped(ctx, request, item, "duplicate")
    if claim.state is ClaimState.BUSY:
        return _park(ctx, request, item, "busy", time.time() + claim.wait + 0.05)

    # One customer's upserts are sent one at a time: its send lock, taken before its stale
    # record is read and held until the answer (two in flight together could be applied
    # older-last, workers.delivery.stale).  A call of several customers (a bulk) takes them all.
    event_ms = None if request.parts else ctx.target.stale_time(request.action, request.event_time)
    customers = _locked_customers(request, event_ms)
    if len(customers) == 1:
        newest = _newest_ms(ctx, request, event_ms)
        state, wait = ctx.stale.check_and_lock(customers[0], event_ms, token, ctx.tuning.claim_ttl, newest)
        if state == "stale":
            ctx.ledger.complete(key, ctx.ledger_keep)
            return finish_skipped(ctx, request, item, "stale")
        if state == "queued":  # an older bulk of the customer's still runs: land after it
            ctx.ledger.release(key, token)
            return _park(
                ctx, request, item, BULK_RUNNING, time.time() + min(wait, BULK_RUNNING_SECONDS) + 0.05
            )
        if state == "busy":
            ctx.ledger.release(key, token)
            return _park(ctx, request, item, "busy", time.time() + min(wait, BUSY_CUSTOMER_SECONDS) + 0.05)
    elif customers:
        # A bulk waits a little for locks held by single upserts in flight (a call's time).  It
        # never parks for them: parked, it would lose the bulk budget granted when it was planned
        # (an hour's, on most plans) -- measured: bulks waiting an hour.  A lock held longer
        # than that is the rare case where it goes without (as bulks did before they locked).
        patience = min(BULK_LOCK_PATIENCE_SECONDS, max(0.0, ctx.deadline - time.monotonic()))
        if not ctx.stale.lock_many(customers, token, ctx.tuning.claim_ttl, patience):
            customers = []  # none held (lock_many released what it had taken)
    try:
        held: list[str] = []  # the parts' keys this attempt claimed (a coalesced request)
        if request.parts:
            # A coalesced request: its key is its own, so each part (one event) is claimed too -- a
            # duplicate of the event grouped differently elsewhere has another merged key, and only
            # the part's claim keeps the two from both sending it.  A part in flight elsewhere parks
            # the whole request until that claim ends (done then, or free again if its owner died).
            live, why, held, busy = _live_parts(ctx, request, token)
            if busy is not None:
                ctx.ledger.release(key, token, *held)
                return _park(ctx, request, item, "busy", time.time() + busy + 0.05)
            if live is None:
                ctx.ledger.complete(key, ctx.ledger_keep)
                ctx.ledger.complete_many([p["idempotency_key"] for p in request.parts], ctx.ledger_keep)
                return finish_skipped(ctx, request, item, why)
            request = live
        return _send(ctx, request, item, key, token, held, event_ms, pregranted)
    finally:
        ctx.stale.unlock_many(customers, token)


def _locked_customers(request: OutboundRequest, event_ms: int | None) -> list[str]:
    """The customers whose send locks the call takes: an upsert's (timed, or coalesced) one, or
    every customer of a coalesced call of several (a bulk); none for other calls."""
    if request.customer:
        return [request.customer] if (event_ms is not None or request.parts) else []
    return sorted({str(p["customer"]) for p in request.parts or () if p.get("customer")})


def _send(
    ctx: Context,
    request: OutboundRequest,
    item: DeliveryItem,
    key: str,
    token: str,
    held: list[str],
    event_ms: int | None,
    pregranted: Grant | None,
) -> Step:
    gone = suppression.suppressed(ctx, request, item)
    if gone:
        # A suppressed subject (SPEC 14): dropped here, whatever brought the item (queued before
        # the regulation, held, parked for a retry), never sent.  A coalesced call goes on with
        # the other customers' parts.
        live = suppression.live_parts(request, gone) if request.parts else []
        rebuilt = ctx.target.rebuild(request, live) if live else None
        if rebuilt is None:
            ctx.ledger.release(key, token, *held)
            return finish_skipped(ctx, request, item, SUPPRESSED)
        endings.skipped_parts(ctx, [p for p in request.parts or () if p not in live], SUPPRESSED)
        request = rebuilt
    merged = request  # as merged, before the target's preparation: what ``applied`` remembers
    prepared = ctx.target.prepare(request, item)
    if isinstance(prepared, Wait):
        ctx.ledger.release(key, token, *held)
        return _wait(ctx, request, item, prepared)
    request = prepared
    budgets = ctx.target.budgets_for(request)
    marks = pending.sending(ctx, request)  # a call that may only be queued: its customers marked
    grant = _on_time(ctx, budgets, item, pregranted)
    if not grant.granted:
        pending.unsent(ctx, marks)
        ctx.ledger.release(key, token, *held)
        if grant.reason == PAUSED_REASON:
            return _wait(ctx, request, item, Wait(PAUSED_REASON, ctx.tuning.auth_probe))
        return _wait(ctx, request, item, Wait("throttled", grant.wait))

    first_before = item.get("first_attempt_at")
    answer = attempts.attempt(ctx, request, item)
    pending.answered(ctx, request, marks, answer)
    verdict = classify(answer)
    if request.action == DELETE_ACTION and attempts.status_of(answer) == 404:
        verdict = Verdict.SUCCESS  # a regulation's deletion of a customer never seen: nothing to forget
    observation = attempts.observe(ctx, budgets, answer, grant)
    if observation.auth_refused:
        whose = refusals.judge(ctx, int(item.get("attempts") or 0))
        if whose == refusals.CALL:  # this kind of call's refusal, not the credentials'
            if grant is not None:
                ctx.budgets.release(grant)  # judged: its probe place (if any) is free again
            ctx.ledger.release(key, token, *held)
            return _refused(ctx, request, item, answer, observation.wait)
        if whose == refusals.UNDECIDED:  # no verdict yet (another worker probes): look again
            quota_waits.not_an_attempt(item, first_before)  # type: ignore[arg-type]
            ctx.ledger.release(key, token, *held)
            return _wait(ctx, request, item, Wait("busy", 1.0))
    if observation.auth_refused or (observation.quota and verdict is Verdict.RETRY):
        # Not the event's fault: the connection's credentials or the shop's quota.  The item
        # waits in the delayed store; no attempt spent, the retry window not running.
        quota_waits.not_an_attempt(item, first_before)  # type: ignore[arg-type]
        ctx.ledger.release(key, token, *held)
        if observation.auth_refused:
            attempts.auth_refused(ctx, answer)
            if grant is not None:
                ctx.budgets.release(grant)  # paused now: its probe place can go
            return _wait(ctx, request, item, Wait(PAUSED_REASON, ctx.tuning.auth_probe))
        return _wait(ctx, request, item, Wait("throttled", observation.wait or observation.pause or 1.0))
    if verdict is Verdict.SUCCESS:
        assert isinstance(answer, HTTPResult)
        action_id = ctx.target.queued_as(request, answer)
        if action_id is not None:  # only queued (a bulk call's 202): read back before delivered
            return pending.queued(ctx, request, item, action_id)
        ctx.ledger.complete(key, ctx.ledger_keep)
        if request.parts:
            _parts_delivered(ctx, request)
        if event_ms is not None and request.customer:
            ctx.stale.applied(request.customer, event_ms, ctx.tuning.stale_ttl)
        ctx.target.applied([merged])
        return endings.finish_delivered(ctx, item, answer)

    ctx.ledger.release(key, token, *held)
    if verdict is Verdict.PERMANENT:
        again = ctx.target.after_refusal(answer, item)
        if again is not None:
            return _wait(ctx, request, item, again)
        return _dead(ctx, item, REJECTED, answer)
    return _retry_or_dead(ctx, request, item, answer, observation.wait)


def _on_time(ctx: Context, budgets: tuple[Budget, ...], item: DeliveryItem, grant: Grant | None) -> Grant:
    """The last look before the wire: the call's grant (planned with it, or asked for now), or
    a denial.  A grant late by now is handed back and asked for again -- sent late, the call
    could land in a window its grant was not counted in (``workers.delivery.leases``)."""
    tries = 0
    while grant is None or grant.late():
        if grant is not None:
            ctx.budgets.hand_back(budgets, grant)
        if tries == LATE_GRANT_TRIES:  # the process stalls again and again: the item waits
            return Grant(False, 0.0)
        tries += 1
        grant = ctx.budgets.acquire_soon(budgets, has_slot=bool(item.get("parked")), stop=ctx.out_of_time)
        if not grant.granted:
            return grant
    return grant


def _dead(ctx: Context, item: DeliveryItem, reason: str, answer: Answer) -> Step:
    return finish_dead(ctx, item, Failure.of(reason, answer))


def _live_parts(
    ctx: Context, request: OutboundRequest, token: str
) -> tuple[OutboundRequest | None, str, list[str], float | None]:
    """The coalesced request without its parts already delivered or stale (None: nothing left),
    the reason when nothing is left, the part keys now claimed with ``token``, and -- when a part
    is being sent by another attempt -- how long that claim still lives (then nothing is sent)."""
    parts = list(request.parts or ())
    claims = ctx.ledger.claim_many([p["idempotency_key"] for p in parts], token, ctx.tuning.claim_ttl)
    held = [p["idempotency_key"] for p, c in zip(parts, claims, strict=True) if c.state is ClaimState.CLAIMED]
    busy = [c.wait for c in claims if c.state is ClaimState.BUSY]
    if busy:
        return None, "busy", held, max(busy)
    newest = ctx.stale.newest_many([str(p.get("customer")) for p in parts])
    live: list[Mapping[str, Any]] = []
    stale = False
    for part, claim, newest_ms in zip(parts, claims, newest, strict=True):
        if claim.state is ClaimState.DUPLICATE:
            continue
        ms = ctx.target.stale_time(part.get("action"), part.get("event_time"))
        if ms is not None and newest_ms is not None and ms < newest_ms:
            stale = True
            continue
        live.append(part)
    return ctx.target.rebuild(request, live), "stale" if stale else "duplicate", held, None


def _parts_delivered(ctx: Context, request: OutboundRequest) -> None:
    parts = request.parts or ()
    ctx.ledger.complete_many([p["idempotency_key"] for p in parts], ctx.ledger_keep)
    endings.raise_stale(ctx, parts)


def _refused(
    ctx: Context, request: OutboundRequest, item: DeliveryItem, answer: Answer, server_wait: float | None
) -> Step:
    """A 401/403 of this kind of call only: an attempt like a failed one, dead-lettered
    ``refused`` after :data:`~workers.delivery.refusals.REFUSAL_ATTEMPTS` (or the window)."""
    if int(item.get("attempts") or 0) >= refusals.REFUSAL_ATTEMPTS:
        return _dead(ctx, item, REFUSED, answer)
    return _retry_or_dead(ctx, request, item, answer, server_wait)


def _retry_or_dead(
    ctx: Context, request: OutboundRequest, item: DeliveryItem, answer: Answer, server_wait: float | None
) -> Step:
    now = time.time()
    decision = decide(
        now=now,
        first_attempt_at=quota_waits.window_start(item, now),  # type: ignore[arg-type]
        window=ctx.window,
        previous_delay=item.get("last_delay"),
        base=ctx.tuning.retry_base,
        cap=ctx.tuning.retry_cap,
        server_wait=server_wait,
    )
    if decision.exhausted:
        return _dead(ctx, item, RETRY_WINDOW_EXCEEDED, answer)
    item["last_delay"] = decision.delay
    attempts.retrying(
        ctx,
        answer,
        reason=f"retry in {decision.delay:.1f}s",
        attempt=item.get("attempts"),
        message_id=request.message_id,
        action=request.action,
        ids=attempts.trace_ids(item),
        until=now + decision.delay,
    )
    return Step.parked("retry", now + decision.delay)


__all__ = ["Step", "deliver_one"]
