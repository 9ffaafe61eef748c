"""Delivering one :class:`~workers.outbound.OutboundRequest`: the per-item state machine.

::

    deliver_one(item)
      no send slot before the deadline ────────────────────────────> PARKED deferred (due now)
      ledger.claim ── DUPLICATE ───────────────────────────────────> DONE   skipped/duplicate
                   ── BUSY (another attempt in flight) ────────────> PARKED busy (claim's TTL)
      merged call: each part's key claimed too ── a part BUSY ─────> PARKED busy (nothing sent)
      upsert older than the newest applied? ───────────────────────> DONE   skipped/stale
      ratelimit.acquire ── denied (no attempt counted) ────────────> PARKED throttled (slot)
      send ── classify ── SUCCESS ─ ledger done, stale raised ─────> DONE   delivered
                       ── RETRY ── retries.decide ── in window ────> PARKED retry (backoff)
                                                  └─ window spent ─> DONE   dead letter
                       ── PERMANENT ───────────────────────────────> DONE   dead letter

A *send slot* (one of ``CONNECTOR_WORKER_INFLIGHT`` per target origin and process, shared by all
tasks of the process) is held from the claim to the end of the item: however many tasks and
customers run at once, a worker process keeps that many calls in flight per target, its HTTP
pool holds as many connections, and a task waits for a slot at most until its deadline.

Every path that is not PARKED is *terminal*: reported (log line + metrics) and its backlog
units released here.  Parking itself (writing to the delayed store, keeping per-customer order)
belongs to the pipeline.  A delivery *item* is a JSON-able dict that travels through Celery and
the delayed store::

    {"request": OutboundRequest.to_dict(), "payload": <original event or webhook>,
     "received_at": epoch|None, "first_attempt_at": epoch|None, "attempts": int,
     "history": [{"t", "status", "error", "latency_ms"}], "last_delay": float|None,
     "backlog": events to release when finished, "backlog_bytes": their bytes, "parked": bool}
"""

from __future__ import annotations

import enum
import threading
import time
from dataclasses import dataclass, field
from typing import Any

import orjson
import redis

from connector import CHANNEL, USER_AGENT, backlog, metrics
from connector.config import Connection
from connector.contract import DESTINATION, SOURCE
from connector.keys import Keys
from workers.delivery import outcomes
from workers.delivery.deadletters import (
    MAX_HISTORY,
    REJECTED,
    RETRY_WINDOW_EXCEEDED,
    DeadLetter,
    DeadLetters,
)
from workers.delivery.http import (
    HTTPResult,
    RequestsTransport,
    Transport,
    TransportFailure,
    Verdict,
    classify,
    server_wait,
)
from workers.delivery.ledger import ClaimState, Ledger, new_token
from workers.delivery.metadata_schema import (
    MAX_LISTING_BYTES,
    MetadataSchemas,
    SchemaUnavailable,
    fetch,
    is_metadata_refusal,
)
from workers.delivery.ratelimit import SEGMENT, VOUCHERIFY, Budget, RateLimiter
from workers.delivery.retries import decide
from workers.delivery.stale import StaleGuard, event_time_ms
from workers.delivery.tuning import Tuning
from workers.mapping.destination.metadata import (
    CustomerMetadataSchema,
    carries_customer_metadata,
    filter_request,
)
from workers.outbound import OutboundRequest
from workers.runtime import Runtime

UPSERT_CUSTOMER = "upsert_customer"
DEDUPE_MARGIN_SECONDS = 3600.0


# ---------------------------------------------------------------------------------------------
# Items


def new_item(
    request: OutboundRequest,
    payload: Any,
    received_at: float | None,
    backlog_units: int,
    backlog_bytes: int = 0,
) -> dict[str, Any]:
    item = {
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
    return item


def backlog_of(item: dict[str, Any]) -> tuple[int, int]:
    """(events, bytes) of the backlog an item holds, released when it is finished."""
    return int(item.get("backlog") or 0), int(item.get("backlog_bytes") or 0)


def _append_history(item: dict[str, Any], entry: dict[str, Any]) -> None:
    history = item.setdefault("history", [])
    history.append(entry)
    if len(history) > MAX_HISTORY:
        # Keep the first attempt (when the trouble started) and the most recent ones.
        del history[1 : len(history) - MAX_HISTORY + 1]


# ---------------------------------------------------------------------------------------------
# Context: everything about (runtime, connection, direction) a task needs, built once per task.


def runtime_keys(rt: Runtime) -> Keys:
    keys = rt.extras.get("keys")
    if not isinstance(keys, Keys):
        keys = Keys.from_env()
        rt.extras["keys"] = keys
    return keys


def runtime_transport(rt: Runtime, tuning: Tuning) -> Transport:
    transport = rt.extras.get("transport")
    if transport is None:
        # One connection per send slot, and some for the Segment outbox's flushes.
        transport = RequestsTransport(pool_size=max(16, tuning.inflight + 16))
        rt.extras["transport"] = transport
    return transport


def runtime_schema_transport(rt: Runtime) -> Transport:
    """A small pool for reading metadata schemas: their answers are read whole, not excerpted."""
    transport = rt.extras.get("schema_transport")
    if transport is None:
        transport = RequestsTransport(pool_size=2, excerpt_bytes=MAX_LISTING_BYTES)
        rt.extras["schema_transport"] = transport
    return transport


def runtime_slots(rt: Runtime, tuning: Tuning, base_url: str) -> threading.BoundedSemaphore:
    """The process's send slots towards one origin (greenlet-aware under gevent's patching)."""
    slots: dict[str, threading.BoundedSemaphore] = rt.extras.setdefault("send_slots", {})
    slot = slots.get(base_url)
    if slot is None:
        slot = slots.setdefault(base_url, threading.BoundedSemaphore(max(1, tuning.inflight)))
    return slot


_children: dict[tuple[int, tuple[str, ...]], Any] = {}


def _child(metric: Any, *labels: str) -> Any:
    """``metric.labels(*labels)``, looked up once per process (label sets are small, bounded)."""
    key = (id(metric), labels)
    child = _children.get(key)
    if child is None:
        child = _children[key] = metric.labels(*labels)
    return child


def _voucherify_auth(connection: Connection) -> dict[str, str]:
    from workers.mapping.destination.requests import auth_headers

    return auth_headers(connection.voucherify)


def segment_auth(connection: Connection) -> dict[str, str]:
    import base64

    assert connection.segment is not None
    token = base64.b64encode(f"{connection.segment.write_key.reveal()}:".encode()).decode("ascii")
    return {"Authorization": f"Basic {token}"}


@dataclass
class Context:
    client: redis.Redis
    keys: Keys
    tuning: Tuning
    connection: Connection
    connection_id: str
    direction: str
    target: str
    queue: str
    region: str
    base_url: str
    budget: Budget | None
    transport: Transport
    auth: dict[str, str] = field(repr=False)
    deadline: float = 0.0  # time.monotonic() after which work is parked, not started
    slots: threading.BoundedSemaphore | None = None  # send slots towards base_url (None: no bound)
    schema_transport: Transport | None = None  # for GET /v1/metadata-schemas (default: transport)
    ledger: Ledger = field(init=False)
    limiter: RateLimiter = field(init=False)
    stale: StaleGuard = field(init=False)
    dead_letters: DeadLetters = field(init=False)
    # metadata_schema = "defined" (rest mode): the connection's cached customer metadata schema.
    metadata_schemas: MetadataSchemas | None = field(init=False, default=None)
    _units: int = field(init=False, default=0)
    _bytes: int = field(init=False, default=0)
    _units_lock: threading.Lock = field(init=False, default_factory=threading.Lock)

    def __post_init__(self) -> None:
        self.ledger = Ledger(self.client, self.keys, self.connection_id)
        self.limiter = RateLimiter(self.client, self.keys, self.connection_id, self.target)
        self.stale = StaleGuard(self.client, self.keys, self.connection_id)
        self.dead_letters = DeadLetters(self.client, self.keys)
        if keeps_metadata_to_schema(self.connection, self.direction):
            self.metadata_schemas = MetadataSchemas(self.client, self.keys, self.connection_id)

    @property
    def window(self) -> float:
        return self.tuning.retry_window(float(self.connection.retry_window_seconds))

    @property
    def ledger_keep(self) -> float:
        return self.window + self.tuning.ledger_extra

    @property
    def dedupe_keep(self) -> float:
        """How long a Voucherify event is remembered (its Segment messageId, at the outbox):
        longer than the oldest webhook the web accepts (``max_event_age_hours``, measured from a
        ``created_at`` that may run a little ahead of our clock) plus the retry window.  A
        shorter memory let a replay of an event still young enough to be accepted in twice."""
        from connector.envelope import FUTURE_SKEW_SECONDS

        accepted = self.connection.voucherify.max_event_age_seconds + FUTURE_SKEW_SECONDS
        return max(self.ledger_keep, accepted + self.window + DEDUPE_MARGIN_SECONDS)

    def out_of_time(self) -> bool:
        return time.monotonic() >= self.deadline

    def release_backlog(self, units: int, stored_bytes: int = 0) -> None:
        # Collected and released once per task (flush_backlog): a round trip per task, not per
        # event.  A task that dies before flushing leaves them reserved: its redelivery finds
        # the events done (ledger) and releases them then.
        if units or stored_bytes:
            with self._units_lock:
                self._units += units
                self._bytes += stored_bytes

    def flush_backlog(self) -> None:
        with self._units_lock:
            units, self._units = self._units, 0
            stored, self._bytes = self._bytes, 0
        if units or stored:
            backlog.release(self.client, self.connection_id, units, stored, keys=self.keys)


def build_context(rt: Runtime, connection: Connection, connection_id: str, direction: str) -> Context:
    tuning = rt.extras.get("tuning") or Tuning.from_env()
    target, queue, region, base_url, budget, auth = _target(connection, connection_id, direction)
    return Context(
        client=rt.redis,
        keys=runtime_keys(rt),
        tuning=tuning,
        connection=connection,
        connection_id=connection_id,
        direction=direction,
        target=target,
        queue=queue,
        region=region,
        base_url=base_url,
        budget=budget,
        transport=runtime_transport(rt, tuning),
        auth=auth,
        deadline=time.monotonic() + tuning.task_budget,
        slots=runtime_slots(rt, tuning, base_url),
        schema_transport=runtime_schema_transport(rt)
        if keeps_metadata_to_schema(connection, direction)
        else None,
    )


def keeps_metadata_to_schema(connection: Connection, direction: str) -> bool:
    return (
        direction == DESTINATION
        and connection.voucherify.mode == "rest"
        and connection.destination.metadata_schema == "defined"
    )


def _target(
    connection: Connection, connection_id: str, direction: str
) -> tuple[str, str, str, str, Budget | None, dict[str, str]]:
    """(target, queue, region label, base URL, budget, auth headers) of one direction."""
    if direction == SOURCE:
        seg = connection.segment
        if seg is None:
            raise ValueError(f"connection {connection_id!r} has no Segment settings")
        budget = Budget(limit=seg.requests_per_second, window=1.0)
        return SEGMENT, seg.queue, seg.region or "dedicated", seg.base_url, budget, segment_auth(connection)
    vf = connection.voucherify
    rate = vf.rate_limit_per_minute
    vf_budget = Budget(limit=rate, window=60.0) if rate else None
    return (
        VOUCHERIFY,
        vf.queue,
        vf.region or "dedicated",
        vf.base_url,
        vf_budget,
        _voucherify_auth(connection),
    )


# ---------------------------------------------------------------------------------------------
# Steps


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


def deliver_one(ctx: Context, item: dict[str, Any]) -> Step:
    request = OutboundRequest.from_dict(item["request"])
    if ctx.slots is None:
        if ctx.out_of_time():
            _park_report(ctx, request, item, "deferred")
            return Step.parked("deferred", time.time())
        return _deliver(ctx, request, item)
    # Waiting for a slot, never past the task's deadline (out of time: not even a try).
    wait = ctx.deadline - time.monotonic()
    if wait <= 0 or not ctx.slots.acquire(timeout=wait):
        _park_report(ctx, request, item, "deferred")
        return Step.parked("deferred", time.time())
    try:
        return _deliver(ctx, request, item)
    finally:
        ctx.slots.release()


def _deliver(ctx: Context, request: OutboundRequest, item: dict[str, Any]) -> Step:
    token = new_token()
    claim = ctx.ledger.claim(request.idempotency_key, token, ctx.tuning.claim_ttl)
    if claim.state is ClaimState.DUPLICATE:
        return finish_skipped(ctx, request, item, "duplicate")
    if claim.state is ClaimState.BUSY:
        _park_report(ctx, request, item, "busy")
        return Step.parked("busy", time.time() + claim.wait + 0.05)

    held: list[str] = []  # the parts' keys this attempt claimed (a coalesced request)
    if request.parts:
        # A coalesced request: its key is its own, so each part (one event) is claimed too -- a
        # duplicate of the event grouped differently elsewhere has another merged key, and only
        # the part's claim keeps the two from both sending it.  A part in flight elsewhere parks
        # the whole request until that claim ends (done then, or free again if its owner died).
        live, why, held, busy = _live_parts(ctx, request, token)
        if busy is not None:
            ctx.ledger.release(request.idempotency_key, token, *held)
            _park_report(ctx, request, item, "busy")
            return Step.parked("busy", time.time() + busy + 0.05)
        if live is None:
            ctx.ledger.complete(request.idempotency_key, ctx.ledger_keep)
            ctx.ledger.complete_many([p["idempotency_key"] for p in request.parts], ctx.ledger_keep)
            return finish_skipped(ctx, request, item, why)
        request = live
    event_ms = (
        event_time_ms(request.event_time) if request.action == UPSERT_CUSTOMER and not request.parts else None
    )
    if event_ms is not None and request.customer and ctx.stale.is_stale(request.customer, event_ms):
        ctx.ledger.complete(request.idempotency_key, ctx.ledger_keep)
        return finish_skipped(ctx, request, item, "stale")

    if ctx.metadata_schemas is not None and carries_customer_metadata(request):
        kept = _keep_metadata_to_schema(ctx, ctx.metadata_schemas, request, item)
        if isinstance(kept, Step):
            ctx.ledger.release(request.idempotency_key, token)
            return kept
        request = kept

    grant = ctx.limiter.acquire(ctx.budget, has_slot=bool(item.get("parked")))
    if not grant.granted:
        ctx.ledger.release(request.idempotency_key, token, *held)
        _child(metrics.RATE_LIMIT_WAITS, ctx.connection_id, ctx.target).inc()
        _park_report(ctx, request, item, "throttled")
        return Step.parked("throttled", time.time() + grant.wait)

    result = _send(ctx, request, item)
    verdict = classify(result)
    if verdict is Verdict.SUCCESS:
        assert isinstance(result, HTTPResult)
        ctx.ledger.complete(request.idempotency_key, ctx.ledger_keep)
        if request.parts:
            _parts_delivered(ctx, request)
        if event_ms is not None and request.customer:
            ctx.stale.applied(request.customer, event_ms, ctx.tuning.stale_ttl)
        _observe(ctx, result)
        return _finish_delivered(ctx, request, item, result)

    ctx.ledger.release(request.idempotency_key, token, *held)
    _observe(ctx, result)
    status = result.status if isinstance(result, HTTPResult) else None
    if (
        verdict is Verdict.PERMANENT
        and ctx.metadata_schemas is not None
        and is_metadata_refusal(result)
        and not item.get("metadata_refreshed")
    ):
        # The schema changed since it was read: refresh it, and try once more with it.
        ctx.metadata_schemas.mark_stale()
        item["metadata_refreshed"] = True
        _park_report(ctx, request, item, "metadata_schema")
        return Step.parked("metadata_schema", time.time() + 1.0)
    if verdict is Verdict.PERMANENT:
        return finish_dead(ctx, item, REJECTED, _error_text(result), status=status, excerpt=_excerpt(result))
    return _retry_or_dead(ctx, request, item, result)


def _keep_metadata_to_schema(
    ctx: Context, schemas: MetadataSchemas, request: OutboundRequest, item: dict[str, Any]
) -> OutboundRequest | Step:
    """``request`` with only the customer metadata the project's schema defines, or a parked
    step while no schema has ever been read (never sent unfiltered)."""
    cached = schemas.cached()
    schema = cached.schema
    if cached.due and schemas.try_lock():
        try:
            refreshed = _refresh_schema(ctx, schemas, request, item, have_one=schema is not None)
        finally:
            schemas.unlock()
        if isinstance(refreshed, Step):
            return refreshed
        schema = refreshed or schema
    if schema is None:
        # Another worker is reading it, or the read failed: wait for it, in the delayed store.
        _park_report(ctx, request, item, "metadata_schema")
        return Step.parked("metadata_schema", time.time() + (1.0 if cached.due else 5.0))
    kept, dropped = filter_request(request, schema)
    if dropped and not item.get("metadata_counted"):
        item["metadata_counted"] = True
        for key, reason in dropped:
            label = metadata_key_label(ctx.connection_id, key)
            metrics.METADATA_DROPPED.labels(ctx.connection_id, label, reason).inc()
    return kept


def _refresh_schema(
    ctx: Context, schemas: MetadataSchemas, request: OutboundRequest, item: dict[str, Any], *, have_one: bool
) -> CustomerMetadataSchema | Step | None:
    """One ``GET /v1/metadata-schemas``, stored for every worker; None when it gave nothing."""
    # It spends the shop's quota like any call: a grant first.
    grant = ctx.limiter.acquire(ctx.budget, has_slot=bool(item.get("parked")))
    if not grant.granted:
        if have_one:
            return None  # keep using the old one; a later item refreshes
        _child(metrics.RATE_LIMIT_WAITS, ctx.connection_id, ctx.target).inc()
        _park_report(ctx, request, item, "throttled")
        return Step.parked("throttled", time.time() + grant.wait)
    headers = {"User-Agent": USER_AGENT, "X-Voucherify-Channel": CHANNEL, **ctx.auth}
    timeouts = (ctx.tuning.connect_timeout, ctx.tuning.read_timeout)
    try:
        schema = fetch(ctx.schema_transport or ctx.transport, ctx.base_url, headers, timeouts)
    except SchemaUnavailable as exc:
        outcomes.report(
            connection=ctx.connection_id,
            direction=ctx.direction,
            outcome="metadata_schema_unavailable",
            message_id=request.message_id,
            action=request.action,
            error=str(exc),
        )
        return None
    schemas.store(schema)
    return schema


_metadata_keys: dict[str, set[str]] = {}
MAX_METADATA_KEY_LABELS = 100


def metadata_key_label(connection_id: str, key: str) -> str:
    """The dropped key as a metric label: its name, for at most 100 names per connection and
    process (event data chooses the names: the label set stays bounded), then ``_other``."""
    seen = _metadata_keys.setdefault(connection_id, set())
    if key in seen:
        return key
    if len(seen) >= MAX_METADATA_KEY_LABELS or len(key) > 100:
        return "_other"
    seen.add(key)
    return key


def _live_parts(
    ctx: Context, request: OutboundRequest, token: str
) -> tuple[OutboundRequest | None, str, list[str], float | None]:
    """The coalesced request without its parts already delivered or stale (None: nothing left),
    the reason when nothing is left, the part keys now claimed with ``token``, and -- when a part
    is being sent by another attempt -- how long that claim still lives (then nothing is sent)."""
    from workers.delivery.coalesce import rebuild

    parts = list(request.parts or ())
    claims = ctx.ledger.claim_many([p["idempotency_key"] for p in parts], token, ctx.tuning.claim_ttl)
    held = [p["idempotency_key"] for p, c in zip(parts, claims, strict=True) if c.state is ClaimState.CLAIMED]
    busy = [c.wait for c in claims if c.state is ClaimState.BUSY]
    if busy:
        return None, "busy", held, max(busy)
    newest = ctx.stale.newest_many([str(p.get("customer")) for p in parts])
    live: list[dict[str, Any]] = []
    stale = False
    for part, claim, newest_ms in zip(parts, claims, newest, strict=True):
        if claim.state is ClaimState.DUPLICATE:
            continue
        if part.get("action") == UPSERT_CUSTOMER and newest_ms is not None:
            ms = event_time_ms(part.get("event_time"))
            if ms is not None and ms < newest_ms:
                stale = True
                continue
        live.append(part)
    return rebuild(request, live), "stale" if stale else "duplicate", held, None


def _parts_delivered(ctx: Context, request: OutboundRequest) -> None:
    parts = request.parts or ()
    ctx.ledger.complete_many([p["idempotency_key"] for p in parts], ctx.ledger_keep)
    newest: dict[str, int] = {}
    for part in parts:
        ms = event_time_ms(part.get("event_time")) if part.get("action") == UPSERT_CUSTOMER else None
        if ms is not None and part.get("customer"):
            newest[part["customer"]] = max(ms, newest.get(part["customer"], ms))
    for customer, ms in newest.items():
        ctx.stale.applied(customer, ms, ctx.tuning.stale_ttl)


def _send(ctx: Context, request: OutboundRequest, item: dict[str, Any]) -> HTTPResult | TransportFailure:
    headers = {"Content-Type": "application/json", "User-Agent": USER_AGENT, **request.headers, **ctx.auth}
    body = orjson.dumps(request.body) if request.body is not None else None
    now = time.time()
    if not item.get("first_attempt_at"):
        item["first_attempt_at"] = now
    item["attempts"] = int(item.get("attempts") or 0) + 1
    result: HTTPResult | TransportFailure
    try:
        result = ctx.transport.send(
            request.method,
            ctx.base_url + request.path,
            headers,
            body,
            (ctx.tuning.connect_timeout, ctx.tuning.read_timeout),
        )
    except TransportFailure as exc:
        result = exc
    _child(metrics.REQUEST_LATENCY, ctx.target).observe(result.latency)
    _append_history(
        item,
        {
            "t": round(now, 3),
            "status": result.status if isinstance(result, HTTPResult) else None,
            "error": result.message if isinstance(result, TransportFailure) else None,
            "latency_ms": int(result.latency * 1000),
        },
    )
    return result


def _observe(ctx: Context, result: HTTPResult | TransportFailure) -> None:
    """Adaptive slow-down from a 429 or a low X-Rate-Limit-Remaining (Voucherify)."""
    if not isinstance(result, HTTPResult):
        return
    slowed = ctx.limiter.observe(
        result.status,
        result.headers.get("x-rate-limit-remaining"),
        ctx.budget.limit if ctx.budget else None,
        tuning_low=ctx.tuning.low_remaining,
        slowdown_seconds=ctx.tuning.slowdown_seconds,
        server_wait=server_wait(result),
    )
    if slowed:
        _child(metrics.RATE_LIMIT_SLOWDOWNS, ctx.connection_id, ctx.target).inc()


def _retry_or_dead(
    ctx: Context, request: OutboundRequest, item: dict[str, Any], result: HTTPResult | TransportFailure
) -> Step:
    now = time.time()
    decision = decide(
        now=now,
        first_attempt_at=float(item.get("first_attempt_at") or now),
        window=ctx.window,
        previous_delay=item.get("last_delay"),
        base=ctx.tuning.retry_base,
        cap=ctx.tuning.retry_cap,
        server_wait=server_wait(result, now),
    )
    status = result.status if isinstance(result, HTTPResult) else None
    if decision.exhausted:
        return finish_dead(
            ctx, item, RETRY_WINDOW_EXCEEDED, _error_text(result), status=status, excerpt=_excerpt(result)
        )
    item["last_delay"] = decision.delay
    metrics.RETRIES_SCHEDULED.labels(ctx.connection_id, ctx.direction).inc()
    metrics.DELIVERIES.labels(
        ctx.connection_id, ctx.direction, ctx.region, "retry", outcomes.status_label(status)
    ).inc()
    outcomes.report(
        connection=ctx.connection_id,
        direction=ctx.direction,
        outcome="retry",
        reason=f"retry in {decision.delay:.1f}s",
        message_id=request.message_id,
        action=request.action,
        status=status,
        attempt=item.get("attempts"),
        latency_ms=int(result.latency * 1000),
        error=_error_text(result),
    )
    return Step.parked("retry", now + decision.delay)


# ---------------------------------------------------------------------------------------------
# Terminal outcomes (also used by the pipeline and the Segment outbox)


def _finish_delivered(
    ctx: Context, request: OutboundRequest, item: dict[str, Any], result: HTTPResult
) -> Step:
    _child(
        metrics.DELIVERIES, ctx.connection_id, ctx.direction, ctx.region, "delivered", str(result.status)
    ).inc()
    received_at = item.get("received_at")
    if received_at:
        _child(metrics.DELIVERY_LATENCY, ctx.direction).observe(max(0.0, time.time() - float(received_at)))
    outcomes.report(
        connection=ctx.connection_id,
        direction=ctx.direction,
        outcome="delivered",
        message_id=request.message_id,
        action=request.action,
        status=result.status,
        attempt=item.get("attempts"),
        latency_ms=int(result.latency * 1000),
    )
    ctx.release_backlog(*backlog_of(item))
    return Step.done("delivered")


def finish_skipped(
    ctx: Context,
    request: OutboundRequest | None,
    item: dict[str, Any],
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
    ctx.release_backlog(*backlog_of(item))
    return Step.done(reason)


def finish_dead(
    ctx: Context,
    item: dict[str, Any],
    reason: str,
    error: str,
    *,
    status: int | None = None,
    excerpt: str = "",
    history: list[dict[str, Any]] | None = None,
) -> Step:
    ctx.dead_letters.add(
        dead_letter_for(ctx, item, reason, error, status=status, excerpt=excerpt, history=history)
    )
    return report_dead(ctx, item, reason, error, status=status)


def dead_letter_for(
    ctx: Context,
    item: dict[str, Any],
    reason: str,
    error: str,
    *,
    status: int | None = None,
    excerpt: str = "",
    history: list[dict[str, Any]] | None = None,
) -> DeadLetter:
    """The dead-letter record of ``item`` (not written: see :func:`finish_dead`)."""
    return DeadLetter(
        connection_id=ctx.connection_id,
        direction=ctx.direction,
        reason=reason,
        error=error,
        queue=ctx.queue,
        payload=item.get("payload"),
        request=item.get("request"),
        status=status,
        response_excerpt=excerpt,
        history=history if history is not None else list(item.get("history") or []),
        attempts=int(item.get("attempts") or 0),
        first_attempt_at=item.get("first_attempt_at"),
        received_at=item.get("received_at"),
    )


def report_dead(
    ctx: Context, item: dict[str, Any], reason: str, error: str, *, status: int | None = None
) -> Step:
    """The rest of a dead letter once its record is written: metrics, the log line, the backlog."""
    request = item.get("request")
    message_id = (request or {}).get("message_id") or _payload_id(item.get("payload"))
    metrics.DEAD_LETTERS.labels(ctx.connection_id, ctx.direction, reason).inc()
    metrics.DELIVERIES.labels(
        ctx.connection_id, ctx.direction, ctx.region, "dead_letter", outcomes.status_label(status)
    ).inc()
    outcomes.report(
        connection=ctx.connection_id,
        direction=ctx.direction,
        outcome="dead_letter",
        reason=reason,
        message_id=message_id,
        action=(request or {}).get("action"),
        status=status,
        attempt=item.get("attempts"),
        error=error,
    )
    ctx.release_backlog(*backlog_of(item))
    return Step.done(reason)


def _park_report(ctx: Context, request: OutboundRequest, item: dict[str, Any], reason: str) -> None:
    _child(metrics.PARKED, ctx.connection_id, ctx.direction, reason).inc()
    outcomes.report(
        connection=ctx.connection_id,
        direction=ctx.direction,
        outcome=reason,
        message_id=request.message_id,
        action=request.action,
        attempt=item.get("attempts"),
    )


def _payload_id(payload: Any) -> str | None:
    if isinstance(payload, dict):
        value = payload.get("messageId") or payload.get("id")
        return str(value)[:200] if value is not None else None
    return None


def _error_text(result: HTTPResult | TransportFailure) -> str:
    if isinstance(result, TransportFailure):
        return result.message
    return f"HTTP {result.status}"


def _excerpt(result: HTTPResult | TransportFailure) -> str:
    return result.body if isinstance(result, HTTPResult) else ""


__all__ = [
    "DESTINATION",
    "SOURCE",
    "Context",
    "Step",
    "StepKind",
    "backlog_of",
    "build_context",
    "dead_letter_for",
    "deliver_one",
    "finish_dead",
    "finish_skipped",
    "new_item",
    "report_dead",
]
