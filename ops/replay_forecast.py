"""What a replay will cost in Voucherify calls and how long the connection's budgets make it take
(SPEC 15 ``--dry-run``, the progress bar's ETA, docs/backfill.md's table).  Pure arithmetic on
the quota table (:mod:`connector.quotas`) and the size of a replay's bulks in the delivery
(:data:`workers.targets.voucherify_coalesce.REPLAY_MAX_BULK` customers and
:data:`workers.delivery.holds.REPLAY_ITEMS_PER_ENTRY` upserts; fewer when their bodies pass
``MAX_BULK_BYTES``, about 9.5 MB: customers of ~2 KB each or more).

The estimate is the coalesced one: every customer's upserts of a replay become one upsert
(the hold merges them when they arrive within the hold window; the stale rule drops older ones
arriving later), a custom event is always its own call.  Upserts go in bulks of
``REPLAY_MAX_BULK`` when the connection may bulk (``rest`` mode, a bulk budget: the older plans
have one, Business and Organization none unless ``bulk_calls_per_hour`` is set), each read back with one
async-action call (an ordinary API call); otherwise one call per customer.  In ``segmentio``
mode every call counts in the daily integration-webhook budget instead.
"""

from __future__ import annotations

import hashlib
import heapq
import math
from dataclasses import dataclass

from connector.config import Connection
from connector.forecast import duration
from connector.quotas import ASSUMED_PLAN, PLANS, QuotaSettings, budget_specs
from workers.delivery.holds import REPLAY_ITEMS_PER_ENTRY
from workers.targets.voucherify_coalesce import REPLAY_MAX_BULK

API_BUDGETS = ("api_calls_minute", "api_calls_hour")


@dataclass(frozen=True)
class Calls:
    single: int  # ordinary API calls: custom events, single upserts, bulk read-backs
    bulk: int  # bulk upserts (their own hourly budget)
    webhook: int = 0  # segmentio mode: integration webhook calls

    @property
    def total(self) -> int:
        return self.single + self.bulk + self.webhook


def calls_for(
    customers: int, custom_events: int, quota: QuotaSettings, mode: str = "rest", upserts: int = 0
) -> Calls:
    """``upserts``: the identify and group events (a bulk also carries at most
    ``REPLAY_ITEMS_PER_ENTRY`` of them: several versions of a customer make bulks smaller)."""
    if mode == "segmentio":
        return Calls(0, 0, customers + custom_events)
    specs = budget_specs(quota)
    bulk_budget = specs.get("bulk_calls_hour")
    if bulk_budget is not None and bulk_budget.limit and customers:
        bulks = max(math.ceil(customers / REPLAY_MAX_BULK), math.ceil(upserts / REPLAY_ITEMS_PER_ENTRY))
        return Calls(custom_events + bulks, bulks)
    return Calls(custom_events + customers, 0)


def seconds_for(calls: Calls, quota: QuotaSettings) -> float | None:
    """How long the connector's share of the budgets takes to make ``calls`` (None: no budget
    bounds it).  The cycle budget is not a rate: :func:`cycles_needed` says when it binds."""
    specs = budget_specs(quota)
    times: list[float] = []

    def need(name: str, count: int) -> None:
        spec = specs.get(name)
        if count and spec is not None and spec.limit:
            times.append(count / spec.limit * spec.window)

    for name in API_BUDGETS:
        need(name, calls.single)
    need("bulk_calls_hour", calls.bulk)
    need("webhook_calls_day", calls.webhook)
    if not times:
        return None
    return max(times)


def cycles_needed(calls: Calls, quota: QuotaSettings) -> int:
    """Billing cycles the ordinary calls span under the connector's share of the cycle budget
    (bulk calls are not added to the cycle; 1 = within the current one)."""
    spec = budget_specs(quota).get("api_calls_cycle")
    if spec is None or not spec.limit or not calls.single:
        return 1
    return math.ceil(calls.single / spec.limit)


def plan_quota(plan: str, share: float = 0.5) -> QuotaSettings:
    limits = PLANS[plan]
    return QuotaSettings(
        plan=plan,
        api_calls_per_minute=limits.get("api_calls_per_minute"),
        api_calls_per_hour=limits.get("api_calls_per_hour"),
        api_calls_per_cycle=limits.get("api_calls_per_cycle"),
        bulk_calls_per_hour=limits.get("bulk_calls_per_hour", 0),
        webhook_calls_per_day=limits.get("webhook_calls_per_day"),
        share=share,
    )


def backfill_table(customers: int = 1_000_000, share: float = 0.5) -> list[dict[str, object]]:
    """Per plan and mode: calls and time for a backfill of ``customers`` (docs/backfill.md)."""
    rows: list[dict[str, object]] = []
    for plan in PLANS:
        if plan == "enterprise":
            continue  # custom limits: whatever the contract says
        quota = plan_quota(plan, share)
        for mode in ("rest", "segmentio"):
            calls = calls_for(customers, 0, quota, mode)
            rows.append(
                {
                    "plan": plan,
                    "mode": mode,
                    "calls": calls.total,
                    "seconds": seconds_for(calls, quota),
                    "cycles": cycles_needed(calls, quota) if mode == "rest" else 1,
                }
            )
    return rows


def human(seconds: float | None) -> str:
    if seconds is None:
        return "unbounded by the budgets"
    return duration(seconds)


def describe(customers: int, custom_events: int, connection: Connection, upserts: int = 0) -> list[str]:
    """The dry run's forecast in words."""
    quota = connection.voucherify.quota
    calls = calls_for(customers, custom_events, quota, connection.voucherify.mode, upserts)
    out = [
        f"Voucherify calls expected: {calls.total:,} for ~{customers:,} customers and "
        f"{custom_events:,} custom events"
        + (
            f" ({calls.bulk:,} bulk upserts of up to {REPLAY_MAX_BULK:,} customers, read back)"
            if calls.bulk
            else ""
        ),
        f"at {int(quota.share * 100)}% of the {quota.plan or ASSUMED_PLAN + ' (assumed)'} plan's budgets: "
        f"about {human(seconds_for(calls, quota))}",
    ]
    cycles = cycles_needed(calls, quota) if connection.voucherify.mode != "segmentio" else 1
    if cycles > 1:
        out.append(
            f"the connector's share of the cycle budget runs out: {cycles} billing cycles "
            "(raise the plan, or the share for the backfill)"
        )
    return out


class DistinctCounter:
    """Distinct customers in constant memory (k minimum values: the ``k`` smallest 64-bit hashes
    seen; exact below ``k``, within a few per cent above)."""

    def __init__(self, k: int = 4096) -> None:
        self.k = k
        self._heap: list[int] = []  # negated: the largest kept on top
        self._kept: set[int] = set()

    def add(self, value: str) -> None:
        h = int.from_bytes(hashlib.blake2b(value.encode(), digest_size=8).digest(), "big")
        if h in self._kept:
            return
        if len(self._heap) < self.k:
            heapq.heappush(self._heap, -h)
            self._kept.add(h)
        elif h < -self._heap[0]:
            dropped = -heapq.heappushpop(self._heap, -h)
            self._kept.discard(dropped)
            self._kept.add(h)

    def count(self) -> int:
        if len(self._heap) < self.k:
            return len(self._heap)
        return int((self.k - 1) / ((-self._heap[0]) / 2**64))
