"""The hold window: one customer's upserts held in Redis across tasks and workers, then sent once
(SPEC 10, "Fewer calls for the same effect").

Knows no system: the target says which requests may be held (``holdable``), how a customer's
held requests become fewer calls (``coalesce_held``), and what an upsert's digest is (for the
unchanged skip).  Redis layout (``{p}`` the prefix, ``{c}`` the connection)::

    {p}held:{c}                  hash    customer -> held delivery items (JSON lines), in order
    {p}heldlist:{c}              hash    customer -> 1: its list below exists (this version's)
    {p}heldbase:{c}              hash    what a batch's held items repeat, once (counted)
    {p}hold:{c}:{customer}       list    the customer's further items past 64 KB, or an older
                                         version's (read after the field; holdscripts says why)
    {p}holds:{c}                 zset    customer -> due (epoch ms: first held + window)
    {p}holds                     hash    connection id -> the JSON head of its delayed entries
    {p}holdout:{c}:{customer}    string  the customer's held upserts are on their way (TTL)
    {p}unchanged:{c}:{customer}  string  digest of the last upsert Voucherify accepted (TTL)

::

    task ── holdable, customer has no other request here ──> HOLD (field append, ZADD NX due)
         ── a custom event of a customer ──> TAKE its held items into a leased delayed entry,
            run them in front of the event (one chain: Voucherify sees them first), ack the
            lease once the chain is finished or parked
         ── its held items already on their way (``out`` marker) ──> the event parks (busy)
    scheduler tick ── RELEASE due customers (one Lua: lists -> one delayed entry per connection,
                      due now, items flagged ``held``; ``out`` marker set) ──> connector.deliver
    deliver task ── held items: unchanged skipped, coalesced (merge, bulk), run; markers cleared

Nothing held is ever only in a worker's memory: RELEASE moves items atomically from the hold
into the delayed store (whose lease/ack and the broker's late acks take over), and TAKE moves
them into a delayed entry due after a lease, acknowledged only after the taking task ran them,
so a worker killed in between leaves them to come back by themselves.  Idempotency keys are
untouched: the ledger still claims each part once.
"""

from __future__ import annotations

import hashlib
import time
import uuid
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol

import orjson
import redis
from redis.client import Pipeline

from connector import kept, metrics
from connector.contract import DeliveryItem
from connector.keys import Keys
from workers.delivery import attempts, endings
from workers.delivery.attempts import Step
from workers.delivery.context import Context
from workers.delivery.holdscripts import DEL_IF, HOLD, MARK, MAX_FIELD_BYTES, RELEASE, TAKE, held_items, lines
from workers.delivery.store import DelayedStore
from workers.outbound import OutboundRequest

HELD_REASON = "held"
BULK_WAIT_REASON = "bulk_budget"  # a replay's customers wait for a bulk call, not singles
# Taken items live in a delayed entry due this long after the take: the taking task acks it
# when done; a dead task's items come back then.
TAKE_LEASE_SECONDS = 60.0
# The ``out`` marker: released items are on their way (scheduler -> broker -> worker).  A marker
# outlives any normal trip; a lost one only delays the customer's next release that long.
OUT_MARKER_SECONDS = 60.0
BUSY_PARK_SECONDS = 0.5
# A customer whose earlier upserts are still on their way is looked at again this much later.
RECHECK_MS = 500
MAX_ITEMS_PER_ENTRY = 500
# Customers per HOLD call: its keyed reads and writes go in one command each, whose arguments
# Lua unpacks (a few thousand at most).
MAX_HOLD_CUSTOMERS = 1_000
# Replayed customers (SPEC 15) are released in entries of their own of up to this many
# customers and items: a deliver task coalesces one entry, so this is the largest bulk a
# backfill can form (the byte bound then cuts it).  The items bound is the worker's memory,
# which follows the held upserts it holds (measured on a gevent worker, idle at 70 MB: 5,000
# customers of one version in one entry, 154 MB at the peak; of four versions, 20,000 items in
# one entry, 387 MB; bounded to 8,000 items an entry, 223 MB): a customer with several versions
# in the window makes the bulks that much smaller.
REPLAY_CUSTOMERS_PER_ENTRY = 5_000  # the Voucherify target's REPLAY_MAX_BULK
REPLAY_ITEMS_PER_ENTRY = 8_000
RELEASE_CUSTOMERS_PER_CALL = REPLAY_CUSTOMERS_PER_ENTRY
# Replayed customers' dues are rounded up to a multiple of this: those held within the same
# stretch fall due at once (a replay reads a few hundred to thousands of lines a second: one
# scheduler tick would otherwise release only a tick's worth of them, and bulk only those).
REPLAY_ALIGN_SECONDS = 10.0


def digest(body: Any) -> str:
    """A body's identity: canonical JSON (sorted keys), hashed."""
    raw = orjson.dumps(body, option=orjson.OPT_SORT_KEYS)
    return hashlib.sha256(raw).hexdigest()[:32]


class HoldTarget(Protocol):
    """What the hold asks of a target (the Voucherify target implements it)."""

    def hold_window(self) -> float:
        """Seconds a customer's upserts are held (0: no hold, every request as it comes)."""
        ...

    def holdable(self, request: OutboundRequest) -> bool:
        """An upsert that may wait for and merge with the customer's next ones."""
        ...

    def merged_body(self, requests: list[OutboundRequest]) -> Any | None:
        """The body one customer's requests merge into (None: they cannot be merged)."""
        ...

    def unchanged_days(self) -> int:
        """How long the digest of an accepted upsert is remembered (0: no unchanged skip)."""
        ...

    def bulk_possible(self) -> bool:
        """Whether held customers may go in bulk calls (a plan with a bulk budget)."""
        ...

    def coalesce_held(
        self, items: list[DeliveryItem], bulk: bool
    ) -> tuple[list[DeliveryItem], list[DeliveryItem], float]:
        """Held items (many customers) as fewer calls: merged, in bulk when ``bulk`` and the
        bulk budget allows; and the items that wait (still held) that many seconds for a bulk
        budget rather than going singly (a replay's: SPEC 15)."""
        ...


def hold_target(target: Any) -> HoldTarget | None:
    """The target as a :class:`HoldTarget` when it holds anything now, else None."""
    window = getattr(target, "hold_window", None)
    if window is None or window() <= 0:
        return None
    return target


class Holds:
    """One connection's holds (Redis side)."""

    def __init__(self, client: redis.Redis, keys: Keys, connection_id: str) -> None:
        self.client = client
        self.keys = keys
        self.connection_id = connection_id

    def entry_head(self, direction: str, queue: str) -> str:
        head = orjson.dumps({"connection_id": self.connection_id, "direction": direction, "queue": queue})
        return head.decode()[:-1]  # without the closing brace: the scripts add items, due, reason

    def hold(
        self,
        direction: str,
        queue: str,
        by_customer: Mapping[str, list[DeliveryItem]],
        window: float,
        align: float = 0.0,
    ) -> dict[str, float]:
        """Hold the customers' items; when each customer's window ends (epoch seconds), rounded
        up to a multiple of ``align`` seconds when it is given."""
        if not by_customer:
            return {}
        head = self.entry_head(direction, queue)
        k, cid = self.keys, self.connection_id
        keys = [k.holds(cid), k.holds_index, k.held(cid), k.held_bases(cid), k.held_lists(cid)]
        customers = list(by_customer)
        dues: list[Any] = []
        for start in range(0, len(customers), MAX_HOLD_CUSTOMERS):
            bases: dict[str, list[Any]] = {}
            held: list[Any] = []
            for customer in customers[start : start + MAX_HOLD_CUSTOMERS]:
                items = by_customer[customer]
                held += [customer, self.keys.hold(self.connection_id, customer), len(items)]
                held += lines(items, bases)
            args: list[Any] = [max(1, int(window * 1000)), cid, head, MAX_FIELD_BYTES, len(bases)]
            args.append(max(0, int(align * 1000)))
            for ref, (text, count) in bases.items():
                args += [ref, text, count]
            dues += HOLD(self.client, keys, args + held)
        return {c: float(d) / 1000 for c, d in zip(customers, dues, strict=True)}

    def take(
        self, direction: str, queue: str, customers: Iterable[str], lease: float = TAKE_LEASE_SECONDS
    ) -> tuple[str | None, list[DeliveryItem], set[str]]:
        """The held items of ``customers`` (moved into a leased delayed entry: its id), and the
        customers whose held items are on their way already."""
        customers = list(customers)
        if not customers:
            return None, [], set()
        entry_id = "take-" + uuid.uuid4().hex
        args: list[Any] = [entry_id, self.entry_head(direction, queue), int(lease * 1000)]
        for customer in customers:
            args += [
                customer,
                self.keys.hold(self.connection_id, customer),
                self.keys.hold_out(self.connection_id, customer),
            ]
        flat = TAKE(
            self.client,
            [
                self.keys.holds(self.connection_id),
                self.keys.delayed,
                self.keys.delayed_data,
                self.keys.held(self.connection_id),
                self.keys.held_bases(self.connection_id),
                self.keys.held_lists(self.connection_id),
            ],
            args,
        )
        taken_id = _text(flat[0]) or None
        split = [_text(x) for x in flat[1:]].index("|") + 1
        items = [item for raw in flat[1:split] for item in held_items(raw)]
        busy = {_text(c) for c in flat[split + 1 :]}
        return taken_id, items, busy

    def clear_out(self, customers: Iterable[str], only: str | None = None) -> None:
        """Forget the customers' ``out`` markers (``only``: those of that kind)."""
        names = [self.keys.hold_out(self.connection_id, c) for c in customers]
        if not names:
            return
        if only is None:
            self.client.delete(*names)
        else:
            DEL_IF(self.client, names, [only])

    def mark_sending(self, marks: Mapping[str, str], seconds: float) -> None:
        """Before a call that may only be queued: each customer's marker set to its value
        (``sending:<ms>``), but where a ``queued`` one already waits for an older bulk."""
        if marks:
            names = [self.keys.hold_out(self.connection_id, c) for c in marks]
            MARK(self.client, names, [max(1, int(seconds * 1000)), *marks.values()])

    def clear_marks(self, marks: Mapping[str, str]) -> None:
        """Forget the customers' markers that still hold the value given for each."""
        if marks:
            DEL_IF(
                self.client, [self.keys.hold_out(self.connection_id, c) for c in marks], list(marks.values())
            )

    def mark_out(
        self, customers: Iterable[str], seconds: float, kind: str = "queued", pipe: Pipeline | None = None
    ) -> None:
        """The customers' markers set to ``kind``; by ``pipe`` when given (the caller executes)."""
        customers = list(customers)
        if not customers:
            return
        own = pipe is None
        pipe = self.client.pipeline(transaction=False) if pipe is None else pipe
        for customer in customers:
            pipe.set(self.keys.hold_out(self.connection_id, customer), kind, px=max(1, int(seconds * 1000)))
        if own:
            pipe.execute()

    def size(self) -> int:
        return int(self.client.zcard(self.keys.holds(self.connection_id)))

    # --- unchanged skip ---------------------------------------------------------------------

    def digests(self, customers: list[str]) -> list[str | None]:
        if not customers:
            return []
        raw = self.client.mget([self.keys.unchanged(self.connection_id, c) for c in customers])
        return [_text(v) if v is not None else None for v in raw]

    def remember(self, digests: Mapping[str, str], days: int) -> None:
        if not digests or days <= 0:
            return
        pipe = self.client.pipeline(transaction=False)
        for customer, value in digests.items():
            pipe.set(self.keys.unchanged(self.connection_id, customer), value, ex=int(days * 86400))
        kept.charge_customers(pipe, self.keys, self.connection_id, list(digests), days * 86400)
        pipe.execute()


def release_due(client: redis.Redis, keys: Keys, *, limit: int = RELEASE_CUSTOMERS_PER_CALL) -> int:
    """Move every connection's due holds into the delayed store (due now); the number of
    customers released.  Atomic per connection: safe with several schedulers."""
    released = 0
    for raw in client.hkeys(keys.holds_index):
        cid = _text(raw)
        count = int(
            RELEASE(
                client,
                [
                    keys.holds(cid),
                    keys.delayed,
                    keys.delayed_data,
                    keys.holds_index,
                    keys.held(cid),
                    keys.held_bases(cid),
                    keys.held_lists(cid),
                ],
                [
                    cid,
                    keys.prefix,
                    "held-" + uuid.uuid4().hex,
                    limit,
                    MAX_ITEMS_PER_ENTRY,
                    int(OUT_MARKER_SECONDS * 1000),
                    RECHECK_MS,
                    REPLAY_CUSTOMERS_PER_ENTRY,
                    REPLAY_ITEMS_PER_ENTRY,
                ],
            )
        )
        released += max(0, count)
    return released


def ack_taken(store: DelayedStore, entry_id: str | None) -> None:
    if entry_id:
        store.ack([entry_id])


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value


# ---------------------------------------------------------------------------------------------
# A task's items through the hold


@dataclass
class Intercepted:
    run: list[DeliveryItem]  # to run now (in this order: a customer's taken upserts first)
    parked: list[tuple[Step, list[DeliveryItem]]]  # chains that wait (their upserts on their way)
    taken: str | None = None  # the leased delayed entry of taken items (acked after the run)
    released: set[str] = field(default_factory=set)  # customers whose released upserts run here

    def finish(self, ctx: Context) -> None:
        """After the run (its parked chains written): the lease acked, the markers cleared."""
        ack_taken(DelayedStore(ctx.client, ctx.keys), self.taken)
        Holds(ctx.client, ctx.keys, ctx.connection_id).clear_out(self.released, only="released")


def intercept(ctx: Context, items: list[DeliveryItem], *, fresh: bool) -> Intercepted:
    """The hold applied to a task's items: fresh upserts held, a custom event's customer's held
    upserts taken in front of it, released held items checked for unchanged and coalesced.
    ``fresh``: the items come from the ingest (items back from the delayed store are not held
    again)."""
    target = hold_target(ctx.target)
    if target is None:
        return Intercepted(items, [])
    holds = Holds(ctx.client, ctx.keys, ctx.connection_id)
    released = [i for i in items if i.get("held")]
    rest = [i for i in items if not i.get("held")]

    by_customer: dict[str, list[DeliveryItem]] = {}
    for item in rest:
        customer = (item.get("request") or {}).get("customer")
        if isinstance(customer, str):
            by_customer.setdefault(customer, []).append(item)
    to_hold: dict[str, list[DeliveryItem]] = {}
    flush: list[str] = []
    for customer, mine in by_customer.items():
        if all(target.holdable(OutboundRequest.from_dict(i["request"])) for i in mine):
            if fresh:
                to_hold[customer] = mine
        else:
            flush.append(customer)
    for mine in to_hold.values():
        for item in mine:
            item["held"] = True
    holding = [i for mine in to_hold.values() for i in mine]
    # A backfill's customers fall due together (REPLAY_ALIGN_SECONDS), whatever pace the replay
    # reads at: one tick releases them all, and their bulks fill.  Without a bulk budget they
    # go singly: aligned, they would only start later.
    replayed = holding and all(i.get("replay") for i in holding)
    align = REPLAY_ALIGN_SECONDS if replayed and target.bulk_possible() else 0.0
    dues = holds.hold(ctx.direction, ctx.queue, to_hold, target.hold_window(), align)
    for customer, due in dues.items():  # a "held" line in their traces, not a silent gap
        ids = [i for item in to_hold[customer] for i in attempts.trace_ids(item)]
        ctx.trace.wait(ids, connection=ctx.connection_id, reason=HELD_REASON, until=due)
    taken_id, taken, busy = holds.take(ctx.direction, ctx.queue, flush)

    held_now = {id(i) for mine in to_hold.values() for i in mine}
    parked: list[tuple[Step, list[DeliveryItem]]] = []
    if busy:
        due = time.time() + BUSY_PARK_SECONDS
        parked = [(Step.parked("busy", due), by_customer[c]) for c in sorted(busy)]
        for _step, chain in parked:
            attempts.parked(ctx, OutboundRequest.from_dict(chain[0]["request"]), chain[0], "busy", due)
    waiting = {id(i) for c in busy for i in by_customer[c]}
    run = _prepare_held(ctx, target, taken, bulk=False) + _prepare_held(
        ctx, target, released, bulk=True, parked=parked
    )
    run += [i for i in rest if id(i) not in held_now and id(i) not in waiting]
    customers = {str((i.get("request") or {}).get("customer")) for i in released}
    return Intercepted(run, parked, taken_id, customers)


def _prepare_held(
    ctx: Context,
    target: HoldTarget,
    items: list[DeliveryItem],
    *,
    bulk: bool,
    parked: list[tuple[Step, list[DeliveryItem]]] | None = None,
) -> list[DeliveryItem]:
    """Held items without the customers whose merged upsert is unchanged, coalesced; those that
    wait for a bulk budget added to ``parked`` as ONE chain (one delayed entry: back together,
    they make one bulk again), still held."""
    if not items:
        return []
    kept = skip_unchanged(ctx, target, items)
    out, later, wait = target.coalesce_held(kept, bulk) if kept else ([], [], 0.0)
    for item in out:
        item.pop("held", None)  # from here on an ordinary item (a retry comes back as one)
    if later and parked is not None:
        due = time.time() + wait
        ids = [i for item in later for i in attempts.trace_ids(item)]
        ctx.trace.wait(ids, connection=ctx.connection_id, reason=BULK_WAIT_REASON, until=due)
        parked.append((Step.parked(BULK_WAIT_REASON, due), later))
    return out


def skip_unchanged(ctx: Context, target: HoldTarget, items: list[DeliveryItem]) -> list[DeliveryItem]:
    """``items`` without the customers whose merged upsert equals the last one accepted: those
    are finished as ``skipped_unchanged`` (keys done, stale mark raised: as if delivered)."""
    days = target.unchanged_days()
    if days <= 0:
        return items
    by_customer: dict[str, list[DeliveryItem]] = {}
    for item in items:
        customer = (item.get("request") or {}).get("customer")
        if isinstance(customer, str):
            by_customer.setdefault(customer, []).append(item)
    customers = list(by_customer)
    merged: dict[str, str] = {}
    for customer in customers:
        body = target.merged_body([OutboundRequest.from_dict(i["request"]) for i in by_customer[customer]])
        if body is not None:
            merged[customer] = digest(body)
    names = [c for c in customers if c in merged]
    known = Holds(ctx.client, ctx.keys, ctx.connection_id).digests(names)
    same = {c for c, d in zip(names, known, strict=True) if d is not None and d == merged[c]}
    if not same:
        return items
    skipped = [i for c in same for i in by_customer[c]]
    requests = [OutboundRequest.from_dict(i["request"]) for i in skipped]
    ctx.ledger.complete_many([r.idempotency_key for r in requests], ctx.ledger_keep)
    newest: dict[str, int] = {}
    for r in requests:
        ms = ctx.target.stale_time(r.action, r.event_time)
        if ms is not None and r.customer:
            newest[r.customer] = max(ms, newest.get(r.customer, ms))
    for customer, ms in newest.items():
        ctx.stale.applied(customer, ms, ctx.tuning.stale_ttl)
    for item, r in zip(skipped, requests, strict=True):
        endings.skipped_unchanged(ctx, r, item)
    metrics.child(metrics.UPSERTS_SKIPPED, ctx.connection_id).inc(len(same))
    return [i for i in items if (i.get("request") or {}).get("customer") not in same]
