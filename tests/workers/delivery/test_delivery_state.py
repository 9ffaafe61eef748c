# ruff: noqa: F811 - pytest fixtures imported from tests.support.delivery
"""Redis state of the delivery machinery: ledger, delayed store, rate limiter, stale guard, backlog."""

from __future__ import annotations

import dataclasses
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import pytest
import redis

from connector import backlog
from connector.keys import Keys
from connector.quotas import QuotaSettings
from connector.tuning import Tuning
from tests.support.delivery import client, keys, make_connection, redis_db_url, request  # noqa: F401 - fixtures
from workers.delivery.budgets import Budget, Budgets, RateLimiter
from workers.delivery.leases import ahead
from workers.delivery.ledger import ClaimState, Ledger
from workers.delivery.stale import StaleGuard, event_time_ms
from workers.delivery.store import DelayedStore, Parked
from workers.delivery.transport import HTTPResult
from workers.targets.voucherify import VoucherifyTarget

# --- ledger -------------------------------------------------------------------------------------


def test_ledger_claim_then_duplicate_after_complete(client: redis.Redis, keys: Keys) -> None:
    ledger = Ledger(client, keys, "acme")
    assert ledger.claim("k1", "t1", 10).state is ClaimState.CLAIMED
    ledger.complete("k1", keep=100)
    assert ledger.claim("k1", "t2", 10).state is ClaimState.DUPLICATE
    assert ledger.is_done("k1")
    assert 90 < client.ttl(keys.ledger("acme", "k1")) <= 100


def test_ledger_busy_while_another_attempt_is_in_flight(client: redis.Redis, keys: Keys) -> None:
    ledger = Ledger(client, keys, "acme")
    assert ledger.claim("k1", "t1", 5).state is ClaimState.CLAIMED
    busy = ledger.claim("k1", "t2", 5)
    assert busy.state is ClaimState.BUSY
    assert 4.0 < busy.wait <= 5.0
    # The owner may claim again (a retry of the same attempt) without being called busy.
    assert ledger.claim("k1", "t1", 5).state is ClaimState.CLAIMED


def test_ledger_claim_expires_when_the_worker_dies(client: redis.Redis, keys: Keys) -> None:
    ledger = Ledger(client, keys, "acme")
    assert ledger.claim("k1", "t1", 0.2).state is ClaimState.CLAIMED
    time.sleep(0.3)
    assert ledger.claim("k1", "t2", 5).state is ClaimState.CLAIMED


def test_ledger_release_only_by_owner(client: redis.Redis, keys: Keys) -> None:
    ledger = Ledger(client, keys, "acme")
    ledger.claim("k1", "t1", 5)
    ledger.release("k1", "someone-else")
    assert ledger.claim("k1", "t2", 5).state is ClaimState.BUSY
    ledger.release("k1", "t1")
    assert ledger.claim("k1", "t2", 5).state is ClaimState.CLAIMED


def test_ledger_keys_are_per_connection(client: redis.Redis, keys: Keys) -> None:
    Ledger(client, keys, "a").claim("k", "t", 5)
    Ledger(client, keys, "a").complete("k", 100)
    assert Ledger(client, keys, "b").claim("k", "t", 5).state is ClaimState.CLAIMED


def test_ledger_concurrent_claims_have_one_winner(client: redis.Redis, keys: Keys) -> None:
    ledger = Ledger(client, keys, "acme")
    with ThreadPoolExecutor(16) as pool:
        states = list(pool.map(lambda i: ledger.claim("k", f"t{i}", 5).state, range(64)))
    assert states.count(ClaimState.CLAIMED) == 1


# --- delayed store ------------------------------------------------------------------------------


def _entry(n: int, due: float) -> Parked:
    return Parked("acme", "segment_to_voucherify", "voucherify.eu", [{"n": n}], due)


def test_store_returns_only_due_entries_in_due_order(client: redis.Redis, keys: Keys) -> None:
    store = DelayedStore(client, keys)
    now = 1_000_000.0
    store.add([_entry(3, now - 1), _entry(1, now - 30), _entry(9, now + 60), _entry(2, now - 10)])
    claimed = store.claim_due(now=now, limit=10, lease=30)
    assert [e.items[0]["n"] for e in claimed] == [1, 2, 3]
    assert claimed[0].queue == "voucherify.eu" and claimed[0].connection_id == "acme"
    assert store.size() == 4  # claimed entries stay (leased) until acked


def test_store_lease_makes_unacked_entries_due_again(client: redis.Redis, keys: Keys) -> None:
    store = DelayedStore(client, keys)
    now = 1_000_000.0
    store.add([_entry(1, now - 1)])
    first = store.claim_due(now=now, lease=30)
    assert len(first) == 1
    assert store.claim_due(now=now + 10, lease=30) == []  # leased: invisible to other schedulers
    again = store.claim_due(now=now + 31, lease=30)  # the publisher died before acking
    assert [e.id for e in again] == [first[0].id]
    store.ack([again[0].id])
    assert store.size() == 0
    assert client.hlen(keys.delayed_data) == 0


def test_store_claim_is_atomic_under_concurrency(client: redis.Redis, keys: Keys, redis_db_url: str) -> None:
    store = DelayedStore(client, keys)
    now = time.time()
    store.add([_entry(i, now - 1) for i in range(500)])
    seen: list[int] = []
    lock = threading.Lock()

    def worker() -> None:
        mine = DelayedStore(redis.Redis.from_url(redis_db_url), keys)
        while True:
            got = mine.claim_due(now=now, limit=7, lease=300)
            if not got:
                return
            with lock:
                seen.extend(e.items[0]["n"] for e in got)
            mine.ack([e.id for e in got])

    threads = [threading.Thread(target=worker) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(seen) == list(range(500))  # every entry once, none twice
    assert store.size() == 0


def test_store_next_due_and_get(client: redis.Redis, keys: Keys) -> None:
    store = DelayedStore(client, keys)
    assert store.next_due() is None
    [entry_id] = store.add([_entry(1, 1234.5)])
    assert store.next_due() == 1234.5
    got = store.get(entry_id)
    assert got is not None and got.items == [{"n": 1}]


# --- rate limiter -------------------------------------------------------------------------------


def test_rate_limiter_never_exceeds_budget_with_many_threads(client: redis.Redis, keys: Keys) -> None:
    budget = Budget(limit=20, window=0.5)
    grants: list[int] = []
    lock = threading.Lock()
    stop = time.monotonic() + 1.6

    def worker() -> None:
        limiter = RateLimiter(client, keys, "acme", "voucherify")
        while time.monotonic() < stop:
            grant = limiter.acquire(budget, has_slot=True)
            if grant.granted:
                with lock:
                    grants.append(grant.at_ms)
            else:
                time.sleep(min(grant.wait, 0.01))

    threads = [threading.Thread(target=worker) for _ in range(16)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    grants.sort()
    assert len(grants) >= 40  # the budget is used, not starved
    window_ms = 500
    for i, start in enumerate(grants):
        inside = sum(1 for g in grants[i:] if g < start + window_ms)
        assert inside <= budget.limit, f"{inside} grants within {window_ms} ms from {start}"


def test_rate_limiter_denial_hands_out_spread_slots_never_past_the_window(
    client: redis.Redis, keys: Keys
) -> None:
    # SPEC 13: throttled work is due when its budget can next grant, spread as the window's
    # grants leave it (then at the budget's rate), but no parking slot lies past the window's
    # end (a reservation that outlived its window parked work for minutes, then hours, while the
    # budget had room).
    limiter = RateLimiter(client, keys, "acme", "voucherify")
    budget = Budget(limit=2, window=1.0)
    assert limiter.acquire(budget).granted
    assert limiter.acquire(budget).granted
    time.sleep(0.5 + ahead(1.0)[0])  # half a window after the grants are counted (module leases)
    waits = [limiter.acquire(budget).wait for _ in range(4)]
    # The first when the grants leave the window (counted per granule of 1/30 s: a little late),
    # the second as the other grant of that granule leaves with it (spread over one granule:
    # after a burst, a queue at the budget's mean rate left most of the next window unused)...
    assert 0.4 < waits[0] <= 0.6, waits
    assert 0 < waits[1] - waits[0] <= 1 / 30 + 0.002, waits
    # ...then, with no more grants leaving, one interval (1 s / 2) later, but not past the
    # window from now: due then, competing again, not parked further ahead.
    assert 0.4 < waits[2] - waits[1] <= 0.5, waits
    assert all(w <= 1.0 for w in waits), waits
    long = Budget(limit=2, window=60)
    other = RateLimiter(client, keys, "acme", "other")
    assert other.acquire(long).granted and other.acquire(long).granted
    late = 62.1 + ahead(60.0)[0]
    assert all(59 < other.acquire(long).wait <= late for _ in range(5))  # all when the budget grants


def test_rate_limiter_fresh_work_queues_behind_parked_work(client: redis.Redis, keys: Keys) -> None:
    limiter = RateLimiter(client, keys, "acme", "voucherify")
    budget = Budget(limit=2, window=1.0)
    assert limiter.acquire(budget).granted and limiter.acquire(budget).granted
    time.sleep(0.5)
    assert not limiter.acquire(budget).granted  # parked until ~1.0 s (the two grants leave)
    assert not limiter.acquire(budget).granted  # parked until ~1.02 s (with the second)
    assert not limiter.acquire(budget).granted  # parked until ~1.5 s: the hint is in the future
    time.sleep(0.6 + ahead(1.0)[0])  # (grants are counted a little after they are taken)
    # The budget has room again, but fresh work waits behind the parked work's slots...
    fresh = limiter.acquire(budget)
    assert not fresh.granted and fresh.wait > 0.1
    # ...while parked work coming back from its slot competes on the budget only.
    assert limiter.acquire(budget, has_slot=True).granted


def test_rate_limiter_pause_and_slow_down(client: redis.Redis, keys: Keys) -> None:
    limiter = RateLimiter(client, keys, "acme", "voucherify")
    limiter.pause(0.5)
    grant = limiter.acquire(None, has_slot=True)
    assert not grant.granted and 0.3 < grant.wait <= 0.5
    time.sleep(0.55)
    assert limiter.acquire(None, has_slot=True).granted
    limiter = RateLimiter(client, keys, "acme", "segment")
    limiter.slow_down(0.5, 10)
    budget = Budget(limit=4, window=60)
    granted = sum(limiter.acquire(budget, has_slot=True).granted for _ in range(4))
    assert granted == 2


def test_voucherify_answers_pause_the_budget_they_name(client: redis.Redis, keys: Keys) -> None:
    # What Voucherify's answers say about its quotas, applied to the connection's budgets: the
    # shop's reserve reached (Remaining < (1 - share) x Limit) pauses the budget the headers
    # speak of until X-Rate-Limit-Retry; a 429 pauses only the budgets its type names.
    conn = make_connection()
    quota = QuotaSettings(api_calls_per_minute=100, api_calls_per_cycle=100_000, bulk_calls_per_hour=20)
    conn = dataclasses.replace(conn, voucherify=dataclasses.replace(conn.voucherify, quota=quota))
    budgets = Budgets(client, keys, "acme")
    target = VoucherifyTarget(conn, client=client, keys=keys, tuning=Tuning(), budgets=budgets)
    rest = target.budgets_for(None)
    assert [b.name for b in rest] == ["api_calls_minute", "api_calls_cycle"]
    assert [b.limit for b in rest] == [50, 50_000]  # the default share: half
    retry = str(int(time.time()) + 30)

    def observe(status: int, spent: tuple[Budget, ...], **headers: str) -> None:
        answer = HTTPResult(status, {k.replace("_", "-"): v for k, v in headers.items()}, "", 0.01)
        budgets.apply(spent, target.interpret(answer, spent), slowdown_seconds=10.0)

    def paused(name: str) -> bool:
        return client.get(keys.ratelimit("acme", name) + ":pause") is not None

    observe(200, rest, x_rate_limit_limit="100", x_rate_limit_remaining="50", x_rate_limit_retry=retry)
    assert not paused("api_calls_minute")  # exactly the reserve left: still ours
    observe(200, rest, x_rate_limit_limit="100", x_rate_limit_remaining="49", x_rate_limit_retry=retry)
    assert paused("api_calls_minute") and not paused("api_calls_cycle")
    grant = budgets.acquire(rest, has_slot=True)
    assert not grant.granted and 25 < grant.wait <= 31
    # A bulk 429 pauses the bulk budget only: single calls are not stopped by it.
    bulk = target.budgets_for(dataclasses.replace(request("b1"), path="/v1/customers/bulk/async"))
    assert [b.name for b in bulk] == ["bulk_calls_hour", "api_calls_minute"]
    observe(429, bulk, x_rate_limit_type="bulk_api_calls", retry_after="600")
    assert paused("bulk_calls_hour") and not paused("api_calls_cycle")
    assert client.pttl(keys.ratelimit("acme", "bulk_calls_hour") + ":pause") > 590_000
    assert client.pttl(keys.ratelimit("acme", "api_calls_minute") + ":pause") < 32_000  # untouched
    # A cycle 429 pauses the cycle budget, however the call was counted.
    observe(429, rest, x_rate_limit_type="api_calls_cycle", retry_after="900")
    assert client.pttl(keys.ratelimit("acme", "api_calls_cycle") + ":pause") > 890_000


# --- stale --------------------------------------------------------------------------------------


def test_event_time_parsing() -> None:
    assert event_time_ms("2024-01-01T00:00:00Z") == 1704067200000
    assert event_time_ms("2024-01-01T01:00:00+01:00") == 1704067200000
    assert event_time_ms("2024-01-01T00:00:00.250") == 1704067200250
    assert event_time_ms("yesterday") is None
    assert event_time_ms(None) is None


def _stale(guard: StaleGuard, customer: str, ms: int) -> bool:
    """The guard's verdict for one upsert, the send lock given back at once."""
    state, _ = guard.check_and_lock(customer, ms, "probe", ttl=5)
    guard.unlock(customer, "probe")
    assert state in ("stale", "locked")
    return state == "stale"


def test_stale_guard_keeps_the_newest(client: redis.Redis, keys: Keys) -> None:
    guard = StaleGuard(client, keys, "acme")
    assert not _stale(guard, "u1", 1000)
    guard.applied("u1", 2000, ttl=100)
    assert _stale(guard, "u1", 1999)
    assert not _stale(guard, "u1", 2000)  # same time: not older
    guard.applied("u1", 1500, ttl=100)  # a late finisher never lowers it
    assert _stale(guard, "u1", 1999)
    assert not _stale(guard, "u2", 1)


def test_stale_guard_never_records_a_future_time(client: redis.Redis, keys: Keys) -> None:
    guard = StaleGuard(client, keys, "acme")
    year_2999 = event_time_ms("2999-01-01T00:00:00Z")
    assert year_2999 is not None
    guard.applied("u1", year_2999, 60)
    # The next identify, stamped by a correct clock a minute and a half later, is not "stale".
    now_ms = int(time.time() * 1000)
    assert _stale(guard, "u1", now_ms - 60_000)  # older than the clamped record: still stale
    assert not _stale(guard, "u1", now_ms + 90_000)


def test_one_upsert_of_a_customer_in_flight_at_a_time(client: redis.Redis, keys: Keys) -> None:
    # Two attempts for one customer (say v2 and v3 coming due together in two tasks): the second
    # waits while the first is in flight, then finds itself stale or newer -- never both sent at
    # once, where the older could be applied last.
    guard = StaleGuard(client, keys, "acme")
    assert guard.check_and_lock("u1", 3000, "attempt-v3", ttl=5) == ("locked", 0.0)
    state, wait = guard.check_and_lock("u1", 2000, "attempt-v2", ttl=5)
    assert state == "busy" and 4.0 < wait <= 5.0
    assert guard.check_and_lock("u2", 2000, "attempt-other", ttl=5)[0] == "locked"  # per customer
    guard.unlock("u1", "attempt-v2")  # not its lock: nothing happens
    assert guard.check_and_lock("u1", 2000, "attempt-v2", ttl=5)[0] == "busy"
    guard.applied("u1", 3000, ttl=100)
    guard.unlock("u1", "attempt-v3")
    assert guard.check_and_lock("u1", 2000, "attempt-v2", ttl=5) == ("stale", 0.0)
    # A call without a time to compare (a merged request) still takes the lock.
    assert guard.check_and_lock("u1", None, "merged", ttl=5) == ("locked", 0.0)
    assert guard.check_and_lock("u1", 4000, "attempt-v4", ttl=5)[0] == "busy"
    # A killed owner: the lock ends with its TTL.
    assert guard.check_and_lock("u3", 1000, "dies", ttl=0.2)[0] == "locked"
    time.sleep(0.3)
    assert guard.check_and_lock("u3", 1000, "next", ttl=5)[0] == "locked"


# --- backlog ------------------------------------------------------------------------------------


def test_backlog_reserve_release(client: redis.Redis, keys: Keys) -> None:
    assert backlog.reserve(client, "acme", 6, 10, keys=keys)
    assert not backlog.reserve(client, "acme", 5, 10, keys=keys)
    assert backlog.reserve(client, "acme", 4, 10, keys=keys)
    assert backlog.current(client, "acme", keys=keys) == 10
    backlog.release(client, "acme", 7, keys=keys)
    assert backlog.current(client, "acme", keys=keys) == 3
    backlog.release(client, "acme", 50, keys=keys)  # drift never goes negative
    assert backlog.current(client, "acme", keys=keys) == 0
    assert backlog.reserve(client, "acme", 25, 10, keys=keys)  # an empty backlog admits a big batch
    # The counter never expires: a long outage (nothing in, nothing out) must not reopen the gate.
    assert client.ttl(keys.backlog("acme")) == -1


def test_backlog_counter_from_an_older_version_loses_its_ttl(client: redis.Redis, keys: Keys) -> None:
    client.set(keys.backlog("acme"), 5, ex=900)  # as the TTL'd counter of earlier versions left it
    assert backlog.reserve(client, "acme", 1, 10, keys=keys)
    assert client.ttl(keys.backlog("acme")) == -1 and backlog.current(client, "acme", keys=keys) == 6


def test_backlog_bounds_bytes_as_well_as_events(client: redis.Redis, keys: Keys) -> None:
    mb = 1024 * 1024
    assert backlog.reserve(client, "acme", 1, 1000, stored_bytes=6 * mb, bytes_limit=10 * mb, keys=keys)
    # Few events, but fat ones: the byte bound refuses where the event bound would admit.
    assert not backlog.reserve(client, "acme", 1, 1000, stored_bytes=5 * mb, bytes_limit=10 * mb, keys=keys)
    assert backlog.current(client, "acme", keys=keys) == 1
    assert backlog.current_bytes(client, "acme", keys=keys) == 6 * mb
    assert backlog.reserve(client, "acme", 1, 1000, stored_bytes=4 * mb, bytes_limit=10 * mb, keys=keys)
    backlog.release(client, "acme", 1, 7 * mb, keys=keys)
    assert backlog.current(client, "acme", keys=keys) == 1
    assert backlog.current_bytes(client, "acme", keys=keys) == 3 * mb
    backlog.release(client, "acme", 0, 50 * mb, keys=keys)  # never negative
    assert backlog.current_bytes(client, "acme", keys=keys) == 0
    assert backlog.current(client, "acme", keys=keys) == 1
    # An empty byte counter admits one request larger than the bound (else it never could pass).
    assert backlog.reserve(client, "beta", 1, 10, stored_bytes=20 * mb, bytes_limit=10 * mb, keys=keys)


def test_backlog_reconcile_resets_drift_only_when_idle_and_unchanged(client: redis.Redis, keys: Keys) -> None:
    # Broker queue names as the settings know them; the reconciler reads them under the
    # deployment's broker prefix (this test's prefix is not the default one).
    connections = [("acme", ["voucherify.eu"]), ("busy", ["voucherify.eu"])]
    queue = keys.broker_queue("voucherify.eu")
    assert queue == f"{keys.prefix}voucherify.eu"
    # "acme" drifted up (a web process died between reserve and publish): nothing holds its work.
    assert backlog.reserve(client, "acme", 3, 100, stored_bytes=300, keys=keys)
    assert backlog.reconcile(client, connections, interval=0.2, keys=keys) == []  # first look
    time.sleep(0.15)
    assert backlog.reconcile(client, connections, interval=0.2, keys=keys) == ["acme"]
    assert backlog.current(client, "acme", keys=keys) == 0
    assert backlog.current_bytes(client, "acme", keys=keys) == 0
    # Work waiting in its queue: never reset, however long it waits.
    assert backlog.reserve(client, "acme", 2, 100, keys=keys)
    client.lpush(queue, b"message")
    for _ in range(3):
        assert backlog.reconcile(client, connections, interval=0.2, keys=keys) == []
        time.sleep(0.15)
    client.delete(queue)
    # Idle again, but the counter moved between the two looks (an ingest in progress): not reset.
    assert backlog.reconcile(client, connections, interval=0.2, keys=keys) == []
    assert backlog.reserve(client, "acme", 1, 100, keys=keys)
    time.sleep(0.15)
    assert backlog.reconcile(client, connections, interval=0.2, keys=keys) == []
    assert backlog.current(client, "acme", keys=keys) == 3
    # Parked work anywhere (delayed store) or an outbox of the connection: not idle either.
    client.zadd(keys.delayed, {"entry": 1})
    time.sleep(0.15)
    assert backlog.reconcile(client, connections, interval=0.2, keys=keys) == []
    time.sleep(0.15)
    assert backlog.reconcile(client, connections, interval=0.2, keys=keys) == []
    client.delete(keys.delayed)
    client.rpush(keys.outbox("acme"), b"item")
    time.sleep(0.15)
    assert backlog.reconcile(client, connections, interval=0.2, keys=keys) == []
    time.sleep(0.15)
    assert backlog.reconcile(client, connections, interval=0.2, keys=keys) == []
    assert backlog.current(client, "acme", keys=keys) == 3
    # Upserts waiting in its hold window (issue #19: they were not counted, and reset).
    client.delete(keys.outbox("acme"))
    client.zadd(keys.holds("acme"), {"cust-1": 1})
    for _ in range(3):
        assert backlog.reconcile(client, connections, interval=0.2, keys=keys) == []
        time.sleep(0.15)
    assert backlog.current(client, "acme", keys=keys) == 3


def test_backlog_reserve_is_atomic(client: redis.Redis, keys: Keys) -> None:
    with ThreadPoolExecutor(16) as pool:
        admitted = sum(pool.map(lambda _: backlog.reserve(client, "acme", 1, 50, keys=keys), range(200)))
    assert admitted == 50
    assert backlog.current(client, "acme", keys=keys) == 50


def test_backlog_uses_env_prefix(client: redis.Redis, keys: Keys, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CONNECTOR_KEY_PREFIX", keys.prefix)
    assert backlog.reserve(client, "acme", 2, 10)
    assert client.get(keys.backlog("acme")) == b"2"
