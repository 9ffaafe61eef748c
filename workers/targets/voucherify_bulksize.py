"""How big a Voucherify bulk may be, learned per connection (SPEC 10 and 15).

Voucherify documents one limit for ``POST /v1/customers/bulk/async``: "The request can include
up to 10 MB of data".  Live traffic keeps bulks of at most ``MAX_BULK`` (100) customers; a
backfill's bulks (items from ``connector replay``) go up to ``REPLAY_MAX_BULK`` customers and
``MAX_BULK_BYTES`` of body (:mod:`workers.targets.voucherify_coalesce`).

Should a project's Voucherify refuse such a bulk for its size (a 413, or a 400 whose message is
about the request's size or its number of customers), nothing is dead-lettered: the refusal is
remembered for the connection -- ``{p}quota:{c}:bulk_max`` = 100 for a day, learned as the
quota headers are --, the refused bulk waits a moment, and when it comes back (:func:`split`,
before the run) it goes as bulks of the learned size, as does every later bulk of the
connection until the day is over.
"""

from __future__ import annotations

import logging
import re
from typing import Any

from connector.contract import DeliveryItem, backlog_of
from connector.keys import Keys
from workers.delivery.attempts import keep_shared, new_item
from workers.delivery.target import Answer, Wait
from workers.delivery.transport import HTTPResult
from workers.outbound import OutboundRequest
from workers.targets.voucherify_coalesce import (
    BULK_PATH,
    MAX_BULK,
    MAX_BULK_BYTES,
    REPLAY_MAX_BULK,
    _customers_in_order,
    body_bytes,
    build,
    bulk_chunks,
)

log = logging.getLogger("connector.delivery")

LEARNED_SECONDS = 86_400  # a learned smaller bulk size holds this long
SPLIT_REASON = "bulk_too_large"  # the refused bulk's wait (its trace says why)
SPLIT_WAIT_SECONDS = 0.5
# A whole bulk refused for its size or its count (not for one customer's data).
_SIZE_WORDS = re.compile(
    r"too many|at most \d+|(request|payload|body|content|entity)[^.]{0,40}"
    r"(too large|too big|exceed|greater than|maximum)|10 ?mb",
    re.IGNORECASE,
)


def learned_key(keys: Keys, connection_id: str) -> str:
    return keys.bulk_max(connection_id)


def replay_cap(client: Any, keys: Keys, connection_id: str) -> int:
    """The largest bulk a replay may send on the connection now (its learned size, if any)."""
    raw = client.get(learned_key(keys, connection_id)) if client is not None else None
    try:
        learned = int(raw) if raw is not None else 0
    except ValueError:
        learned = 0
    return min(REPLAY_MAX_BULK, learned) if learned > 0 else REPLAY_MAX_BULK


def customers_in(item: DeliveryItem) -> int:
    request = item.get("request") or {}
    body = request.get("body")
    return len(body) if request.get("path") == BULK_PATH and isinstance(body, list) else 0


def is_size_refusal(answer: Answer) -> bool:
    if not isinstance(answer, HTTPResult):
        return False
    if answer.status == 413:
        return True
    return answer.status == 400 and bool(_SIZE_WORDS.search(answer.body[:2000]))


def refused_for_size(
    client: Any, keys: Keys, connection_id: str, answer: Answer, item: DeliveryItem
) -> Wait | None:
    """A bulk of more than ``MAX_BULK`` customers refused for its size: the smaller size learned,
    the bulk parked a moment (:func:`split` cuts it when it is back); else None."""
    count = customers_in(item)
    if count <= MAX_BULK or not is_size_refusal(answer):
        return None
    assert isinstance(answer, HTTPResult)
    client.set(learned_key(keys, connection_id), MAX_BULK, ex=LEARNED_SECONDS)
    log.warning(
        "Voucherify refused a bulk of %d customers for its size: bulks of %d for a day",
        count,
        MAX_BULK,
        extra={"connection": connection_id, "status": answer.status},
    )
    return Wait(SPLIT_REASON, SPLIT_WAIT_SECONDS)


def split(client: Any, keys: Keys, connection_id: str, items: list[DeliveryItem]) -> list[DeliveryItem]:
    """``items`` with every bulk over the connection's learned size cut into bulks of that size
    (Redis is read only when a bulk is over the live size)."""
    if not any(customers_in(i) > MAX_BULK for i in items):
        return items
    cap = replay_cap(client, keys, connection_id)
    out: list[DeliveryItem] = []
    for item in items:
        out.extend(split_item(item, cap) if customers_in(item) > cap else [item])
    return out


def split_item(item: DeliveryItem, cap: int, max_bytes: int = MAX_BULK_BYTES) -> list[DeliveryItem]:
    """One bulk item as bulks of at most ``cap`` customers: each with its customers' parts and
    events, the attempts so far; the backlog rides on the first."""
    request = OutboundRequest.from_dict(item["request"])
    by_customer = _customers_in_order(list(request.parts or ()))
    if not by_customer:
        return [item]
    bodies = request.body if isinstance(request.body, list) else []
    sizes = [body_bytes(b) for b in bodies] if len(bodies) == len(by_customer) else [0] * len(by_customer)
    template = OutboundRequest(
        method="POST",
        path=BULK_PATH,
        body=None,
        idempotency_key="",
        action=request.action,
        headers={k: v for k, v in request.headers.items() if k.lower() != "idempotency-key"},
    )
    payload = item.get("payload")
    events = payload if isinstance(payload, list) else [payload]
    units, stored = backlog_of(item)
    out: list[DeliveryItem] = []
    for run in bulk_chunks(sizes, cap, max_bytes):
        parts = [p for k in run for p in by_customer[k]]
        built = build(template, parts)
        if built is None:  # pragma: no cover - parts that merged once merge again
            return [item]
        ids = {p.get("message_id") for p in parts}
        mine = [e for e in events if isinstance(e, dict) and e.get("messageId") in ids]
        first = not out
        sub = new_item(
            built,
            mine,
            item.get("received_at"),
            units if first else 0,
            stored if first else 0,
            replay=bool(item.get("replay")),
        )
        sub["first_attempt_at"] = item.get("first_attempt_at")
        sub["attempts"] = int(item.get("attempts") or 0)
        sub["history"] = list(item.get("history") or [])
        out.append(keep_shared(sub, [item]))
    return out
