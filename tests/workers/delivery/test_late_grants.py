# ruff: noqa: F811 - pytest fixtures imported from tests.support.delivery
"""A grant is counted a little after it may reach the server, and a call that could not go on
the wire by then never goes with it (module ``workers.delivery.leases``).

Measured before: three loaded workers sharing a budget of 120 a window put 122 calls in one
window of the server's clock -- grants taken, then sent late, in a window they were not counted
in.  Here: a grant's counter and deadline, a late grant handed back (its count and its credit),
and the engine asking again after a stall, for a call granted now and for a planned bulk's.
"""

from __future__ import annotations

import dataclasses
import time
from typing import Any

import pytest
import redis

from connector.config import Connection, Settings
from connector.contract import DESTINATION
from connector.keys import Keys
from tests.support.delivery import (  # noqa: F401 - fixtures
    FakeTransport,
    client,
    connection,
    keys,
    make_connection,
    redis_db_url,
    request,
    rt,
    transport,
)
from workers.delivery import budgets as budgets_module
from workers.delivery import engine
from workers.delivery.attempts import new_item
from workers.delivery.budgets import Budget, Budgets, GrantPools
from workers.delivery.leases import Grant, Lease, ahead
from workers.runtime import Runtime, context_for

MINUTE = Budget(1000, 60.0, "api_calls_minute")


def counted(
    client: redis.Redis, keys: Keys, name: str = "api_calls_minute", conn: str = "acme"
) -> dict[int, int]:
    raw = client.hgetall(keys.ratelimit(conn, name) + ":n")
    return {int(f): int(v) for f, v in raw.items() if int(v)}


def test_a_grant_is_counted_after_the_last_moment_it_may_go(client: redis.Redis, keys: Keys) -> None:
    b = Budgets(client, keys, "acme")
    before, redis_before = time.time(), redis_ms(client)
    grant = b.acquire((MINUTE,))
    after, redis_after = time.time(), redis_ms(client)
    count_at, send_within = ahead(MINUTE.window)
    assert (count_at, send_within) == (0.75, 0.5)
    assert before + send_within <= grant.send_by <= after + send_within
    # Counted in the granule of (Redis's now + 0.75 s): later than the grant's deadline.
    granule_ms = int(MINUTE.granule * 1000)
    [field] = counted(client, keys)
    assert (redis_before + 750) // granule_ms <= field <= (redis_after + 750) // granule_ms
    assert grant.fields == (str(next(iter(counted(client, keys)))),)
    assert not grant.late()
    assert dataclasses.replace(grant, send_by=time.time() - 0.01).late()


def test_a_tiny_window_is_counted_ahead_by_a_part_of_it_only() -> None:
    # A window of a second (tests, a fast clock): 0.75 s ahead would hold most of it.
    assert ahead(1.0) == (0.125, pytest.approx(0.125 * 2 / 3))
    assert ahead(3600.0) == (0.75, 0.5)


def test_leased_grants_go_by_their_leases_deadline(client: redis.Redis, keys: Keys) -> None:
    b = Budgets(client, keys, "acme", GrantPools())
    grants = [b.acquire((MINUTE,)) for _ in range(8)]  # the lease grows with use
    assert all(g.granted for g in grants)
    lease_seconds = min(budgets_module.LEASE_SECONDS, MINUTE.granule)
    assert all(g.send_by <= time.time() + lease_seconds + 0.5 for g in grants)


def test_a_late_grant_handed_back_is_refunded_with_the_next_round_trip(
    client: redis.Redis, keys: Keys
) -> None:
    b = Budgets(client, keys, "acme", GrantPools())
    late = b.acquire((MINUTE,))
    assert sum(counted(client, keys).values()) == 1
    b.hand_back((MINUTE,), dataclasses.replace(late, send_by=time.time() - 0.01))
    fresh = b.acquire((MINUTE,))  # the refund goes with this round trip
    assert fresh.granted and sum(counted(client, keys).values()) == 1
    # Without a pool (a tool's Budgets) a late grant stays counted: never too few.
    single = Budgets(client, keys, "acme")
    single.hand_back((MINUTE,), single.acquire((MINUTE,)))
    assert sum(counted(client, keys).values()) == 2


def test_a_late_live_grant_is_credit_again(client: redis.Redis, keys: Keys) -> None:
    # A live budget (credit from the headers): a grant handed back never reached the server.
    from tests.workers.delivery.test_quota_budgets import answer, live_budget

    pools = GrantPools()
    b = Budgets(client, keys, "acme", pools)
    budget = live_budget(limit=10)  # small: a call at a time, no leases
    first = b.acquire((budget,))
    b.apply((budget,), answer(3.0, time.time() + 60), slowdown_seconds=1.0, grant=first)
    late = b.acquire((budget,))
    b.hand_back((budget,), dataclasses.replace(late, send_by=time.time() - 0.01))
    sent = [b.acquire((budget,)).granted for _ in range(5)]
    assert sent == [True, True, True, False, False]  # the credit of 3, the late grant's back


def test_an_expired_lease_waits_for_the_next_round_trip_while_another_serves() -> None:
    # A live lease serving a grant locally took the expired one out of the pool: its leftovers
    # were never handed back (the budget counted grants nobody could use).
    pools = GrantPools()
    key = ("acme", ("api_calls_minute",))
    pools.add(key, Lease(4, time.monotonic() - 1.0, ["100"], (1,), (), (10,)))
    pools.add(key, Lease(2, time.monotonic() + 60.0, ["101"], (11,), (), (12,)))
    grant, expired, _ = pools.take(key, True)
    assert grant is not None and grant.granted and expired is None
    grant, expired, _ = pools.take(key, True)
    assert grant is not None and expired is None
    grant, expired, _ = pools.take(key, True)  # the live lease spent: a round trip, with the refund
    assert grant is None and expired is not None and (expired.count, expired.fields) == (4, ["100"])


def redis_ms(client: redis.Redis) -> int:
    sec, usec = client.time()
    return int(sec) * 1000 + int(usec) // 1000


def rated(rt: Runtime) -> Connection:
    """The runtime's connection with a budget of 50 calls a minute (too small to lease)."""
    conn = make_connection(rate=50)
    rt.settings = Settings(redis_url=rt.settings.redis_url, connections=(conn,), _by_id={conn.id: conn})
    return conn


def _acquires(monkeypatch: pytest.MonkeyPatch, stall: float = 0.0) -> list[bool]:
    """Every grant asked for (granted or not); ``stall``: the process stalls that long after
    the first round trip (a loaded machine ran nothing of it meanwhile)."""
    taken: list[bool] = []
    real = Budgets.acquire

    def spy(self: Budgets, *args: Any, **kwargs: Any) -> Any:
        grant = real(self, *args, **kwargs)
        taken.append(grant.granted)
        if len(taken) == 1:
            time.sleep(stall)
        return grant

    monkeypatch.setattr(Budgets, "acquire", spy)
    return taken


def test_a_call_stalled_past_its_grants_deadline_asks_again(
    rt: Runtime, transport: FakeTransport, client: redis.Redis, keys: Keys, monkeypatch: pytest.MonkeyPatch
) -> None:
    ctx = context_for(rt, rated(rt), DESTINATION)
    taken = _acquires(monkeypatch, stall=ahead(60.0)[1] + 0.1)
    step = engine.deliver_one(ctx, new_item(request("m1"), {}, time.time(), 1))
    assert step.reason == "delivered" and len(transport.calls) == 1
    # Granted, late by the wire, granted again (again if the machine stalled once more).
    assert taken[:2] == [True, True] and all(taken)
    assert sum(counted(client, keys).values()) == 1  # the late one handed back with the second


def test_a_planned_calls_grant_goes_if_on_time_else_is_asked_again(
    rt: Runtime, transport: FakeTransport, client: redis.Redis, keys: Keys, monkeypatch: pytest.MonkeyPatch
) -> None:
    ctx = context_for(rt, rated(rt), DESTINATION)
    taken = _acquires(monkeypatch)
    budgets = ctx.target.budgets_for(request("m1"))
    on_time = dataclasses.replace(ctx.budgets.acquire(budgets), send_by=time.time() + 60)
    item = new_item(request("m1"), {}, time.time(), 1)
    item["pregranted"] = on_time.as_item()
    assert engine.deliver_one(ctx, item).reason == "delivered"
    assert taken == [True]  # the planned grant went: no other asked for
    late = ctx.budgets.acquire(budgets)
    item = new_item(request("m2"), {}, time.time(), 1)
    item["pregranted"] = dataclasses.replace(late, send_by=time.time() - 0.01).as_item()
    assert engine.deliver_one(ctx, item).reason == "delivered"
    assert taken[:3] == [True, True, True] and all(taken)  # ...the late one handed back, asked again
    assert len(transport.calls) == 2 and sum(counted(client, keys).values()) == 2


def test_a_call_answered_after_its_granule_ended_is_counted_again_later(
    client: redis.Redis, keys: Keys
) -> None:
    # It reached the server at some moment before its answer, maybe after the granule it was
    # counted in: counted in the answer's granule now, it stays in the window as long as the
    # server's count of it (seen: answers taking 1.5 s, and 141 calls in a window of 120).
    b = Budgets(client, keys, "acme")
    budget = Budget(100, 3.0, "api_calls_minute")  # granules of 0.1 s
    gran_ms = int(budget.granule * 1000)
    grant = b.acquire((budget,))
    [before] = counted(client, keys)
    b.answered((budget,), grant)  # answered at once: nothing moves (and no round trip)
    assert counted(client, keys) == {before: 1}
    time.sleep(max(0.0, grant.count_ends - time.time()) + 0.25)
    answered_from = redis_ms(client) // gran_ms
    b.answered((budget,), grant)
    [after] = counted(client, keys)
    assert after > before and answered_from <= after <= redis_ms(client) // gran_ms
    assert counted(client, keys) == {after: 1}


def test_recounting_never_moves_a_count_earlier_and_restores_one_already_gone(
    client: redis.Redis, keys: Keys
) -> None:
    from workers.delivery.budgets import _RECOUNT

    name = keys.ratelimit("acme", "api_calls_minute") + ":n"
    now_granule = redis_ms(client) // 100
    client.hset(name, mapping={str(now_granule + 50): 2})
    assert _RECOUNT(client, [name], [str(now_granule + 50), 100, 3000]) == 0  # counted ahead: stays
    # Counted in a granule pruned since (it left the window): counted again, nothing taken.
    assert _RECOUNT(client, [name], [str(now_granule - 50), 100, 3000]) == 1
    values = {int(f): int(v) for f, v in client.hgetall(name).items()}
    assert values[now_granule + 50] == 2 and sum(values.values()) == 3
    assert 0 < client.pttl(name) <= 4100  # kept a window (and a granule and a second) from now


def test_a_planned_call_answered_after_its_granule_is_counted_again(
    rt: Runtime, transport: FakeTransport, client: redis.Redis, keys: Keys
) -> None:
    ctx = context_for(rt, rated(rt), DESTINATION)
    budgets = ctx.target.budgets_for(request("m1"))
    grant = ctx.budgets.acquire(budgets)
    [granule] = counted(client, keys)
    # As if it had been granted three granules (6 s) ago and were still on its way.
    name = keys.ratelimit("acme", "api_calls_minute") + ":n"
    client.hdel(name, str(granule))
    client.hset(name, str(granule - 3), 1)
    planned = dataclasses.replace(grant, fields=(str(granule - 3),), count_ends=time.time() - 0.01)
    item = new_item(request("m1"), {}, time.time(), 1)
    item["pregranted"] = planned.as_item()
    assert engine.deliver_one(ctx, item).reason == "delivered"
    [after] = counted(client, keys)
    assert counted(client, keys) == {after: 1} and after >= granule - 1


def test_a_planned_grant_that_cannot_be_read_is_asked_for_again() -> None:
    assert Grant.from_item(None) is None
    assert Grant.from_item({"seqs": ["x"], "fields": ["1"]}) is None  # hostile or damaged
    assert Grant.from_item({"fields": ["1"], "send_by": "soon"}) == Grant(True, 0.0, fields=("1",))
    older = Grant.from_item(True)  # a plan that kept no numbers: granted, its time unknown
    assert older is not None and older.granted and not older.late()
    planned = Grant(True, 0.0, seqs=(3,), fields=("9",), send_by=1.5, count_ends=2.5)
    assert Grant.from_item(planned.as_item()) == dataclasses.replace(planned, at_ms=0)


def test_a_parked_chain_keeps_no_planned_grant(rt: Runtime, transport: FakeTransport) -> None:
    # A grant planned for an item that parks before its attempt (behind its customer's
    # earlier item) is not carried to Redis: back from the delayed store, it asks again.
    from workers.delivery.attempts import Step
    from workers.delivery.runner import park
    from workers.delivery.store import DelayedStore

    ctx = context_for(rt, rated(rt), DESTINATION)
    first, second = (new_item(request(m), {}, time.time(), 1) for m in ("m1", "m2"))
    second["pregranted"] = Grant(True, 0.0, fields=("1",), send_by=time.time() + 60).as_item()
    park(ctx, [(Step.parked("busy", time.time() + 5), [first, second])])
    [entry] = DelayedStore(rt.redis, rt.keys).claim_due(now=time.time() + 10)
    assert [i.get("pregranted") for i in entry.items] == [None, None]
