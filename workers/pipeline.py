"""The worker pipeline: what each Celery task does (``workers.tasks`` only resolves arguments).

::

    process_segment_events ── map each event (skip / dead-letter / OutboundRequests)
                                   │
    process_deliveries ────────────┤  (work back from the delayed store or a DLQ replay)
                                   ▼
                  group by customer: per-customer order kept, customers concurrent
                  (greenlets under -P gevent, threads otherwise), each chain through
                  engine.deliver_one until done or PARKED; a parked item takes the rest of its
                  chain with it, so a later event never overtakes an earlier one of the same
                  customer.  Parked chains go to the delayed store (one MULTI) -- never a sleep.

    process_voucherify_webhook ── parse + map ── dedupe on messageId + append to the
                                  connection's Segment outbox ── flush (if nobody else is)
    flush_segment_outbox ──────── flush (scheduler sweep, or a task published for it)

Failure policy: an exception about one event (a bug in a mapping) dead-letters that event only
(``internal_error``).  A Redis error is about the whole task: the task is requeued (Celery
``Reject(requeue=True)``; redelivered items are absorbed by the ledger), never acknowledged as if
done -- the worker runs with ``task_acks_on_failure_or_timeout``, so a plain exception would
lose the batch.  A task runs at most ``TASK_TIME_BUDGET_SECONDS``: whatever has not started by
then is parked as ``deferred``, due at once, and continues in another task.  A stopping worker
(SIGTERM, :mod:`workers.delivery.shutdown`) gives back the messages it has not started and parks,
due at once, whatever a running task has not put on the wire yet.
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import Iterator
from typing import Any
from urllib.parse import quote

import orjson
import redis
from celery.exceptions import Reject

from connector import backlog, regulations
from connector.config import Connection
from connector.contract import (
    DESTINATION,
    SOURCE,
    DeliveryItem,
    backlog_of,
    backlog_shares,
    expand_scalars,
    merge_objects,
    shared_digest,
    shared_objects,
)
from connector.errors import MappingError, SkipEvent
from connector.regulations import subject_digest
from workers import mapped, targets
from workers.delivery import forget, holds, outcomes, pending, runner, shutdown
from workers.delivery.attempts import Step, new_item
from workers.delivery.context import Context
from workers.delivery.deadletters import INTERNAL_ERROR, MAPPING_ERROR
from workers.delivery.endings import finish_dead, finish_skipped
from workers.delivery.flusher import FlushResult, flush
from workers.delivery.outbox import Outbox
from workers.outbound import OutboundRequest
from workers.runtime import Runtime, context_for

log = logging.getLogger("connector.pipeline")

REQUEUE_PAUSE_SECONDS = 1.0
# How long a batch's shared objects outlive the retry window for the items that reference them
# (held, parked, paused work).  Should one outlive even that, its dead letter keeps the request
# (replayable as it is) and only a --remap replay would miss the batch context.
SHARED_KEEP_SECONDS = 7 * 24 * 3600


# ---------------------------------------------------------------------------------------------
# Tasks' bodies


def process_segment_events(
    rt: Runtime,
    connection: Connection | None,
    connection_id: str,
    events: list[dict[str, Any]],
    shared: dict[str, Any] | None = None,
    stored_bytes: int = 0,
) -> None:
    """``shared`` and ``stored_bytes``: see :mod:`connector.contract` (absent in
    messages of older web processes and in dead-letter replays)."""
    if connection is None:
        _drop(rt, connection_id, "segment_events", len(events), len(events), stored_bytes)
        return
    shares = backlog_shares(stored_bytes, len(events))
    with _task(rt, connection, connection_id, DESTINATION, events=len(events)) as ctx:
        items: list[DeliveryItem] = []
        door = str((shared or {}).get("door") or "segment")
        # The batch's objects (a context of tens of KB) are merged for the mapping only: what is
        # stored past it -- items held, parked, sent as tasks, dead letters -- keeps the event's
        # own fields and a reference to ONE copy of them (SPEC 16, memory is a budget).
        objects = shared_objects(shared)
        blob = orjson.dumps(objects) if objects else b""
        ref = shared_digest(blob) if objects else None
        if ref is not None:
            ctx.remember_shared(ref, blob)
        for event, share in zip(events, shares or [0] * len(events), strict=True):
            own = expand_scalars(event, shared)
            full = merge_objects(dict(own), objects) if isinstance(own, dict) else own
            items.extend(mapped.map_segment_event(ctx, full, share, door, own=own, ref=ref))
        if ref is not None and any(i.get("shared") == ref for i in items):
            # Items in flight find the objects here when one of them is dead-lettered later; kept
            # past any retry window (a dead letter then copies them into its own store).
            ctx.client.set(
                ctx.keys.shared(connection_id, ref),
                blob,
                ex=connection.retry_window_seconds + SHARED_KEEP_SECONDS,
            )
        # Upserts held across tasks; a custom event's customer's held upserts run first.
        hold = holds.intercept(ctx, items, fresh=True)
        runner.run(ctx, ctx.target.coalesce(hold.run))
        runner.park(ctx, hold.parked)
        hold.finish(ctx)


def process_deliveries(
    rt: Runtime,
    connection: Connection | None,
    connection_id: str,
    direction: str,
    items: list[DeliveryItem],
) -> None:
    held = [backlog_of(i) for i in items if isinstance(i, dict)]
    units, stored = sum(u for u, _ in held), sum(b for _, b in held)
    if direction not in targets.TARGETS:
        log.error("unknown delivery direction %r: dropping %d items", direction, len(items))
        _drop(rt, connection_id, "deliveries", len(items), units, stored)
        return
    if connection is None or not targets.configured(connection, direction):
        _drop(rt, connection_id, "deliveries", len(items), units, stored)
        return
    with _task(rt, connection, connection_id, direction, events=len(items)) as ctx:
        if hasattr(ctx.target, "pack"):  # a batch target: its work waits in the outbox
            now = time.time()
            for item in items:
                item.setdefault("enqueued_at", now)
            Outbox(ctx.client, ctx.keys, connection_id).append_many(items, ctx.queue)
            flush(ctx)
            return
        # Queued calls (a bulk's async action) read back; their resent customers run now.
        resent: list[DeliveryItem] = []
        waiting: list[tuple[Step, list[DeliveryItem]]] = []
        for item in [i for i in items if pending.is_pending(i)]:
            again, step = pending.settle(ctx, item)
            resent.extend(again)
            if step is not None:
                waiting.append((step, [item]))
        # A bulk refused for its size comes back here: cut to what the system takes now.
        back = ctx.target.fit([i for i in items if not pending.is_pending(i)])
        hold = holds.intercept(ctx, back, fresh=False)
        runner.run(ctx, hold.run + resent)
        runner.park(ctx, hold.parked + waiting)
        hold.finish(ctx)


def process_voucherify_webhook(
    rt: Runtime,
    connection: Connection | None,
    connection_id: str,
    payload: dict[str, Any],
    received_at: float,
    stored_bytes: int = 0,
) -> None:
    if connection is None:
        _drop(rt, connection_id, "voucherify_webhook", 1, 1, stored_bytes)
        return
    if connection.segment is None:
        outcomes.skipped(connection_id, SOURCE, "segment_not_configured")
        backlog.release(rt.redis, connection_id, 1, stored_bytes, keys=rt.keys)
        return
    with _task(rt, connection, connection_id, SOURCE, events=1) as ctx:
        bare = {"payload": payload, "received_at": received_at, "backlog": 1, "backlog_bytes": stored_bytes}
        event_id, event_type = mapped.webhook_ident(payload)
        ctx.trace.received(
            event_id, connection=connection_id, direction=SOURCE, door="voucherify_webhook", at=received_at
        )
        try:
            request = mapped.map_webhook_payload(payload, connection)
        except SkipEvent as exc:
            ctx.trace.mapping(event_id, type=event_type, skip=exc.reason)
            finish_skipped(ctx, None, bare, exc.reason, message_id=event_id)
            return
        except MappingError as exc:
            finish_dead(ctx, bare, MAPPING_ERROR, exc.message)
            return
        except redis.RedisError:
            raise
        except Exception as exc:
            log.exception("mapping a Voucherify webhook failed", extra={"connection": connection_id})
            finish_dead(ctx, bare, INTERNAL_ERROR, f"{type(exc).__name__}: {exc}")
            return
        ctx.trace.mapping(
            event_id,
            type=event_type,
            requests=[f"{request.method} {request.path} {mapped.segment_name(request)}".rstrip()],
            subject=mapped.subject(request.customer),
        )
        item = new_item(request, payload, received_at, 1, stored_bytes)
        item["enqueued_at"] = time.time()
        if event_id:
            item["trace_id"] = event_id
        outbox = Outbox(ctx.client, ctx.keys, connection_id)
        keep = ctx.target.dedupe_keep(ctx.window, ctx.ledger_keep)  # type: ignore[attr-defined]
        if not outbox.append(item, ctx.queue, dedupe_key=request.idempotency_key, keep=keep):
            finish_skipped(ctx, request, item, "duplicate")
            return
        flush(ctx)


def flush_segment_outbox(
    rt: Runtime, connection: Connection | None, connection_id: str
) -> FlushResult | None:
    if connection is None or connection.segment is None:
        _drop_outbox(rt, connection_id)
        return None
    with _task(rt, connection, connection_id, SOURCE) as ctx:
        return flush(ctx)
    return None  # pragma: no cover - the context manager re-raises


# ---------------------------------------------------------------------------------------------
# Regulations (SPEC 14): a subject's deletion on one connection


def process_regulation(
    rt: Runtime, connection: Connection | None, connection_id: str, regulation_id: str
) -> None:
    """Forget what the connection holds about each subject, then send each one's permanent
    deletion as a delivery item: the same engine as every Voucherify call (budgets, retries, a
    dead letter if refused), whose end counts the regulation's part down."""
    if connection is None:
        log.warning("regulation for an unconfigured connection", extra={"connection": connection_id})
        return
    with _task(rt, connection, connection_id, DESTINATION) as ctx:
        found = regulations.read(ctx.client, ctx.keys, regulation_id)
        if found is None:
            return
        subjects = [str(s) for s in found["subjectIds"]]
        forgotten = forget.forget(ctx, subjects)
        regulations.set_detail(
            ctx.client,
            ctx.keys,
            regulation_id,
            connection_id,
            f"deleting {len(subjects)}: {forgotten.text()}",
        )
        items = []
        for subject in subjects:
            # The customer's source_id is the user id: the identity mapping's default (docs/regulations.md).
            request = OutboundRequest(
                method="POST",
                path=f"/v1/customers/{quote(subject, safe='')}/permanent-deletion",
                body=None,
                idempotency_key=f"regulation:{regulation_id}:{subject_digest(subject)}",
                action=regulations.DELETE_ACTION,
                message_id=f"{regulation_id}:{subject_digest(subject)}",
            )
            item = new_item(request, None, time.time(), 0)
            item["regulation"] = {"id": regulation_id, "subject": subject}
            items.append(item)
        runner.run(ctx, items)


# ---------------------------------------------------------------------------------------------
# Helpers


@contextlib.contextmanager
def _task(
    rt: Runtime, connection: Connection, connection_id: str, direction: str, events: int = 0
) -> Iterator[Context]:
    """A task's context; backlog units of finished events are released when it ends normally.

    Not on a Redis error: the task is requeued and its finished events, found again as
    duplicates, release their units then.  ``events``: what the task works on, within the
    process's bound (:mod:`workers.inwork`): it waits for room first, before its time budget
    starts, its message still unacknowledged.
    """
    with rt.events().held(events, rt.gate_wait()):
        if shutdown.stopping():
            # A message the stopping worker had taken but not started goes back to its queue as
            # it came (another worker takes it): nothing mapped, nothing traced twice.
            raise Reject("worker stopping", requeue=True)
        with _requeue_on_redis_error(connection_id):
            ctx = context_for(rt, connection, direction)
            try:
                yield ctx
            finally:
                # Records written are counted (connector.kept) even when the task fails after.
                with contextlib.suppress(redis.RedisError):
                    ctx.ledger.flush_charges()
            ctx.flush_backlog()


@contextlib.contextmanager
def _requeue_on_redis_error(connection_id: str) -> Iterator[None]:
    try:
        yield
    except redis.RedisError as exc:
        log.warning(
            "redis error during a task: requeueing it",
            extra={"connection": connection_id, "error": str(exc)[:200]},
        )
        # Do not spin on a Redis that is restarting: the requeued task comes straight back.
        time.sleep(REQUEUE_PAUSE_SECONDS)
        raise Reject(f"redis error: {type(exc).__name__}", requeue=True) from exc


def _drop(rt: Runtime, connection_id: str, kind: str, count: int, units: int, stored_bytes: int = 0) -> None:
    outcomes.dropped(connection_id, kind, count)
    with contextlib.suppress(redis.RedisError):
        backlog.release(rt.redis, connection_id, units, stored_bytes, keys=rt.keys)


def _drop_outbox(rt: Runtime, connection_id: str) -> None:
    keys = rt.keys
    with contextlib.suppress(redis.RedisError):
        outbox_key = keys.outbox(connection_id)
        count = int(rt.redis.llen(outbox_key))
        pipe = rt.redis.pipeline(transaction=True)
        pipe.delete(outbox_key, keys.outbox_state(connection_id))
        pipe.srem(keys.outboxes, connection_id)
        pipe.execute()
        if count:
            outcomes.dropped(connection_id, "segment_outbox", count)
