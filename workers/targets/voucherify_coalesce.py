"""Voucherify's coalescing rule: fewer calls for the same effects, the customer upserts of one task merged (SPEC 8).

Pure: OutboundRequests in, a shorter list of OutboundRequests out; no I/O, no clock.  Only for
the ``rest`` mode, where an upsert is ``POST /v1/customers`` (identify *and* group calls).

1. **Merge.**  Within one customer's requests, in order, a run of consecutive upserts (no other
   request of that customer between them) becomes one upsert whose body has the effect of
   sending them one after the other IN EVENT-TIME ORDER (ties keep their list order): the
   newest fields win whatever order the events arrived in, ``null`` still clears, ``address``
   and ``metadata`` merge key by key as Voucherify applies them (a ``null`` metadata key
   removes that key).  A ``null`` object followed by an object ("clear, then set some keys")
   cannot be said in one body: such a pair is not merged.
2. **Bulk.**  Customers whose only request in the task is one (possibly merged) upsert are sent
   together in ``POST /v1/customers/bulk/async`` (a JSON array of customers, up to
   ``max_bulk`` of them and ``max_bytes`` of body).  Bulk is asynchronous at Voucherify, so a
   customer with any other request in the task (a custom event that may rely on the upsert
   having happened) keeps its synchronous upsert.

Bulk sizes (SPEC 10 and 15): live traffic keeps bulks of at most ``MAX_BULK`` (100) customers;
upserts that come from ``connector replay`` (items marked ``replay``) are bulked up to what
Voucherify accepts -- 10 MB of request body -- kept under ``MAX_BULK_BYTES`` (a margin for the
headers and for what the metadata schema filter leaves out) and under ``REPLAY_MAX_BULK``
customers (a cap for the worker's memory: a bulk item carries every part and event of its
customers until it is read back).  A connection whose Voucherify refused a big bulk for its
size is back at ``MAX_BULK`` for a day (``workers.targets.voucherify_bulksize``).

A coalesced request keeps every original request as a *part* (idempotency key, customer, event
time, action, body): the engine drops parts already delivered (ledger) or stale, rebuilds the
body from the rest with :func:`rebuild`, and on success marks every part's key delivered and
raises each customer's stale mark to its newest event time -- so a redelivered or replayed task,
however it is grouped the second time, sends nothing twice.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import orjson

from connector.contract import DeliveryItem, backlog_of
from workers.delivery.attempts import keep_shared, new_item
from workers.delivery.stale import event_time_ms
from workers.outbound import OutboundRequest

CUSTOMERS_PATH = "/v1/customers"
BULK_PATH = "/v1/customers/bulk/async"
UPSERT_ACTIONS = frozenset({"upsert_customer", "assign_group"})
BULK_ACTION = "upsert_customers_bulk"
MAX_BULK = 100  # a live bulk's customers (SPEC 10)
REPLAY_MAX_BULK = 5_000  # a replay bulk's customers: the worker's memory, not Voucherify's limit
VOUCHERIFY_MAX_BODY_BYTES = 10 * 1024 * 1024  # "The request can include up to 10 MB of data"
MAX_BULK_BYTES = 9_500_000  # a bulk's JSON body at the most: a margin under VOUCHERIFY_MAX_BODY_BYTES
_OBJECTS = ("address", "metadata")


@dataclass(frozen=True)
class Coalesced:
    request: OutboundRequest
    sources: list[int]  # indices of the input requests it stands for, in order
    pregrant: object = None  # a bulk call's: what ``allow_bulk`` answered (its budgets' grant)


def is_upsert(request: OutboundRequest) -> bool:
    return (
        request.method == "POST"
        and request.path == CUSTOMERS_PATH
        and request.action in UPSERT_ACTIONS
        and isinstance(request.customer, str)
        and isinstance(request.body, dict)
        and request.body.get("source_id") == request.customer
        and not request.parts
    )


def merge_bodies(first: dict[str, Any], second: dict[str, Any]) -> dict[str, Any] | None:
    """One body with the effect of upserting ``first`` then ``second``; None when impossible."""
    merged = dict(first)
    for key, value in second.items():
        if key in _OBJECTS and isinstance(value, dict):
            before = merged.get(key, {})
            if before is None:
                return None  # cleared, then partly set: not expressible in one body
            merged[key] = {**before, **value} if isinstance(before, dict) else dict(value)
        else:
            merged[key] = value
    return merged


def part_of(request: OutboundRequest) -> dict[str, Any]:
    return {
        "idempotency_key": request.idempotency_key,
        "action": request.action,
        "customer": request.customer,
        "event_time": request.event_time,
        "message_id": request.message_id,
        "body": request.body,
    }


def _key(parts: Sequence[Mapping[str, Any]]) -> str:
    digest = hashlib.sha1(
        "\n".join(p["idempotency_key"] for p in parts).encode(), usedforsecurity=False
    ).hexdigest()
    # The connection prefix of the originals ("<connection>:v:") keeps keys readable and scoped.
    prefix = str(parts[0]["idempotency_key"]).split(":v:", 1)[0]
    return f"{prefix}:v:coalesced-{digest[:32]}"


def _newest(parts: Sequence[Mapping[str, Any]]) -> str | None:
    best: tuple[int, str] | None = None
    for part in parts:
        ms = event_time_ms(part.get("event_time"))
        if ms is not None and (best is None or ms >= best[0]):
            best = (ms, part["event_time"])
    return best[1] if best else None


def in_event_time_order(parts: Sequence[Mapping[str, Any]]) -> list[Mapping[str, Any]]:
    """``parts`` oldest first by event time; a stable sort, so equal times keep their order (and
    a part without a usable time counts as the oldest)."""

    def when(part: Mapping[str, Any]) -> float:
        ms = event_time_ms(part.get("event_time"))
        return float(ms) if ms is not None else float("-inf")

    return sorted(parts, key=when)


def _merged_customer_body(parts: Sequence[Mapping[str, Any]]) -> dict[str, Any] | None:
    # Merged as Voucherify would apply them one by one in event time: the newest value wins.
    parts = in_event_time_order(parts)
    body: dict[str, Any] | None = dict(parts[0]["body"])
    for part in parts[1:]:
        assert body is not None
        body = merge_bodies(body, part["body"])
        if body is None:
            return None
    return body


def _customers_in_order(parts: Sequence[Mapping[str, Any]]) -> list[list[Mapping[str, Any]]]:
    by_customer: dict[str, list[Mapping[str, Any]]] = {}
    for part in parts:
        by_customer.setdefault(part["customer"], []).append(part)
    return list(by_customer.values())


def build(template: OutboundRequest, parts: Sequence[Mapping[str, Any]]) -> OutboundRequest | None:
    """The request for ``parts`` (same shape as ``template``: one customer, or bulk)."""
    if not parts:
        return None
    if len(parts) == 1 and template.path != BULK_PATH:
        p = parts[0]
        headers = {**template.headers, "Idempotency-Key": p["idempotency_key"]}
        return OutboundRequest(
            method="POST",
            path=CUSTOMERS_PATH,
            body=p["body"],
            idempotency_key=p["idempotency_key"],
            action=p["action"],
            headers=headers,
            customer=p["customer"],
            event_time=p["event_time"],
            message_id=p["message_id"],
        )
    bodies = []
    for customer_parts in _customers_in_order(parts):
        body = _merged_customer_body(customer_parts)
        if body is None:
            return None
        bodies.append(body)
    key = _key(parts)
    bulk = template.path == BULK_PATH
    actions = {p["action"] for p in parts}
    return OutboundRequest(
        method="POST",
        path=BULK_PATH if bulk else CUSTOMERS_PATH,
        body=bodies if bulk else bodies[0],
        idempotency_key=key,
        action=BULK_ACTION
        if bulk
        else ("upsert_customer" if "upsert_customer" in actions else "assign_group"),
        headers={**template.headers, "Idempotency-Key": key},
        customer=None if bulk else parts[0]["customer"],
        event_time=_newest(parts),
        message_id=parts[-1]["message_id"],
        parts=tuple(dict(p) for p in parts),
    )


def rebuild(request: OutboundRequest, live: Sequence[Mapping[str, Any]]) -> OutboundRequest | None:
    """``request`` restricted to the parts still to send (its key stays the coalesced one)."""
    if len(live) == len(request.parts or ()):
        return request
    if not live:
        return None
    body: Any
    if request.path == BULK_PATH:
        bodies = []
        for customer_parts in _customers_in_order(live):
            merged = _merged_customer_body(customer_parts)
            if merged is None:  # pragma: no cover - a subsequence of mergeable parts merges
                return None
            bodies.append(merged)
        body = bodies
    else:
        body = _merged_customer_body(live)
        if body is None:  # pragma: no cover - see above
            return None
    # Same ledger claim (the coalesced key), but Voucherify sees a key of what is really sent.
    return OutboundRequest(
        method=request.method,
        path=request.path,
        body=body,
        idempotency_key=request.idempotency_key,
        action=request.action,
        headers={**request.headers, "Idempotency-Key": _key(live)},
        customer=request.customer,
        event_time=_newest(live),
        message_id=request.message_id,
        parts=request.parts,
    )


def body_bytes(body: Any) -> int:
    """A customer's bytes in a bulk's JSON array (as the transport sends it: orjson, compact)."""
    return len(orjson.dumps(body))


def bulk_chunks(sizes: Sequence[int], max_count: int, max_bytes: int) -> list[list[int]]:
    """Consecutive runs of indices into ``sizes`` (each customer's body bytes), each run a bulk
    of at most ``max_count`` customers whose JSON array (brackets and commas counted) stays
    within ``max_bytes``; a customer over the bound alone is a run of its own."""
    runs: list[list[int]] = []
    current: list[int] = []
    used = 2  # "[" and "]"
    for index, size in enumerate(sizes):
        extra = size + (1 if current else 0)
        if current and (len(current) >= max_count or used + extra > max_bytes):
            runs.append(current)
            current, used, extra = [], 2, size
        current.append(index)
        used += extra
    if current:
        runs.append(current)
    return runs


def coalesce(
    requests: Sequence[OutboundRequest],
    *,
    max_bulk: int = MAX_BULK,
    max_bytes: int = MAX_BULK_BYTES,
    allow_bulk: Callable[[], object] | None = None,
) -> list[Coalesced]:
    """The requests of one task, coalesced; per-customer order is kept.  A bulk holds at most
    ``max_bulk`` customers and ``max_bytes`` of JSON body.  ``allow_bulk``: asked once per bulk
    call before it is planned (its budgets); its answer, kept as the bulk's ``pregrant``, or
    a false one: those customers go singly."""
    # 1. Runs of consecutive upserts within each customer's subsequence.
    units: list[tuple[list[dict[str, Any]], list[int], OutboundRequest]] = []  # parts, sources, template
    open_run: dict[str, int] = {}  # customer -> index in units of its run still open for merging
    for index, request in enumerate(requests):
        customer = request.customer
        if not is_upsert(request):
            if customer is not None:
                open_run.pop(customer, None)
            units.append(([], [index], request))
            continue
        assert customer is not None
        run = open_run.get(customer)
        if run is not None:
            parts, sources, template = units[run]
            candidate = _merged_customer_body([*parts, part_of(request)])
            if candidate is not None:
                parts.append(part_of(request))
                sources.append(index)
                continue
        open_run[customer] = len(units)
        units.append(([part_of(request)], [index], request))

    # 2. Customers whose only unit is one upsert run: candidates for bulk.
    count: dict[str, int] = {}
    for _parts, _sources, request in units:
        if request.customer is not None:
            count[request.customer] = count.get(request.customer, 0) + 1
    bulk_units = [
        i
        for i, (parts, _s, r) in enumerate(units)
        if parts and r.customer is not None and count[r.customer] == 1
    ]
    in_bulk: dict[int, int] = {}  # unit index -> bulk group number
    groups: list[list[int]] = []
    pregrants: list[object] = []  # per group
    if len(bulk_units) >= 2:
        sizes = [body_bytes(_merged_customer_body(units[i][0])) for i in bulk_units]
        for chunk in bulk_chunks(sizes, max_bulk, max_bytes):
            if len(chunk) < 2:
                continue  # one customer alone (a body near the bound): a single upsert
            pregrant = allow_bulk() if allow_bulk is not None else None
            if allow_bulk is not None and not pregrant:
                break
            members = [bulk_units[k] for k in chunk]
            for i in members:
                in_bulk[i] = len(groups)
            groups.append(members)
            pregrants.append(pregrant)

    out: list[Coalesced] = []
    emitted: set[int] = set()
    for i, (parts, sources, request) in enumerate(units):
        if i in in_bulk:
            group = in_bulk[i]
            if group in emitted:
                continue
            emitted.add(group)
            members = groups[group]
            all_parts = [p for m in members for p in units[m][0]]
            template = OutboundRequest(
                method="POST",
                path=BULK_PATH,
                body=None,
                idempotency_key="",
                action=BULK_ACTION,
                headers={k: v for k, v in request.headers.items() if k.lower() != "idempotency-key"},
            )
            built = build(template, all_parts)
            assert built is not None
            out.append(Coalesced(built, sorted(s for m in members for s in units[m][1]), pregrants[group]))
        elif len(sources) == 1:
            out.append(Coalesced(request, sources))
        else:
            built = build(request, parts)
            assert built is not None
            out.append(Coalesced(built, sources))
    return out


def coalesce_items(
    items: list[DeliveryItem],
    allow_bulk: Callable[[], object] | None = None,
    *,
    max_bulk: int = MAX_BULK,
    max_bytes: int = MAX_BULK_BYTES,
) -> list[DeliveryItem]:
    """A task's items with their requests coalesced: a coalesced item carries the payloads of
    all its events (for dead letters and replays) and all their backlog units, and the replay
    mark when all of them carry it.  A bulk call planned with ``allow_bulk`` (which took its
    budgets) carries its answer as ``pregranted`` (a grant's ``Grant.as_item``, or ``True``)."""
    if len(items) < 2:
        return items
    plan = coalesce(
        [OutboundRequest.from_dict(i["request"]) for i in items],
        max_bulk=max_bulk,
        max_bytes=max_bytes,
        allow_bulk=allow_bulk,
    )
    if len(plan) == len(items):
        return items
    out: list[DeliveryItem] = []
    for merged in plan:
        if len(merged.sources) == 1:
            out.append(items[merged.sources[0]])
            continue
        sources = [items[i] for i in merged.sources]
        times = [float(t) for s in sources if (t := s.get("received_at")) is not None]
        held = [backlog_of(s) for s in sources]
        item = keep_shared(
            new_item(
                merged.request,
                [s.get("payload") for s in sources],
                min(times) if times else None,
                sum(u for u, _ in held),
                sum(b for _, b in held),
                replay=all(s.get("replay") for s in sources),
            ),
            sources,
        )
        if allow_bulk is not None and merged.request.path == BULK_PATH:
            item["pregranted"] = merged.pregrant if isinstance(merged.pregrant, dict) else True
        out.append(item)
    return out
