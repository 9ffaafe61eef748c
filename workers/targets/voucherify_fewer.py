"""Fewer Voucherify calls for the same effect (SPEC 10): what the Voucherify target answers to
the hold (:mod:`workers.delivery.holds`) and to the read-back of bulk calls
(:mod:`workers.delivery.pending`).

- **Hold**: upserts (``POST /v1/customers`` in rest mode -- identify and group -- and
  ``/segmentio/customer-processing`` in segmentio mode) wait ``coalesce_window_seconds``
  (0: no hold, and none of this applies: every request as it comes).
- **Merge**: one customer's held upserts in event-time order (the newest value wins, ``null``
  clears, ``address``/``metadata`` key by key: :mod:`workers.targets.voucherify_coalesce`).
- **Unchanged**: the digest of the last body Voucherify accepted per customer, remembered
  ``unchanged_memory_days`` (0: never skipped).
- **Bulk** (rest only): customers due together go in ``POST /v1/customers/bulk/async`` only
  when the bulk call's budgets grant it now (``pregrant_bulk``); denied: singly.  The 202's
  async action is read back with ``GET /v1/async-actions/{id}``.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

import orjson

from connector import CHANNEL, USER_AGENT
from connector.config import Connection
from connector.contract import DeliveryItem, backlog_of
from connector.keys import Keys
from connector.tuning import Tuning
from workers.delivery.attempts import keep_shared, new_item
from workers.delivery.budgets import Budget, Budgets, Grant
from workers.delivery.holds import Holds, digest
from workers.delivery.pending import ActionState
from workers.delivery.target import Answer, Wait
from workers.delivery.transport import HTTPResult, Transport
from workers.outbound import OutboundRequest
from workers.targets import voucherify_bulksize as bulksize
from workers.targets.voucherify_coalesce import (
    BULK_PATH,
    CUSTOMERS_PATH,
    REPLAY_MAX_BULK,
    _customers_in_order,
    _merged_customer_body,
    build,
    coalesce_items,
    is_upsert,
    part_of,
)

SEGMENTIO_CUSTOMER_PATH = "/segmentio/customer-processing"
ASYNC_ACTIONS_PATH = "/v1/async-actions/"
ACTION_ID_RE = re.compile(r"[A-Za-z0-9_-]{1,100}")
# The per-customer errors read from one action: as many as a bulk has customers (a replay's holds
# up to REPLAY_MAX_BULK; an error not read would count its customer delivered).
MAX_ACTION_ERRORS = REPLAY_MAX_BULK
BULK_BUDGET = "bulk_calls_hour"


class FewerCalls:
    """Mixed into :class:`workers.targets.voucherify.VoucherifyTarget`."""

    connection: Connection
    client: Any
    keys: Keys
    tuning: Tuning
    budgets: Budgets
    schema_transport: Transport | None
    base_url: str

    if TYPE_CHECKING:  # the target's own (declared here for the type checker only)

        def budgets_for(self, request: OutboundRequest | None) -> tuple[Budget, ...]: ...

        def auth_headers(self) -> dict[str, str]: ...

    # --- the hold ---------------------------------------------------------------------------

    def hold_window(self) -> float:
        return float(self.connection.voucherify.quota.coalesce_window_seconds)

    def unchanged_days(self) -> int:
        return int(self.connection.voucherify.quota.unchanged_memory_days)

    def holdable(self, request: OutboundRequest) -> bool:
        if self.connection.voucherify.mode == "rest":
            return is_upsert(request)
        return (
            request.method == "POST"
            and request.path == SEGMENTIO_CUSTOMER_PATH
            and isinstance(request.customer, str)
            and isinstance(request.body, dict)
            and not request.parts
        )

    def merged_body(self, requests: list[OutboundRequest]) -> Any | None:
        if not requests:
            return None
        return _merged_customer_body([part_of(r) for r in requests])

    def coalesce_held(
        self, items: list[DeliveryItem], bulk: bool
    ) -> tuple[list[DeliveryItem], list[DeliveryItem], float]:
        if self.connection.voucherify.mode != "rest":
            return merge_per_customer(items), [], 0.0
        allow = self.pregrant_bulk if bulk else (lambda: None)
        # A backfill's customers (every held upsert of theirs replayed) in bulks as large as
        # Voucherify takes; the others -- a live identify among theirs too -- in bulks of 100.
        replayed, live = split_replayed(items) if bulk else ([], items)
        out = coalesce_items(live, allow_bulk=allow) if live else []
        if not replayed:
            return out, [], 0.0
        denied: list[float] = []

        def allow_replay() -> dict[str, Any] | None:
            grant = self.bulk_grant()
            if grant is not None and not grant.granted:
                denied.append(grant.wait)
            return grant.as_item() if grant is not None and grant.granted else None

        cap = bulksize.replay_cap(self.client, self.keys, self.connection.id)
        planned = coalesce_items(replayed, allow_bulk=allow_replay, max_bulk=cap)
        if not denied:
            return out + planned, [], 0.0
        # The bulk budget is spent for now: the customers not in a bulk wait for it, held --
        # as singles they would spend a call each of the ordinary budget (SPEC 15's 0.02).
        bulks = [i for i in planned if (i.get("request") or {}).get("path") == BULK_PATH]
        in_bulk = {p.get("customer") for i in bulks for p in (i.get("request") or {}).get("parts") or ()}
        later = [i for i in replayed if (i.get("request") or {}).get("customer") not in in_bulk]
        return out + bulks, later, min(max(1.0, denied[0]), 3600.0)

    def fit(self, items: list[DeliveryItem]) -> list[DeliveryItem]:
        return bulksize.split(self.client, self.keys, self.connection.id, items)

    def refused_for_size(self, answer: Answer, item: DeliveryItem) -> Wait | None:
        return bulksize.refused_for_size(self.client, self.keys, self.connection.id, answer, item)

    def pregrant_bulk(self) -> dict[str, Any] | None:
        """One bulk call's budgets, taken now (the grant, as the planned item carries it), or
        None: bulk not possible now (singles)."""
        grant = self.bulk_grant()
        return grant.as_item() if grant is not None and grant.granted else None

    def bulk_budgets(self) -> tuple[Budget, ...] | None:
        """A bulk call's budgets; None: the plan has no bulk API, or bulk_calls_per_hour = 0."""
        template = OutboundRequest(
            method="POST", path=BULK_PATH, body=None, idempotency_key="", action="upsert_customers_bulk"
        )
        budgets = self.budgets_for(template)
        return budgets if any(b.name == BULK_BUDGET and b.limit for b in budgets) else None

    def bulk_possible(self) -> bool:
        return self.connection.voucherify.mode == "rest" and self.bulk_budgets() is not None

    def bulk_grant(self) -> Grant | None:
        """One bulk call's budgets asked for now; None: the connection has no bulk budget."""
        budgets = self.bulk_budgets()
        if budgets is None:
            return None
        # A refusal here parks nothing (singles, or a replay's wait): no slot reserved, and the
        # parking queue's hint is not ours to wait on.
        return self.budgets.acquire(budgets, parks=False)

    # --- after a success --------------------------------------------------------------------

    def applied(self, requests: list[OutboundRequest]) -> None:
        days = self.unchanged_days()
        if days <= 0 or self.hold_window() <= 0:
            return
        digests: dict[str, str] = {}
        for request in requests:
            if request.customer and isinstance(request.body, dict) and _is_customer_upsert(request):
                digests[request.customer] = digest(request.body)
        Holds(self.client, self.keys, self.connection.id).remember(digests, days)

    def may_queue(self, request: OutboundRequest) -> bool:
        return request.path == BULK_PATH

    def queued_as(self, request: OutboundRequest, answer: HTTPResult) -> str | None:
        """A bulk call's async action id; ``""`` when its 202 names none we can read back (the
        customers are then sent singly: a queued bulk is never counted delivered unread)."""
        if request.path != BULK_PATH or answer.status != 202:
            return None
        try:
            body = orjson.loads(answer.body)
        except orjson.JSONDecodeError:
            return ""
        action = body.get("async_action_id") if isinstance(body, dict) else None
        # It goes into the poll's URL: only what an id looks like.
        return action if isinstance(action, str) and ACTION_ID_RE.fullmatch(action) else ""

    # --- reading an async action back -------------------------------------------------------

    def poll_request(self, action_id: str) -> OutboundRequest:
        return OutboundRequest(
            method="GET",
            path=ASYNC_ACTIONS_PATH + action_id,
            body=None,
            idempotency_key="",
            action="read_async",
        )

    def read_action(self, action_id: str) -> tuple[Answer, ActionState | None]:
        from connector.errors import TransportFailure

        assert self.schema_transport is not None  # reads whole bodies (errors of 100 customers)
        headers = {"User-Agent": USER_AGENT, "X-Voucherify-Channel": CHANNEL, **self.auth_headers()}
        timeouts = (self.tuning.connect_timeout, self.tuning.read_timeout)
        try:
            answer: Answer = self.schema_transport.send(
                "GET", self.base_url + ASYNC_ACTIONS_PATH + action_id, headers, None, timeouts
            )
        except TransportFailure as exc:
            return exc, None
        if not isinstance(answer, HTTPResult) or answer.status != 200:
            return answer, None
        return answer, read_state(answer.body)

    def per_customer(self, request: OutboundRequest) -> list[OutboundRequest]:
        template = OutboundRequest(
            method="POST",
            path=CUSTOMERS_PATH,
            body=None,
            idempotency_key="",
            action="upsert_customer",
            headers={k: v for k, v in request.headers.items() if k.lower() != "idempotency-key"},
        )
        out = []
        for parts in _customers_in_order(list(request.parts or ())):
            single = build(template, parts)
            if single is not None:
                out.append(single)
        return out


def split_replayed(items: list[DeliveryItem]) -> tuple[list[DeliveryItem], list[DeliveryItem]]:
    """(items of customers whose every item is replayed, the others): two sets of customers,
    each customer's items in their order."""
    live_customers = {(i.get("request") or {}).get("customer") for i in items if not i.get("replay")}
    replayed = [i for i in items if (i.get("request") or {}).get("customer") not in live_customers]
    if len(replayed) == len(items):
        return items, []
    return replayed, [i for i in items if (i.get("request") or {}).get("customer") in live_customers]


def _is_customer_upsert(request: OutboundRequest) -> bool:
    return request.method == "POST" and request.path in (CUSTOMERS_PATH, SEGMENTIO_CUSTOMER_PATH)


def _with_key(headers: Mapping[str, str], key: str) -> dict[str, str]:
    """``headers`` with the merged call's key, if the originals carried one."""
    out = dict(headers)
    for name in headers:
        if name.lower() == "idempotency-key":
            out[name] = key
    return out


def read_state(text: str) -> ActionState | None:
    """Voucherify's async action (``GET /v1/async-actions/{id}``) as an :class:`ActionState`."""
    try:
        body = orjson.loads(text)
    except orjson.JSONDecodeError:
        return None
    if not isinstance(body, dict):
        return None
    status = str(body.get("status") or "UNKNOWN").upper()
    errors: dict[str, str] = {}
    result = body.get("result")
    if isinstance(result, Mapping):
        listed = result.get("errors")
        for error in listed[:MAX_ACTION_ERRORS] if isinstance(listed, list) else ():
            if isinstance(error, Mapping) and error.get("source_id") is not None:
                reason = f"{error.get('key') or 'error'}: {error.get('message') or ''}".strip()
                if error.get("details"):
                    reason += f" ({error['details']})"
                errors[str(error["source_id"])] = reason[:500]
    return ActionState(status=status, finished=status in ("DONE", "FAILED"), errors=errors)


def merge_per_customer(items: list[DeliveryItem]) -> list[DeliveryItem]:
    """segmentio mode: each customer's held calls as one (no bulk there); a customer whose
    calls cannot be said in one body keeps them as they are."""
    by_customer: dict[str, list[DeliveryItem]] = {}
    order: list[str] = []
    for item in items:
        customer = str((item.get("request") or {}).get("customer"))
        if customer not in by_customer:
            by_customer[customer] = []
            order.append(customer)
        by_customer[customer].append(item)
    out: list[DeliveryItem] = []
    for customer in order:
        mine = by_customer[customer]
        if len(mine) == 1:
            out.append(mine[0])
            continue
        requests = [OutboundRequest.from_dict(i["request"]) for i in mine]
        parts = [part_of(r) for r in requests]
        body = _merged_customer_body(parts)
        if body is None:
            out.extend(mine)
            continue
        first = requests[0]
        one = build(first, parts)
        assert one is not None
        merged = OutboundRequest(
            method=first.method,
            path=first.path,  # build() speaks rest; segmentio keeps its own path
            body=body,
            idempotency_key=one.idempotency_key,
            action=first.action,
            headers=_with_key(first.headers, one.idempotency_key),
            customer=customer,
            event_time=one.event_time,
            message_id=one.message_id,
            parts=one.parts,
        )
        times = [float(t) for i in mine if (t := i.get("received_at")) is not None]
        held = [backlog_of(i) for i in mine]
        out.append(
            keep_shared(
                new_item(
                    merged,
                    [i.get("payload") for i in mine],
                    min(times) if times else None,
                    sum(u for u, _ in held),
                    sum(b for _, b in held),
                ),
                mine,
            )
        )
    return out
