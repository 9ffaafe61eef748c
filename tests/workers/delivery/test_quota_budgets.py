# ruff: noqa: F811 - pytest fixtures imported from tests.support.delivery
"""Budgets of SPEC 10 in Redis: several budgets per call granted atomically, sub-window counters
that never let a window exceed its limit, grants leased per process for a burst, billing cycles,
a budget of nothing, and quota waits kept out of the retry window."""

from __future__ import annotations

import threading
import time
from datetime import UTC, datetime
from pathlib import Path
from unittest import mock

import redis

from connector.keys import Keys
from connector.quotas import cycle_window
from tests.support.delivery import client, keys, redis_db_url  # noqa: F401 - fixtures
from workers.delivery import budgets as budgets_module
from workers.delivery import quota_waits
from workers.delivery.budgets import Budget, Budgets, GrantPools, Observation
from workers.delivery.leases import Lease


def test_a_call_denied_by_one_budget_spends_none_of_the_others(client: redis.Redis, keys: Keys) -> None:
    b = Budgets(client, keys, "acme")
    minute, cycle = Budget(10, 60.0, "api_calls_minute"), Budget(2, 3600.0, "api_calls_cycle")
    assert b.acquire((minute, cycle)).granted
    assert b.acquire((minute, cycle)).granted
    for _ in range(3):
        assert not b.acquire((minute, cycle), has_slot=True).granted  # the cycle budget is spent
    # ...and the minute budget still has its 8 calls left: the denials took nothing from it.
    assert sum(b.acquire((minute,), has_slot=True).granted for _ in range(10)) == 8


def test_leased_grants_never_exceed_any_window_across_processes(client: redis.Redis, keys: Keys) -> None:
    # Four "processes" (each its own pool of leased grants), eight threads each, one budget of
    # 2,000 per second: in no window of a second are more than 2,000 calls made, the budget is used,
    # and far fewer round trips than calls are made.
    budget = Budget(2000, 1.0, "api_calls_minute")
    used: list[float] = []
    lock = threading.Lock()
    stop = time.monotonic() + 3.2
    calls = {"granting": 0}
    real = budgets_module._ACQUIRE.__call__

    def counting(self: object, *args: object) -> object:
        out = real(*args)  # type: ignore[arg-type]
        if int(out[0]) > 0:
            with lock:
                calls["granting"] += 1
        return out

    def worker(pools: GrantPools) -> None:
        b = Budgets(client, keys, "acme", pools)
        while time.monotonic() < stop:
            grant = b.acquire((budget,), has_slot=True)
            if grant.granted:
                with lock:
                    # The grant's time (Redis's clock, or the moment a leased grant is taken):
                    # the call is made right after it.
                    used.append(grant.at_ms / 1000.0)
            else:
                time.sleep(min(grant.wait, 0.02))

    with mock.patch.object(type(budgets_module._ACQUIRE), "__call__", counting):
        threads = [
            threading.Thread(target=worker, args=(p,))
            for p in [GrantPools() for _ in range(4)]
            for _ in range(8)
        ]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    used.sort()
    busiest = max(sum(1 for u in used[i:] if u < start + 1.0) for i, start in enumerate(used))
    assert busiest <= 2000, busiest
    assert len(used) >= 1000  # used, not starved
    assert calls["granting"] < len(used) / 4  # bursts of grants per round trip


def test_grants_leased_a_granule_ahead_are_counted_by_a_call_asking_for_one(
    client: redis.Redis, keys: Keys
) -> None:
    # A window of 30 s has granules of 1 s, and a lease of 1 s is counted in the granule of its
    # end: the NEXT one.  One process leases most of the budget; then calls asking for one grant
    # each (no pool) take what is left, within the same second: never more than the limit.
    budget = Budget(200, 30.0, "api_calls_minute")
    taken_ahead = 120
    for attempt in range(5):
        sec, usec = client.time()
        if usec > 300_000:  # start early in a second (Redis's clock: the granules' own)
            time.sleep(1.0 - usec / 1e6 + 0.01)
            sec, _ = client.time()
        connection = f"acme{attempt}"
        leasing = Budgets(client, keys, connection, GrantPools())
        assert all(leasing.acquire((budget,), has_slot=True).granted for _ in range(taken_ahead))
        counters = keys.ratelimit(connection, budget.name) + ":n"
        ahead = sum(int(v) for f, v in client.hgetall(counters).items() if int(f) > sec)
        single = Budgets(client, keys, connection)
        more = 0
        while more <= budget.limit and single.acquire((budget,), has_slot=True).granted:
            more += 1
        if client.time()[0] != sec:
            continue  # the second turned: the next granule is now the current one, try again
        assert ahead > taken_ahead / 2  # the premise: most grants were counted a granule ahead
        assert taken_ahead + more <= budget.limit, more
        # ...and the rest of the budget is used (less what the leasing process still holds).
        assert more >= budget.limit - taken_ahead - budget.limit // budgets_module.LEASE_SHARE
        return
    raise AssertionError("no run stayed within one second of Redis's clock")


def test_leased_grants_not_used_in_time_are_handed_back(client: redis.Redis, keys: Keys) -> None:
    pools = GrantPools()
    b = Budgets(client, keys, "acme", pools)
    budget = Budget(1000, 60.0, "api_calls_minute")
    for _ in range(20):  # the lease grows with use
        assert b.acquire((budget,)).granted
    counted = sum(int(v) for v in client.hvals(keys.ratelimit("acme", "api_calls_minute") + ":n"))
    assert counted > 20  # some grants are held ahead in the process
    time.sleep(budgets_module.LEASE_SECONDS + 0.1)
    assert b.acquire((budget,)).granted  # the expired lease's leftovers go back with this call
    counted_after = sum(int(v) for v in client.hvals(keys.ratelimit("acme", "api_calls_minute") + ":n"))
    assert counted_after <= 21 + 40  # the refund: only what was used, and the new lease


def test_expired_leases_counted_in_different_granules_go_back_one_at_a_time() -> None:
    # A refund names one counter (the granule its lease was counted in): two leases of different
    # granules handed back as one sum took it all from one granule, un-counting grants that had
    # been used there -- and the budget then let more calls through than its limit.
    pools = GrantPools()
    key = ("acme", ("api_calls_minute",))
    gone = time.monotonic() - 1.0
    pools.add(key, Lease(5, gone, ["100", ""], (1,), (), (10,)))
    pools.add(key, Lease(3, gone, ["101", ""], (11,), (), (20,)))
    pools.add(key, Lease(2, gone, ["101", ""], (21,), (), (30,)))
    handed = [pools.take(key, True)[1] for _ in range(3)]
    assert handed[0] is not None and (handed[0].count, handed[0].fields) == (5, ["100", ""])
    # The two of the same granule together (one refund of 5 from granule 101), then nothing.
    assert handed[1] is not None and (handed[1].count, handed[1].fields) == (5, ["101", ""])
    assert handed[1].unused_from() == (18,)  # the lower first unused number: 18 (20 - 3 + 1)
    assert handed[2] is None


def test_a_budget_of_nothing_is_never_granted(client: redis.Redis, keys: Keys) -> None:
    grant = Budgets(client, keys, "acme").acquire((Budget(0, 3600.0, "bulk_calls_hour"),))
    assert not grant.granted and grant.wait == 3600.0 and grant.reason == "throttled"


def test_a_cycle_budget_counts_per_billing_cycle(client: redis.Redis, keys: Keys) -> None:
    cycle = Budget(3, 30 * 86400.0, "api_calls_cycle", cycle_start_day=15)
    b = Budgets(client, keys, "acme")
    assert all(b.acquire((cycle,), has_slot=True).granted for _ in range(3))
    denied = b.acquire((cycle,), has_slot=True)
    _, end = cycle_window(time.time(), 15)
    assert not denied.granted and abs(denied.wait - (end - time.time())) < 5  # until the next cycle
    start, _ = cycle_window(time.time(), 15)
    assert client.hget(keys.ratelimit("acme", "api_calls_cycle") + ":n", str(int(start))) == b"3"


def test_cycle_windows() -> None:
    at = datetime(2027, 1, 10, tzinfo=UTC).timestamp()
    assert cycle_window(at, 1) == (
        datetime(2027, 1, 1, tzinfo=UTC).timestamp(),
        datetime(2027, 2, 1, tzinfo=UTC).timestamp(),
    )
    assert cycle_window(at, 15) == (
        datetime(2026, 12, 15, tzinfo=UTC).timestamp(),
        datetime(2027, 1, 15, tzinfo=UTC).timestamp(),
    )
    start, end = cycle_window(at, 1, scale=0.001)  # a test clock: 30 scaled days
    assert end - start == 30 * 86400 * 0.001 and start <= at < end


def test_a_paused_connection_denies_every_grant(client: redis.Redis, keys: Keys) -> None:
    b = Budgets(client, keys, "acme")
    client.set(keys.paused("acme"), '{"reason": "auth", "since": 1}')
    grant = b.acquire((Budget(100, 60.0, "api_calls_minute"),), has_slot=True)
    assert not grant.granted and grant.reason == "paused"
    assert client.hgetall(keys.ratelimit("acme", "api_calls_minute") + ":n") == {}


def test_quota_waits_do_not_run_the_retry_window() -> None:
    item = {"first_attempt_at": 1000.0, "attempts": 2}
    quota_waits.parked(item, "throttled", 1100.0)
    quota_waits.resumed(item, 1700.0)  # 600 s waiting for quota
    assert item["quota_wait"] == 600.0 and quota_waits.window_start(item, 1800.0) == 1600.0
    quota_waits.parked(item, "retry", 1800.0)  # a retry's wait counts
    quota_waits.resumed(item, 1900.0)
    assert item["quota_wait"] == 600.0
    # A first try refused for quota is not an attempt and does not start the window.
    fresh = {"first_attempt_at": 2000.0, "attempts": 1}
    quota_waits.not_an_attempt(fresh, None)
    assert fresh == {"first_attempt_at": None, "attempts": 0}


# --- the live state: the answers' headers are credit (SPEC 13, "Quota, exact under bursts") ----


def live_budget(limit: int = 60) -> Budget:
    return Budget(limit, 60.0, "api_calls_minute", live=True)


def answer(credit: float | None, until: float | None = None) -> Observation:
    return Observation(live=True, credit=credit, live_until=until)


def test_with_no_answer_of_the_window_at_most_two_calls_go(client: redis.Redis, keys: Keys) -> None:
    b = Budgets(client, keys, "acme")
    budget = live_budget()
    probes = [b.acquire((budget,)) for _ in range(2)]
    assert all(g.granted and g.probes == ("api_calls_minute",) for g in probes)
    denied = b.acquire((budget,))
    # Denied until the probe's answer is near: no parking slot handed out for it.
    assert not denied.granted and denied.wait <= budgets_module.PROBE_WAIT_SECONDS
    assert client.get(keys.ratelimit("acme", "api_calls_minute") + ":hint") is None
    # A refused probe (401) keeps its place until its refusal is judged (a revoked key gets no
    # third call meanwhile); the credentials check itself is not held to the probe.
    b.apply((budget,), Observation(auth_refused=True), slowdown_seconds=1.0, grant=probes[0])
    assert not b.acquire((budget,)).granted
    check = b.acquire((budget,), parks=False, probe=False)
    assert check.granted
    b.release(check)  # its answer is not read: its place goes with it
    assert not b.acquire((budget,)).granted
    b.release(probes[0])  # judged: the place is free, the next call may go
    assert b.acquire((budget,)).granted and not b.acquire((budget,)).granted
    # A failed probe (a 5xx, no word on the window) frees its place at once.
    b.apply((budget,), Observation(), slowdown_seconds=1.0, grant=probes[1])
    assert b.acquire((budget,)).granted and not b.acquire((budget,)).granted


def test_a_budget_grants_only_what_the_headers_leave_beyond_the_reserve(
    client: redis.Redis, keys: Keys
) -> None:
    b = Budgets(client, keys, "acme")
    budget = live_budget()
    first, second = b.acquire((budget,)), b.acquire((budget,))
    until = time.time() + 30
    # The first call's answer: 80 remain of 120, the reserve is 60 -> a credit of 20, of which
    # the second probe (granted after the first) may not be counted yet: 19 more calls.
    b.apply((budget,), answer(20.0, until), slowdown_seconds=1.0, grant=first)
    assert sum(b.acquire((budget,)).granted for _ in range(25)) == 19
    denied = b.acquire((budget,))
    assert not denied.granted and 28 < denied.wait <= 30.5  # until the window's end, not later
    # An answer of the same window that says more (an older call's) raises nothing...
    b.apply((budget,), answer(19.0, until), slowdown_seconds=1.0, grant=second)
    assert not b.acquire((budget,)).granted
    # ...an answer of an earlier window neither; the next window's answer is the word.
    b.apply((budget,), answer(50.0, until - 60), slowdown_seconds=1.0, grant=second)
    assert not b.acquire((budget,)).granted
    b.apply((budget,), answer(5.0, until + 60), slowdown_seconds=1.0)
    assert sum(b.acquire((budget,)).granted for _ in range(10)) == 5


def test_the_windows_first_answer_may_not_count_the_probe_sent_before_it(
    client: redis.Redis, keys: Keys
) -> None:
    b = Budgets(client, keys, "acme")
    budget = live_budget()
    b.acquire((budget,))
    second = b.acquire((budget,))
    # The second probe reached the server first: 79 of 120 remain (the first one not counted
    # yet), a credit of 19; the first one still counts against it: 18 more, 20 in all.
    b.apply((budget,), answer(19.0, time.time() + 30), slowdown_seconds=1.0, grant=second)
    assert sum(b.acquire((budget,)).granted for _ in range(25)) == 18


def test_an_answer_without_rate_headers_leaves_the_own_counters_alone(
    client: redis.Redis, keys: Keys
) -> None:
    b = Budgets(client, keys, "acme")
    budget = live_budget(limit=10)
    first = b.acquire((budget,))
    b.apply((budget,), answer(None), slowdown_seconds=1.0, grant=first)
    assert sum(b.acquire((budget,)).granted for _ in range(20)) == 9  # the share's counters only


def test_a_window_over_means_a_new_probe(client: redis.Redis, keys: Keys) -> None:
    b = Budgets(client, keys, "acme")
    budget = live_budget()
    first = b.acquire((budget,))
    b.apply((budget,), answer(30.0, time.time() + 0.3), slowdown_seconds=1.0, grant=first)
    assert sum(b.acquire((budget,)).granted for _ in range(5)) == 5
    time.sleep(0.35)  # that answer's window is over: nothing is known of this one
    assert sum(b.acquire((budget,)).granted for _ in range(5)) == 2
    # A late answer of the window that is over says nothing of this one: no new probe for it.
    b.apply((budget,), answer(25.0, time.time() - 0.05), slowdown_seconds=1.0, grant=first)
    assert not b.acquire((budget,)).granted


def test_a_process_stores_what_changes_grants_at_once_and_refinements_with_its_next_call(
    client: redis.Redis, keys: Keys
) -> None:
    pools = GrantPools()
    b = Budgets(client, keys, "acme", pools)
    other = Budgets(client, keys, "acme")  # another process: Redis's word only
    budget = live_budget()
    first = b.acquire((budget,))
    until = time.time() + 30
    b.apply((budget,), answer(10.0, until), slowdown_seconds=1.0, grant=first)  # the probe over
    live = keys.ratelimit("acme", "api_calls_minute") + ":live"
    assert client.hget(live, "c") == b"10"
    grants = [b.acquire((budget,)) for _ in range(3)]
    # The shop spent 2 meanwhile: a refinement, kept for this process's next round trip...
    b.apply((budget,), answer(6.0, until), slowdown_seconds=1.0, grant=grants[0])
    assert client.hget(live, "c") == b"10"
    assert b.acquire((budget,)).granted
    assert client.hget(live, "c") == b"6"  # ...which carried it
    # An answer that says the credit is spent is stored at once: every process stops.
    last = b.acquire((budget,))
    b.apply((budget,), answer(0.0, until), slowdown_seconds=1.0, grant=last)
    assert not other.acquire((budget,)).granted
    # The denial is remembered by the process: no round trip per throttled call.
    assert not b.acquire((budget,)).granted
    with mock.patch.object(type(budgets_module._ACQUIRE), "__call__", side_effect=AssertionError):
        assert not b.acquire((budget,)).granted


def test_the_budget_scripts_are_short_files_that_name_their_arguments() -> None:
    scripts = sorted((Path(budgets_module.__file__).parent / "lua").glob("budget_*.lua"))
    assert len(scripts) >= 5
    for script in scripts:
        lines = script.read_text().splitlines()
        assert len(lines) < 60, script.name
        # The header comment says what it is and names its arguments (a library: its functions').
        header = " ".join(
            line for line in lines[: next(i for i, x in enumerate(lines) if not x.startswith("--"))]
        )
        assert "Library" in header or ("KEYS" in header and "ARGV" in header), script.name


def test_grants_a_lease_hands_back_are_credit_again(client: redis.Redis, keys: Keys) -> None:
    # A process leases grants of a live budget ahead; those it does not use in time never reach
    # the server, so the credit the headers gave must count them again -- every lease that
    # expired, not only the last (once, a backfill sent 476 calls in a window allowing 1,000).
    pools = GrantPools()
    b = Budgets(client, keys, "acme", pools)
    budget = live_budget(limit=6000)  # a lease may hold up to 60 grants
    first = b.acquire((budget,))
    b.acquire((budget,))  # the second probe: granted after the first, not counted by its answer
    b.apply((budget,), answer(300.0, time.time() + 60), slowdown_seconds=1.0, grant=first)
    used = 0
    for _ in range(3):  # bursts whose leases expire partly unused
        for _ in range(5):
            used += b.acquire((budget,)).granted
        time.sleep(budgets_module.LEASE_SECONDS + 0.05)
    while (grant := b.acquire((budget,))).granted:
        used += 1
        assert used <= 299
    assert used == 299, used  # the credit of 300, less the second probe: all of it, no more
    assert not grant.slot and grant.wait > 50  # then denied until the window's end
