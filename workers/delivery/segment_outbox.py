"""Voucherify -> Segment: a per-connection outbox flushed in ``POST /v1/batch`` requests.

::

    webhook task ── append (Lua: dedupe on the messageId in the ledger, RPUSH, index) ── flush
                                                                                          │
    scheduler sweep ── non-empty, unlocked, due outboxes ── connector.segment_flush ──────┤
                                                                                          ▼
    flush: take the connection's lock (one flusher at a time) and loop until empty or out of time:
        LRANGE a prefix that fits Segment's limits (2,500 events, 500 KB, 32 KB each)
        Segment budget (requests_per_second) denied ──> next_at = slot; stop
        send ── 2xx ──────> LTRIM the prefix (only if the lock is still ours), report delivered
             ── RETRY ────> keep everything; next_at = backoff (>= Retry-After); items older than
                            the retry window are dead-lettered from the head; stop
             ── PERMANENT ─> dead-letter the prefix's items and LTRIM them, one atomic step

Items leave the list only after a 2xx or a dead letter, so a crash re-sends at worst the last
batch; Segment deduplicates on ``messageId`` (derived from the Voucherify event id).  The lock
is checked by the trimming script itself, so a flusher whose lock expired during a slow request
never trims what a newer flusher already handled.  A dead letter and its trim are ONE script
(:meth:`DeadLetters.add_then_trim`): trimmed first, a Redis error in between lost the event;
dead-lettered first, a lost lock would leave it to be sent as well.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import orjson

from connector import metrics
from workers.delivery import outcomes
from workers.delivery.deadletters import REJECTED, RETRY_WINDOW_EXCEEDED, TOO_LARGE
from workers.delivery.engine import Context, backlog_of, dead_letter_for, report_dead
from workers.delivery.http import HTTPResult, TransportFailure, Verdict, classify, server_wait
from workers.delivery.ledger import new_token
from workers.delivery.outbox import Outbox, sweep, unmark_swept
from workers.delivery.retries import next_delay

__all__ = ["Batch", "FlushResult", "Outbox", "build_batch", "flush", "sweep", "unmark_swept"]

BATCH_PATH = "/v1/batch"
_ENVELOPE_OVERHEAD = len(b'{"batch":[],"sentAt":"2000-01-01T00:00:00.000000+00:00"}')
STATE_HISTORY = 20

# ---------------------------------------------------------------------------------------------
# Flushing


@dataclass
class Batch:
    items: list[dict[str, Any]]
    body: bytes
    oversized_head: dict[str, Any] | None = None


def build_batch(raws: list[bytes], *, max_events: int, max_bytes: int, max_event_bytes: int) -> Batch:
    """The longest prefix of ``raws`` that fits one /v1/batch request.

    An oversized event at the head is returned alone (to be dead-lettered); one further down ends
    the batch (it becomes the head of the next one).
    """
    items: list[dict[str, Any]] = []
    encoded: list[bytes] = []
    size = _ENVELOPE_OVERHEAD
    for raw in raws[:max_events]:
        item = orjson.loads(raw)
        message = orjson.dumps(item["request"]["body"])
        if len(message) > max_event_bytes:
            if not items:
                return Batch([item], b"", oversized_head=item)
            break
        if size + len(message) + 1 > max_bytes:
            break
        items.append(item)
        encoded.append(message)
        size += len(message) + 1
    sent_at = datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")
    body = b'{"batch":[' + b",".join(encoded) + b'],"sentAt":"' + sent_at.encode() + b'"}'
    return Batch(items, body)


@dataclass
class FlushResult:
    sent: int = 0
    dead: int = 0
    state: str = "empty"  # empty | busy | waiting | deadline | retry | lost_lock


def flush(ctx: Context) -> FlushResult:
    outbox = Outbox(ctx.client, ctx.keys, ctx.connection_id)
    token = new_token()
    if not outbox.lock(token):
        return FlushResult(state="busy")
    result = FlushResult()
    try:
        _flush_locked(ctx, outbox, token, result)
    finally:
        outbox.unlock(token)
    return result


def _flush_locked(ctx: Context, outbox: Outbox, token: str, result: FlushResult) -> None:
    tuning = ctx.tuning
    while True:
        if ctx.out_of_time():
            result.state = "deadline"
            return
        state = outbox.state()
        now = time.time()
        if float(state.get("next_at") or 0) > now:
            result.state = "waiting"
            return
        raws = outbox.peek(tuning.segment_max_events)
        if not raws:
            result.state = "empty"
            return
        batch = build_batch(
            raws,
            max_events=tuning.segment_max_events,
            max_bytes=tuning.segment_max_bytes,
            max_event_bytes=tuning.segment_max_event_bytes,
        )
        if batch.oversized_head is not None:
            dead = [_Dead(batch.oversized_head, TOO_LARGE, "track call over the 32 KB Segment limit")]
            if not _dead_then_trim(ctx, outbox, token, dead):
                result.state = "lost_lock"
                return
            result.dead += 1
            continue
        grant = ctx.limiter.acquire(ctx.budget, has_slot=True)
        if not grant.granted:
            metrics.RATE_LIMIT_WAITS.labels(ctx.connection_id, ctx.target).inc()
            outbox.set_state(next_at=time.time() + grant.wait)
            result.state = "waiting"
            return
        answer = _send(ctx, batch)
        verdict = classify(answer)
        if verdict is Verdict.SUCCESS:
            if not outbox.trim(token, len(batch.items)):
                result.state = "lost_lock"  # a newer flusher owns the list; Segment dedupes the resend
                return
            outbox.clear_retry_state()
            assert isinstance(answer, HTTPResult)
            _delivered(ctx, batch.items, answer)
            result.sent += len(batch.items)
            outbox.refresh(token)
            continue
        history = _record_failure(ctx, outbox, state, answer)
        if verdict is Verdict.PERMANENT:
            status = answer.status if isinstance(answer, HTTPResult) else None
            dead = [
                _Dead(item, REJECTED, _error(answer), status, _excerpt(answer), history)
                for item in batch.items
            ]
            if not _dead_then_trim(ctx, outbox, token, dead):
                result.state = "lost_lock"
                return
            result.dead += len(batch.items)
            outbox.clear_retry_state()
            continue
        result.dead += _expire_head(ctx, outbox, token, state, answer, history)
        result.state = "retry"
        return


def _send(ctx: Context, batch: Batch) -> HTTPResult | TransportFailure:
    headers = {"Content-Type": "application/json", "User-Agent": _user_agent(), **ctx.auth}
    metrics.SEGMENT_BATCH_SIZE.observe(len(batch.items))
    try:
        answer: HTTPResult | TransportFailure = ctx.transport.send(
            "POST",
            ctx.base_url + BATCH_PATH,
            headers,
            batch.body,
            (ctx.tuning.connect_timeout, ctx.tuning.read_timeout),
        )
    except TransportFailure as exc:
        answer = exc
    metrics.REQUEST_LATENCY.labels(ctx.target).observe(answer.latency)
    return answer


def _user_agent() -> str:
    from connector import USER_AGENT

    return USER_AGENT


def _record_failure(
    ctx: Context, outbox: Outbox, state: dict[str, str], answer: HTTPResult | TransportFailure
) -> list[dict[str, Any]]:
    now = time.time()
    history: list[dict[str, Any]] = orjson.loads(state["history"]) if state.get("history") else []
    history.append(
        {
            "t": round(now, 3),
            "status": answer.status if isinstance(answer, HTTPResult) else None,
            "error": answer.message if isinstance(answer, TransportFailure) else None,
            "latency_ms": int(answer.latency * 1000),
        }
    )
    history = history[-STATE_HISTORY:]
    previous = float(state["delay"]) if state.get("delay") else None
    delay = next_delay(
        previous, base=ctx.tuning.retry_base, cap=ctx.tuning.retry_cap, server_wait=server_wait(answer)
    )
    outbox.set_state(
        attempts=int(state.get("attempts") or 0) + 1,
        delay=delay,
        next_at=now + delay,
        first_failure_at=state.get("first_failure_at") or now,
        history=orjson.dumps(history).decode(),
    )
    ctx.limiter.observe(
        answer.status if isinstance(answer, HTTPResult) else None,
        None,
        None,
        tuning_low=ctx.tuning.low_remaining,
        slowdown_seconds=ctx.tuning.slowdown_seconds,
        server_wait=server_wait(answer),
    )
    status = answer.status if isinstance(answer, HTTPResult) else None
    metrics.DELIVERIES.labels(
        ctx.connection_id, ctx.direction, ctx.region, "retry", outcomes.status_label(status)
    ).inc()
    metrics.RETRIES_SCHEDULED.labels(ctx.connection_id, ctx.direction).inc()
    outcomes.report(
        connection=ctx.connection_id,
        direction=ctx.direction,
        outcome="retry",
        reason=f"batch retry in {delay:.1f}s",
        status=status,
        attempt=len(history),
        latency_ms=int(answer.latency * 1000),
        error=_error(answer),
    )
    return history


def _expire_head(
    ctx: Context,
    outbox: Outbox,
    token: str,
    state: dict[str, str],
    answer: HTTPResult | TransportFailure,
    history: list[dict[str, Any]],
) -> int:
    """Dead-letter head items whose retry window (from their first attempt) is spent."""
    now = time.time()
    first_failure = float(state.get("first_failure_at") or now)
    expired: list[dict[str, Any]] = []
    for raw in outbox.peek(ctx.tuning.segment_max_events):
        item = orjson.loads(raw)
        first_attempt = max(float(item.get("enqueued_at") or now), first_failure)
        if first_attempt + ctx.window > now:
            break  # FIFO: everything behind is younger
        expired.append(item)
    if not expired:
        return 0
    status = answer.status if isinstance(answer, HTTPResult) else None
    dead = [
        _Dead(item, RETRY_WINDOW_EXCEEDED, _error(answer), status, _excerpt(answer), history)
        for item in expired
    ]
    return len(expired) if _dead_then_trim(ctx, outbox, token, dead) else 0


def _delivered(ctx: Context, items: list[dict[str, Any]], answer: HTTPResult) -> None:
    now = time.time()
    units = stored = 0
    for item in items:
        request = item["request"]
        metrics.DELIVERIES.labels(
            ctx.connection_id, ctx.direction, ctx.region, "delivered", str(answer.status)
        ).inc()
        if item.get("received_at"):
            metrics.DELIVERY_LATENCY.labels(ctx.direction).observe(max(0.0, now - float(item["received_at"])))
        outcomes.report(
            connection=ctx.connection_id,
            direction=ctx.direction,
            outcome="delivered",
            message_id=request.get("message_id"),
            action=request.get("action"),
            status=answer.status,
            attempt=1,
            latency_ms=int(answer.latency * 1000),
        )
        item_units, item_bytes = backlog_of(item)
        units += item_units
        stored += item_bytes
    ctx.release_backlog(units, stored)


@dataclass
class _Dead:
    item: dict[str, Any]
    reason: str
    error: str
    status: int | None = None
    excerpt: str = ""
    history: list[dict[str, Any]] | None = None


def _dead_then_trim(ctx: Context, outbox: Outbox, token: str, dead: list[_Dead]) -> bool:
    """Dead-letter ``dead`` (the head of the outbox, in order) and trim them off the list in one
    atomic step; False when the lock is no longer ours (then nothing happened)."""
    records = []
    for entry in dead:
        if entry.history:
            entry.item["attempts"] = len(entry.history)
            entry.item["first_attempt_at"] = entry.history[0].get("t")
        records.append(
            dead_letter_for(
                ctx,
                entry.item,
                entry.reason,
                entry.error,
                status=entry.status,
                excerpt=entry.excerpt,
                history=entry.history or [],
            )
        )
    if not ctx.dead_letters.add_then_trim(records, outbox.list_key, outbox.lock_key, token, len(dead)):
        return False
    for entry in dead:
        report_dead(ctx, entry.item, entry.reason, entry.error, status=entry.status)
        # Not delivered: let a Voucherify redelivery or a re-mapping replay in again.
        key = (entry.item.get("request") or {}).get("idempotency_key")
        if key:
            outbox.forget_ledger(key)
    return True


def _error(answer: HTTPResult | TransportFailure) -> str:
    return answer.message if isinstance(answer, TransportFailure) else f"HTTP {answer.status}"


def _excerpt(answer: HTTPResult | TransportFailure) -> str:
    return answer.body if isinstance(answer, HTTPResult) else ""
