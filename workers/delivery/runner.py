"""Running a task's items: chains per customer, concurrently; what cannot go now is parked.

Per-customer order: a customer's items form one chain, delivered one after the other through
:func:`workers.delivery.engine.deliver_one`; customers run concurrently (greenlets under
``-P gevent``, threads otherwise).  A parked item takes the rest of its chain with it, so a
later event never overtakes an earlier one of the same customer.  Parked chains go to the
delayed store (one MULTI) -- never a sleep.
"""

from __future__ import annotations

import logging

import redis

from connector.contract import DeliveryItem
from workers.delivery.attempts import Step, StepKind
from workers.delivery.concurrency import run_all
from workers.delivery.context import Context
from workers.delivery.deadletters import INTERNAL_ERROR
from workers.delivery.endings import finish_dead
from workers.delivery.engine import deliver_one
from workers.delivery.store import DelayedStore, Parked
from workers.delivery.suppression import prefetch

log = logging.getLogger("connector.pipeline")

MAX_ITEMS_PER_ENTRY = 500


def chains(items: list[DeliveryItem]) -> list[list[DeliveryItem]]:
    """Items grouped by customer, first-seen order; items without a customer stand alone."""
    by_customer: dict[str, list[DeliveryItem]] = {}
    groups: list[list[DeliveryItem]] = []
    for item in items:
        customer = (item.get("request") or {}).get("customer")
        if customer is None:
            groups.append([item])
            continue
        group = by_customer.get(customer)
        if group is None:
            group = by_customer[customer] = []
            groups.append(group)
        group.append(item)
    return groups


def run(ctx: Context, items: list[DeliveryItem]) -> None:
    if not items:
        return
    prefetch(ctx, items)

    def run_chain(chain: list[DeliveryItem]) -> tuple[Step, list[DeliveryItem]] | None:
        for index, item in enumerate(chain):
            try:
                step = deliver_one(ctx, item)
            except redis.RedisError:
                raise
            except Exception as exc:
                log.exception("delivering an item failed", extra={"connection": ctx.connection_id})
                finish_dead(ctx, item, INTERNAL_ERROR, f"{type(exc).__name__}: {exc}")
                continue
            if step.kind is StepKind.PARKED:
                return step, chain[index:]
        return None

    parked = [p for p in run_all(run_chain, chains(items), ctx.tuning.concurrency) if p is not None]
    park(ctx, parked)


def park(ctx: Context, parked: list[tuple[Step, list[DeliveryItem]]]) -> None:
    """Write parked chains to the delayed store, merged per due second (fewer tasks later).

    A merged entry is due at the LATEST due time of its chains: nothing comes back before the
    time it was given (Retry-After is a floor), at most a second after it.
    """
    if not parked:
        return
    buckets: dict[int, list[tuple[Step, list[DeliveryItem]]]] = {}
    for step, chain in parked:
        for item in chain:
            item["parked"] = True
            item.pop("pregranted", None)  # a planned grant is good for the attempt it was planned for
        buckets.setdefault(int(step.due), []).append((step, chain))
    entries: list[Parked] = []
    for group in buckets.values():
        current: list[DeliveryItem] = []
        due = 0.0
        reason = group[0][0].reason
        for step, chain in group:
            if current and len(current) + len(chain) > MAX_ITEMS_PER_ENTRY:
                entries.append(Parked(ctx.connection_id, ctx.direction, ctx.queue, current, due, reason))
                current, due = [], 0.0
            current.extend(chain)
            due = max(due, step.due)
        if current:
            entries.append(Parked(ctx.connection_id, ctx.direction, ctx.queue, current, due, reason))
    DelayedStore(ctx.client, ctx.keys).add(entries)
