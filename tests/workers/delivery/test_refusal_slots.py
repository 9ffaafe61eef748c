# ruff: noqa: F811 - pytest fixtures imported from tests.support.delivery
"""Refusals reserve no parking slot nobody uses (issue #19), against a real redis-server.

A budget's denial hands out a parking slot (the hint advances by ``window / limit``) for the
work that parks there.  A try that parks nothing -- bulk or singles (``allow_bulk``), a schema
refresh while a schema is at hand, a refusal's credentials probe -- used to reserve one all the
same: ghosts that fresh work then waited behind, long after the budget had room again.
"""

from __future__ import annotations

import time

import redis

from connector.contract import DESTINATION
from connector.keys import Keys
from tests.support.delivery import FAST, client, keys, make_connection, redis_db_url  # noqa: F401 - fixtures
from workers import targets
from workers.delivery.budgets import Budget, Budgets
from workers.delivery.leases import ahead


def test_tries_that_park_nothing_leave_no_ghosts_ahead_of_fresh_work(client: redis.Redis, keys: Keys) -> None:
    budgets = Budgets(client, keys, "acme")
    minute = Budget(2, 1.0, "api_calls_minute")  # a parking slot every half second
    assert budgets.acquire((minute,)).granted and budgets.acquire((minute,)).granted
    # The budget is spent: 30 tries that would not park at a slot if denied.
    assert not any(budgets.acquire((minute,), parks=False).granted for _ in range(30))
    time.sleep(1.1 + ahead(1.0)[0])  # the window has room again (grants count a little after taken)
    grant = budgets.acquire((minute,))
    assert grant.granted, f"fresh work parked {grant.wait:.1f}s behind slots nobody uses"


def test_allow_bulk_refused_reserves_no_slot_for_single_calls(client: redis.Redis, keys: Keys) -> None:
    connection = make_connection(rate=2, bulk=1000)
    budgets = Budgets(client, keys, connection.id)
    target = targets.bind(
        DESTINATION, connection, client=client, keys=keys, tuning=FAST, budgets=budgets, schema_transport=None
    )
    singles = target.budgets_for(None)
    assert budgets.acquire(singles).granted and budgets.acquire(singles).granted  # the minute is spent
    hint_key = keys.ratelimit(connection.id, "api_calls_minute") + ":hint"
    before = client.get(hint_key)
    refused = [target.pregrant_bulk() for _ in range(30)]  # type: ignore[attr-defined]
    assert refused == [None] * 30
    assert client.get(hint_key) == before  # no parking slot handed out for a refusal nobody parks at
