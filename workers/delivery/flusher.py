"""An outbox flushed in batch requests (Voucherify -> Segment: ``POST /v1/batch``).

::

    webhook task ── append (Lua: dedupe on the item's key in the ledger, RPUSH, index) ── flush
                                                                                          │
    scheduler sweep ── non-empty, unlocked, due outboxes ── connector.segment_flush ──────┤
                                                                                          ▼
    flush: take the connection's lock (one flusher at a time) and loop until empty or out of time:
        LRANGE a prefix the target packs into one request (Segment: 2,500 events, 500 KB,
        32 KB each; an oversized head alone is dead-lettered too_large)
        the target's budgets denied ──> next_at = slot; stop
        the write key refused (paused) ──> next_at = the probe time; stop (the batch there is
        the probe: accepted, delivery goes on; 401/403, paused again; nothing dead-lettered)
        send ── 2xx ──────> LTRIM the prefix (only if the lock is still ours), report delivered
             ── 401/403 ──> pause Segment delivery (not Voucherify's); next_at = probe time
             ── RETRY ────> keep everything; next_at = backoff (>= the server's wait); items older
                            than the retry window are dead-lettered from the head; stop
             ── PERMANENT ─> dead-letter the prefix's items and LTRIM them, one atomic step

Items leave the list only after a 2xx or a dead letter, so a crash re-sends at worst the last
batch; Segment deduplicates on ``messageId`` (derived from the Voucherify event id).  The lock
is checked by the trimming script itself, so a flusher whose lock expired during a slow request
never trims what a newer flusher already handled.  A dead letter and its trim are ONE script
(:meth:`DeadLetters.add_then_trim`): trimmed first, a Redis error in between lost the event;
dead-lettered first, a lost lock would leave it to be sent as well.  Which system, which
limits, which path: the context's :class:`~workers.delivery.target.BatchTarget`.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from typing import Any

import orjson

from connector import metrics, regulations
from connector.contract import DeliveryItem
from workers.delivery import attempts, endings, pauses, refusals, suppression
from workers.delivery.classify import Verdict, classify
from workers.delivery.context import Context
from workers.delivery.deadletters import REJECTED, RETRY_WINDOW_EXCEEDED, TOO_LARGE
from workers.delivery.endings import Failure, dead_letter_for, report_dead
from workers.delivery.ledger import new_token
from workers.delivery.outbox import Outbox
from workers.delivery.pauses import PAUSED_REASON
from workers.delivery.retries import next_delay
from workers.delivery.target import Answer, BatchTarget
from workers.delivery.transport import HTTPResult

__all__ = ["FlushResult", "flush"]

log = logging.getLogger("connector.pause")

STATE_HISTORY = 20

# ---------------------------------------------------------------------------------------------
# Flushing


@dataclass
class FlushResult:
    sent: int = 0
    dead: int = 0
    state: str = "empty"  # empty | busy | waiting | paused | deadline | retry | lost_lock


def flush(ctx: Context) -> FlushResult:
    outbox = Outbox(ctx.client, ctx.keys, ctx.connection_id)
    token = new_token()
    if not outbox.lock(token):
        return FlushResult(state="busy")
    result = FlushResult()
    try:
        _flush_locked(ctx, _batch_target(ctx), outbox, token, result)
    finally:
        outbox.unlock(token)
    return result


def _batch_target(ctx: Context) -> BatchTarget:
    target = ctx.target
    if not hasattr(target, "pack"):
        raise TypeError(f"{target.name} is not fed from an outbox")
    return target  # type: ignore[return-value]


def _flush_locked(ctx: Context, target: BatchTarget, outbox: Outbox, token: str, result: FlushResult) -> None:
    budgets = target.budgets_for(None)
    probing: pauses.Pause | None = None  # the pause lifted for this flush's probing batch
    while True:
        if ctx.out_of_time():
            result.state = "deadline"
            return
        state = outbox.state()
        now = time.time()
        if float(state.get("next_at") or 0) > now:
            result.state = "waiting"
            return
        raws = outbox.peek(target.max_batch)
        if not raws:
            result.state = "empty"
            return
        if _drop_suppressed(ctx, outbox, raws):
            continue  # the list changed under the prefix: read it again
        batch = target.pack(raws)
        if batch.oversized_head is not None:
            dead = [(batch.oversized_head, Failure(TOO_LARGE, target.oversize_error, history=[]))]
            if not _dead_then_trim(ctx, outbox, token, dead):
                result.state = "lost_lock"
                return
            result.dead += 1
            continue
        grant = ctx.budgets.acquire(budgets, has_slot=True)
        if not grant.granted and grant.reason == PAUSED_REASON and probing is None:
            # Paused, and the outbox's probe time has come (it was not due before): this batch
            # is the probe.  The pause is taken off for it and set again if it is refused.
            lifted = pauses.lift_for_probe(ctx.client, ctx.keys, ctx.connection_id, target.name)
            probing = lifted or pauses.Pause(pauses.AUTH, 0.0)  # 0: lifted by someone else
            continue
        if not grant.granted:
            if grant.reason == PAUSED_REASON:  # paused again meanwhile: until the next probe
                outbox.set_state(next_at=time.time() + ctx.tuning.auth_probe)
                result.state = "paused"
                return
            attempts.throttled(ctx)
            outbox.set_state(next_at=time.time() + grant.wait)
            result.state = "waiting"
            return
        metrics.BATCH_SIZE.observe(len(batch.items))
        answer = attempts.send(ctx, "POST", target.batch_path, batch.body, {})
        ids = [i for item in batch.items for i in attempts.trace_ids(item)]
        attempts.record_attempt(ctx, ids, "POST", target.batch_path, answer)
        verdict = classify(answer)
        observation = attempts.observe(ctx, budgets, answer, grant)
        if observation.auth_refused and refusals.judge(ctx, 1) != refusals.CALL:
            # The write key refused: Segment delivery pauses (nothing dead-lettered, no retry
            # spent); the outbox is not due before the next probe, so no flush task is published
            # meanwhile.  Voucherify delivery goes on (pauses are per target system).
            attempts.auth_refused(ctx, answer, since=probing.since if probing and probing.since else None)
            until = time.time() + ctx.tuning.auth_probe
            outbox.set_state(next_at=until)
            ctx.trace.wait(ids, connection=ctx.connection_id, reason=PAUSED_REASON, until=until)
            result.state = "paused"
            return
        if probing is not None and verdict is Verdict.SUCCESS:
            log.warning(
                "credentials accepted again: Segment delivery resumed",
                extra={"connection": ctx.connection_id, "paused_since": probing.since},
            )
            probing = None
        if verdict is Verdict.SUCCESS:
            if not outbox.trim(token, len(batch.items)):
                result.state = "lost_lock"  # a newer flusher owns the list; Segment dedupes the resend
                return
            outbox.clear_retry_state()
            assert isinstance(answer, HTTPResult)
            attempts.delivered(ctx, batch.items, answer, attempt=1)
            result.sent += len(batch.items)
            outbox.refresh(token)
            continue
        history = _record_failure(ctx, outbox, state, answer, observation.wait, ids)
        if verdict is Verdict.PERMANENT:
            failure = Failure.of(REJECTED, answer, history)
            dead = [(item, failure) for item in batch.items]
            if not _dead_then_trim(ctx, outbox, token, dead):
                result.state = "lost_lock"
                return
            result.dead += len(batch.items)
            outbox.clear_retry_state()
            continue
        result.dead += _expire_head(ctx, target, outbox, token, state, answer, history)
        result.state = "retry"
        return


def _drop_suppressed(ctx: Context, outbox: Outbox, raws: list[bytes]) -> int:
    """Take the items of suppressed subjects out of the outbox before they are packed (SPEC 14:
    a webhook about a suppressed customer is never sent to Segment).  One ``SMISMEMBER`` per
    batch read; skipped ``suppressed`` as the engine skips a Voucherify item."""
    items = [orjson.loads(raw) for raw in raws]
    subjects = [s for item in items for s in suppression.subjects_of_item(item)]
    gone = regulations.suppressed_among(ctx.client, ctx.keys, ctx.connection_id, subjects)
    if not gone:
        return 0
    dropped = [
        (raw, item)
        for raw, item in zip(raws, items, strict=True)
        if {str(s) for s in suppression.subjects_of_item(item)} & gone
    ]
    outbox.remove([raw for raw, _ in dropped])
    for _, item in dropped:
        message_id = (item.get("request") or {}).get("message_id")
        endings.finish_skipped(ctx, None, item, regulations.SUPPRESSED, message_id=message_id)
    return len(dropped)


def _record_failure(
    ctx: Context,
    outbox: Outbox,
    state: dict[str, str],
    answer: Answer,
    server_wait: float | None,
    ids: list[str],
) -> list[dict[str, Any]]:
    now = time.time()
    history: list[dict[str, Any]] = orjson.loads(state["history"]) if state.get("history") else []
    history.append(attempts.history_entry(answer, now))
    history = history[-STATE_HISTORY:]
    previous = float(state["delay"]) if state.get("delay") else None
    delay = next_delay(
        previous, base=ctx.tuning.retry_base, cap=ctx.tuning.retry_cap, server_wait=server_wait
    )
    outbox.set_state(
        attempts=int(state.get("attempts") or 0) + 1,
        delay=delay,
        next_at=now + delay,
        first_failure_at=state.get("first_failure_at") or now,
        history=orjson.dumps(history).decode(),
    )
    attempts.retrying(
        ctx, answer, reason=f"batch retry in {delay:.1f}s", attempt=len(history), ids=ids, until=now + delay
    )
    return history


def _expire_head(
    ctx: Context,
    target: BatchTarget,
    outbox: Outbox,
    token: str,
    state: dict[str, str],
    answer: Answer,
    history: list[dict[str, Any]],
) -> int:
    """Dead-letter head items whose retry window (from their first attempt) is spent."""
    now = time.time()
    first_failure = float(state.get("first_failure_at") or now)
    expired: list[DeliveryItem] = []
    for raw in outbox.peek(target.max_batch):
        item = orjson.loads(raw)
        first_attempt = max(float(item.get("enqueued_at") or now), first_failure)
        if first_attempt + ctx.window > now:
            break  # FIFO: everything behind is younger
        expired.append(item)
    if not expired:
        return 0
    failure = Failure.of(RETRY_WINDOW_EXCEEDED, answer, history)
    dead = [(item, failure) for item in expired]
    return len(expired) if _dead_then_trim(ctx, outbox, token, dead) else 0


def _dead_then_trim(
    ctx: Context, outbox: Outbox, token: str, dead: list[tuple[DeliveryItem, Failure]]
) -> bool:
    """Dead-letter ``dead`` (the head of the outbox, in order) and trim them off the list in one
    atomic step; False when the lock is no longer ours (then nothing happened)."""
    records = []
    for item, failure in dead:
        if failure.history:
            item["attempts"] = len(failure.history)
            item["first_attempt_at"] = failure.history[0].get("t")
        records.append(dead_letter_for(ctx, item, failure))
    if not ctx.dead_letters.add_then_trim(records, outbox.list_key, outbox.lock_key, token, len(dead)):
        return False
    for item, failure in dead:
        report_dead(ctx, item, failure)
        # Not delivered: let a redelivery or a re-mapping replay in again.
        key = (item.get("request") or {}).get("idempotency_key")
        if key:
            outbox.forget_ledger(key)
    return True
