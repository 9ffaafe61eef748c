"""Forgetting a deleted subject (SPEC 14): what the connector holds about it on one connection.

* its held upserts (the hold window), the work parked for it in the delayed store (a retry,
  a quota wait) and Voucherify's webhooks about it waiting in the Segment outbox: dropped,
  never sent, their backlog released;
* its dead letters (except the regulation's own refused deletion: that is the answer the
  operator must see);
* the traces of its events: found by the subject's digest that the mapping writes into each
  trace (:func:`connector.regulations.subject_digest`), and by the ids of what was dropped here;
* its per-customer records: the stale guard's newest time, the unchanged digest, the hold marker.

Run when a regulation's deletion starts and again when its deletion call has finished (a parked
item taken by a worker in between may have written to its trace since).  Regulations are rare:
the scans (``SCAN`` over the connection's traces, ``HSCAN`` over the delayed store) are
acceptable there and cost nothing on the event path.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

import orjson
import redis

from connector import regulations, tracestore
from connector.contract import backlog_of
from workers.delivery.context import Context
from workers.delivery.holdscripts import DROP, held_items
from workers.delivery.ledger import new_token
from workers.delivery.outbox import Outbox

log = logging.getLogger("connector.regulations")

SCAN_COUNT = 500
# The outbox is bounded by the connection's backlog; a regulation reads this much of it at most.
OUTBOX_SCAN_LIMIT = 100_000


@dataclass
class Forgotten:
    held: int = 0
    parked: int = 0
    queued: int = 0  # in the Segment outbox
    dead_letters: int = 0
    traces: int = 0
    message_ids: set[str] = field(default_factory=set)

    def text(self) -> str:
        return (
            f"forgot {self.held} held, {self.parked} parked, {self.queued} queued for Segment, "
            f"{self.dead_letters} dead letters, "
            f"{self.traces} traces"
        )


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def subjects_of(request: Mapping[str, Any] | None, payload: Any) -> set[str]:
    """Whom a stored item or dead letter concerns: its customer, its parts', its events' users."""
    found: list[Any] = []
    request = request or {}
    if request.get("action") == regulations.DELETE_ACTION:
        return set()
    found.append(request.get("customer"))
    found.extend((p or {}).get("customer") for p in request.get("parts") or ())
    for event in payload if isinstance(payload, list) else [payload]:
        if isinstance(event, Mapping):
            found.append(event.get("userId"))
    return {str(f) for f in found if f is not None and f != "" and not isinstance(f, bool | dict | list)}


def _ids_of(item: Mapping[str, Any]) -> set[str]:
    request = item.get("request") or {}
    ids = [
        item.get("trace_id"),
        request.get("message_id"),
        *((p or {}).get("message_id") for p in request.get("parts") or ()),
    ]
    payload = item.get("payload")
    for event in payload if isinstance(payload, list) else [payload]:
        if isinstance(event, Mapping):
            ids.append(event.get("messageId"))
    return {str(i) for i in ids if i}


def forget(ctx: Context, subjects: Iterable[str]) -> Forgotten:
    wanted = {str(s) for s in subjects}
    done = Forgotten()
    if not wanted:
        return done
    _held(ctx, wanted, done)
    _parked(ctx, wanted, done)
    _outbox(ctx, wanted, done)
    _dead_letters(ctx, wanted, done)
    _traces(ctx, wanted, done)
    keys, cid = ctx.keys, ctx.connection_id
    pipe = ctx.client.pipeline(transaction=False)
    for subject in wanted:
        pipe.delete(keys.stale(cid, subject), keys.unchanged(cid, subject), keys.hold_out(cid, subject))
    pipe.execute()
    log.info(
        "regulation: subject forgotten",
        extra={"connection": cid, "subjects": len(wanted), "forgot": done.text()},
    )
    return done


def _held(ctx: Context, wanted: set[str], done: Forgotten) -> None:
    keys, cid = ctx.keys, ctx.connection_id
    for subject in wanted:
        # The customer's field, then its list, whole again (workers.delivery.holdscripts).
        raws = DROP(
            ctx.client,
            [keys.holds(cid), keys.held(cid), keys.held_bases(cid), keys.held_lists(cid)],
            [subject, keys.hold(cid, subject)],
        )
        for item in [i for raw in raws for i in held_items(raw)]:
            ctx.release_backlog(*backlog_of(item))
            done.message_ids |= _ids_of(item)
            done.held += 1


def _parked(ctx: Context, wanted: set[str], done: Forgotten) -> None:
    """Entries of the delayed store with the subject's items: those items taken out (the entry
    rewritten only if unchanged since read: a scheduler may be claiming it)."""
    client, keys = ctx.client, ctx.keys
    for entry_id, raw in client.hscan_iter(keys.delayed_data, count=SCAN_COUNT):
        try:
            entry = orjson.loads(raw)
        except orjson.JSONDecodeError:
            continue
        if entry.get("connection_id") != ctx.connection_id:
            continue
        items = entry.get("items") or []
        gone = [i for i in items if subjects_of(i.get("request"), i.get("payload")) & wanted]
        if not gone:
            continue
        left = [i for i in items if i not in gone]
        with client.pipeline(transaction=True) as pipe:
            try:
                pipe.watch(keys.delayed_data)
                if pipe.hget(keys.delayed_data, entry_id) != raw:
                    continue  # claimed or rewritten meanwhile: the engine drops it if suppressed
                pipe.multi()
                if left:
                    pipe.hset(keys.delayed_data, entry_id, orjson.dumps({**entry, "items": left}))
                else:
                    pipe.hdel(keys.delayed_data, entry_id)
                    pipe.zrem(keys.delayed, _text(entry_id))
                pipe.execute()
            except redis.WatchError:  # someone else changed it meanwhile: not ours to retry now
                continue
        for item in gone:
            ctx.release_backlog(*backlog_of(item))
            done.message_ids |= _ids_of(item)
            done.parked += 1


def _outbox(ctx: Context, wanted: set[str], done: Forgotten) -> None:
    """The connection's Segment outbox (Voucherify webhooks about the subject waiting to be
    sent): those items taken out under the outbox's lock -- a flusher trims what it sent from the
    head by count, so nothing may leave the list under it.  Lock busy: the flusher drops them if
    the subject is suppressed, and the forget that follows the deletion call tries again."""
    outbox = Outbox(ctx.client, ctx.keys, ctx.connection_id)
    token = new_token()
    if not outbox.lock(token):
        return
    try:
        raws = outbox.peek(OUTBOX_SCAN_LIMIT)
        gone = []
        for raw in raws:
            item = orjson.loads(raw)
            if subjects_of(item.get("request"), item.get("payload")) & wanted:
                gone.append(raw)
                ctx.release_backlog(*backlog_of(item))
                done.message_ids |= _ids_of(item)
        done.queued += outbox.remove(gone) if gone else 0
    finally:
        outbox.unlock(token)


def _dead_letters(ctx: Context, wanted: set[str], done: Forgotten) -> None:
    found = [
        r
        for r in ctx.dead_letters.iter(connection=ctx.connection_id)
        if subjects_of(r.request, r.payload) & wanted
    ]
    for record in found:
        if record.message_id:
            done.message_ids.add(record.message_id)
    done.dead_letters = ctx.dead_letters.purge(found) if found else 0


def _traces(ctx: Context, wanted: set[str], done: Forgotten) -> None:
    """The connection's traces whose mapping names one of the subjects (by digest), and those of
    the ids dropped above."""
    cid, client = ctx.connection_id, ctx.client
    digests = {regulations.subject_digest(s) for s in wanted}
    ids = set(done.message_ids) | tracestore.with_subjects(client, ctx.keys, cid, digests)
    if ids:
        done.traces = tracestore.forget(client, ctx.keys, cid, ids)
