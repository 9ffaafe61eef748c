"""Request budgets shared by every worker on every machine, enforced in Redis.

A :class:`Budget` is ``limit`` requests per ``window`` for one connection, under a *name*; which
budgets a call spends, and what an answer says about them, is the target's to say
(``Target.budgets_for`` / ``Target.interpret``).  This module knows no system and no header.
One Lua script (``lua/budget_*.lua``) decides atomically, on Redis's clock, for ALL the budgets
of a call at once (a call denied by its second budget spends nothing of the first):

1. the connection is paused (:mod:`workers.delivery.pauses`, e.g. its credentials refused)
   -> deny, reason ``paused``;
2. a budget's ``pause`` key is set (a 429 of that quota type, or the shop's reserve reached)
   -> deny until it ends;
3. the budget's own count (the connector's share per window) is full -> deny until enough of
   it leaves the window, with a *parking slot*: ``hint`` advances per denial as the window's
   grants leave it (a granule's grants spread over one granule from the moment it leaves; the
   budget's mean rate past them), so throttled work comes back as room frees -- never past the
   window's end (or the pause's), so no reservation outlives its window;
4. the *live state* (what the answers' headers said, for a budget with ``live``): a call goes
   only while ``credit - calls granted since that answer > 0`` (credit: the calls the answer
   said remain, less the shop's reserve), else it waits for that window's end; with no answer
   of the current window known, at most ``PROBE_CALLS`` calls are out (a probe), so a new or
   resumed connection never bursts past the reserve or at a revoked key;
5. otherwise grant (up to ``want`` calls at once, see below) and count.

Counting: a *sliding window of sub-window counters* (``SUBWINDOWS`` granules, the oldest
counted whole: the limit holds in EVERY window of that length, also in Voucherify's own), a
billing cycle a counter per cycle.  Grants are numbered per live budget: an answer is stored
with its call's number, so the grants made after it are known exactly.  A worker process takes
grants for a burst in one round trip (:class:`GrantPools`, spent within ``LEASE_SECONDS``,
counted a little after the lease's END, leftovers and grants too late to send handed back, a
call answered late counted again: :mod:`workers.delivery.leases`), remembers a denial until
its wait ends, and sends an answer that only refines the live state with its next round trip
(:mod:`workers.delivery.readings`): no round trip per event for any of them.

Adaptive slow-down: an :class:`Observation` may pause the budgets of a call (for the server's
wait, or a few seconds) and halve them for a while (``slow`` key).
"""

from __future__ import annotations

import math
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import redis

from connector.keys import Keys
from connector.lua import Lua
from connector.quotas import SUBWINDOWS, cycle_window
from workers.delivery.leases import LEASE_SECONDS as LEASE_SECONDS
from workers.delivery.leases import MAX_LEASE as MAX_LEASE
from workers.delivery.leases import Grant as Grant
from workers.delivery.leases import GrantPools as GrantPools
from workers.delivery.leases import Lease, ahead
from workers.delivery.retries import MAX_SERVER_WAIT_SECONDS

LEASE_SHARE = 100  # ...and at most this part of a budget (1 / 100)
PROBE_CALLS = 2  # calls out for a live budget while no answer of its window is known
PROBE_ROUND_SECONDS = 10.0  # a probe's grants count this long (an answer lost frees them then)
PROBE_WAIT_SECONDS = 0.25  # work denied by the probe looks again this soon (the answer is near)
PAUSE_RECHECK_SECONDS = 0.25

_LUA = Path(__file__).parent / "lua"
_ACQUIRE = Lua.files(
    _LUA, "budget_counts.lua", "budget_live.lua", "budget_check.lua", "budget_slots.lua", "budget_acquire.lua"
)
_OBSERVE = Lua.files(_LUA, "budget_live.lua", "budget_observe.lua")
_PAUSE = Lua.files(_LUA, "budget_pause.lua")
_RECOUNT = Lua.files(_LUA, "budget_recount.lua")


@dataclass(frozen=True)
class Budget:
    limit: int | None  # requests per window; None: unbounded (only a pause can deny)
    window: float = 60.0  # seconds
    name: str = ""  # {p}rl:{connection}:{name}
    # A billing cycle (fixed calendar windows from this day, UTC) instead of a sliding window.
    cycle_start_day: int | None = None
    cycle_scale: float = 1.0  # a test clock's speed (CONNECTOR_QUOTA_PERIOD_SCALE)
    # The server's answers tell this budget's live state (headers): probed, then held to them.
    live: bool = False

    @property
    def granule(self) -> float:
        """Seconds one counter covers (0: a fixed window, the cycle)."""
        return 0.0 if self.cycle_start_day is not None else max(0.001, self.window / SUBWINDOWS)


@dataclass(frozen=True)
class Observation:
    """What one answer says about the budgets the call spent (``Target.interpret``)."""

    wait: float | None = None  # the server's requested wait: a floor for the next try
    pause: float | None = None  # stop spending these budgets for this long (seconds)
    slow: bool = False  # halve these budgets for a while (a 429, little quota left)
    # Only these named budgets (a quota type the answer names); None: every budget of the call.
    budget: str | tuple[str, ...] | None = None
    # A quota refusal (429): the call waits for its budget, it is not a failed attempt.
    quota: bool = False
    # The connection's credentials were refused (401/403): pause the whole connection.
    auth_refused: bool = False
    # The live state: the answer is the server's word on its window (``live``); ``credit``:
    # the calls it said remain less the shop's reserve (None: it sent no such headers), until
    # ``live_until`` (epoch seconds), for ``live_budget`` (None: the call's first live budget).
    live: bool = False
    credit: float | None = None
    live_until: float | None = None
    live_budget: tuple[str, ...] | None = None

    def names(self) -> tuple[str, ...] | None:
        return (self.budget,) if isinstance(self.budget, str) else self.budget


def _fields(budget: Budget, now: float, lease: float) -> tuple[str, str, int]:
    """A cycle budget's counter fields (now, at the lease's end: both count) and its end (ms)."""
    if budget.cycle_start_day is None:
        return "", "", 0
    start, end = cycle_window(now, budget.cycle_start_day, budget.cycle_scale)
    later, _ = cycle_window(now + lease, budget.cycle_start_day, budget.cycle_scale)
    return str(int(start)), str(int(later)), int(end * 1000)


class Budgets:
    """One connection's budgets for one task (``pools``: the process's grants taken ahead)."""

    def __init__(
        self,
        client: redis.Redis,
        keys: Keys,
        connection_id: str,
        pools: GrantPools | None = None,
        system: str = "voucherify",
    ) -> None:
        self.client = client
        self.keys = keys
        self.connection_id = connection_id
        self.pools = pools
        self.system = system  # pauses are per (connection, target system): only its own denies
        self._limiters: dict[str, RateLimiter] = {}
        self._lock = threading.Lock()

    def limiter(self, name: str) -> RateLimiter:
        limiter = self._limiters.get(name)
        if limiter is None:
            with self._lock:
                limiter = self._limiters.setdefault(
                    name, RateLimiter(self.client, self.keys, self.connection_id, name)
                )
        return limiter

    def acquire(
        self, budgets: tuple[Budget, ...], *, has_slot: bool = False, parks: bool = True, probe: bool = True
    ) -> Grant:
        """One call's grant from every budget of ``budgets`` at once, or how long to park.
        ``parks=False``: a try that parks nothing when denied (bulk or singles, a probe): no slot
        reserved for it.  ``probe=False``: not held to the probe (the credentials check)."""
        if not budgets:
            return Grant(True, 0.0, int(time.time() * 1000))
        never = [b for b in budgets if b.limit == 0]
        if never:
            # A budget of nothing (bulk_calls_per_hour = 0): never granted, asked again later.
            return Grant(False, never[0].window, int(time.time() * 1000))
        key = (self.connection_id, tuple(b.name for b in budgets))
        expired: Lease | None = None
        want = 1
        if self.pools is not None:
            local, expired, want = self.pools.take(key, parks)  # a try asks Redis itself
            if local is not None:
                return local
            # Grants taken ahead are held from the other processes until used or handed back:
            # only for budgets large enough that a lease is a small part of them (a small budget
            # is shared call by call, or hoarded grants would leave the others waiting).
            caps = [max(1, b.limit // LEASE_SHARE) for b in budgets if b.limit]
            want = max(1, min(want, MAX_LEASE, *caps)) if caps else min(want, MAX_LEASE)
        granules = [b.granule for b in budgets if b.granule > 0]
        lease = min([LEASE_SECONDS, *granules]) if want > 1 else 0.0
        counted, within = ahead(min(b.window for b in budgets))
        counted += lease  # when the last of them may reach the server
        started, now = time.monotonic(), time.time()
        send_by = now + lease + within
        mode = "2" if not parks else "1" if has_slot else "0"  # see budget_acquire.lua
        args: list[object] = [len(budgets), want, int(counted * 1000), mode]
        args += [expired.count if expired is not None else 0, PROBE_CALLS if probe else 1 << 30]
        args += [int(PROBE_ROUND_SECONDS * 1000), int(PROBE_WAIT_SECONDS * 1000)]
        redis_keys = [self.keys.paused(self.connection_id, self.system)]
        for i, budget in enumerate(budgets):
            base = self.keys.ratelimit(self.connection_id, budget.name)
            # ":n": the counters (a new key: the old layout was a zset under the bare name).
            redis_keys += [f"{base}:n", f"{base}:hint", f"{base}:pause", f"{base}:slow", f"{base}:live"]
            fixed_now, fixed_later, fixed_end = _fields(budget, now, counted)
            refund = expired.fields[i] if expired is not None and i < len(expired.fields) else ""
            args += [budget.limit or 0, max(1, int(budget.window * 1000)), int(budget.granule * 1000)]
            args += [fixed_now, fixed_later, fixed_end, refund, "", "1" if budget.live else "0"]
            args += self._pending(budget)
            unused = expired.unused_from() if expired is not None else ()
            args.append(unused[i] if i < len(unused) else 0)
        out = _ACQUIRE(self.client, redis_keys, args)
        granted, at, slot, paused = int(out[0]), int(out[1]), int(out[2]), int(out[3])
        if granted <= 0:
            reason, slotted = "paused" if paused else "throttled", bool(int(out[4]))
            grant = Grant(False, max(0.0, (slot - at) / 1000.0), at, reason, slot=slotted)
            if self.pools is not None and not grant.slot and parks:
                self.pools.deny(key, grant)
            return grant
        per = [out[5 + 3 * i : 8 + 3 * i] for i in range(len(budgets))]
        seqs = tuple(int(p[1]) for p in per)
        probes = tuple(b.name for b, p in zip(budgets, per, strict=True) if int(p[2]) == 1)
        self._granted(budgets, seqs, probes)
        fields = [f.decode() if isinstance(f, bytes) else str(f) for f, _, _ in per]
        # When the first of the granules they were counted in ends (on this machine's clock).
        ends = [
            ((int(f) + 1) * int(b.granule * 1000) - at) / 1000.0
            for b, f in zip(budgets, fields, strict=True)
            if b.granule
        ]
        count_ends = now + min(ends) if ends else math.inf
        if self.pools is not None and granted > 1:
            last = tuple(seq + granted - 1 if seq > 0 else 0 for seq in seqs)
            lease_ = Lease(granted - 1, started + lease, fields, seqs, probes, last, send_by, count_ends)
            self.pools.add(key, lease_)
        return Grant(
            True,
            0.0,
            at,
            seqs=seqs,
            probes=probes,
            fields=tuple(fields),
            send_by=send_by,
            count_ends=count_ends,
        )

    def answered(self, budgets: tuple[Budget, ...], grant: Grant | None) -> None:
        """A call answered (or given up) after the granule its grant was counted in ended: it
        may have reached the server after it, so it is counted again in the answer's granule
        (``lua/budget_recount.lua``) -- a round trip only for such late answers."""
        if grant is None or not grant.fields or time.time() <= grant.count_ends:
            return
        keys, args = [], []
        for budget, field in zip(budgets, grant.fields, strict=False):
            if budget.granule and field:
                keys.append(self.keys.ratelimit(self.connection_id, budget.name) + ":n")
                args += [field, int(budget.granule * 1000), int(budget.window * 1000)]
        if keys:
            _RECOUNT(self.client, keys, args)

    def hand_back(self, budgets: tuple[Budget, ...], grant: Grant) -> None:
        """A grant that was not sent in time (``Grant.late``): never sent now.  Its probe place
        is free at once; its count and credit go back with the process's next round trip, as a
        lease's leftovers do (without a pool of grants it stays counted: never too few)."""
        self.release(grant)
        if self.pools is not None and budgets and grant.fields:
            self.pools.add((self.connection_id, tuple(b.name for b in budgets)), grant.unsent())

    def acquire_soon(self, budgets: tuple[Budget, ...], *, has_slot: bool, stop: Callable[[], bool]) -> Grant:
        """:meth:`acquire`, waiting in-process for a probe's answer (near) until ``stop()``."""
        grant = self.acquire(budgets, has_slot=has_slot)
        while not (grant.granted or grant.slot or grant.reason != "throttled"):
            if grant.wait > PROBE_WAIT_SECONDS or stop():
                break
            time.sleep(max(0.01, min(grant.wait, PROBE_WAIT_SECONDS / 5)))
            grant = self.acquire(budgets, has_slot=has_slot)
        return grant

    # --- the live state -------------------------------------------------------------------

    def _pending(self, budget: Budget) -> list[object]:
        """An answer this process holds for ``budget``, to store with this round trip."""
        if self.pools is None or not budget.live:
            return ["-", 0, 0]
        return self.pools.readings.take_pending(self.connection_id, budget.name)

    def _granted(self, budgets: tuple[Budget, ...], seqs: tuple[int, ...], probes: tuple[str, ...]) -> None:
        if self.pools is not None:
            for budget, seq in zip(budgets, seqs, strict=True):
                if budget.live:
                    self.pools.readings.granted(self.connection_id, budget.name, seq, budget.name in probes)

    def release(self, grant: Grant) -> None:
        """A call answered with no word on its window (refused, failed, not read): out of the probe."""
        for name in grant.probes:
            _OBSERVE(self.client, [self.keys.ratelimit(self.connection_id, name) + ":live"], ["-", 0, 0])

    def observe(self, budgets: tuple[Budget, ...], observation: Observation, grant: Grant | None) -> None:
        """Store what an answer said about the live budgets it speaks of: at once when it
        changes what may be granted (a new window, the credit spent, none known yet), else with
        the process's next round trip."""
        live = tuple(b.name for b in budgets if b.live)  # no headers at all: each one's probe ends
        names = observation.live_budget or (live if observation.credit is None else live[:1])
        seqs = dict(zip((b.name for b in budgets), grant.seqs if grant else (), strict=False))
        for budget in budgets:
            if budget.name not in names or not budget.live:
                continue
            name, seq = budget.name, seqs.get(budget.name, 0)
            if observation.credit is None:
                credit, end_ms = "", 0
            else:
                credit = f"{observation.credit:.3f}"
                end_ms = int((observation.live_until or time.time() + budget.window) * 1000)
            if self.pools is not None and not self.pools.readings.store_now(
                self.connection_id, name, credit, seq, end_ms
            ):
                continue
            _OBSERVE(
                self.client, [self.keys.ratelimit(self.connection_id, name) + ":live"], [credit, seq, end_ms]
            )
            if self.pools is not None:
                self.pools.forget_denials(self.connection_id)

    def apply(
        self,
        budgets: tuple[Budget, ...],
        observation: Observation,
        *,
        slowdown_seconds: float,
        grant: Grant | None = None,
    ) -> bool:
        """Pause and slow the budgets an answer speaks of, store its live state; True when it
        slowed them down.  ``grant``: the call's (its grant numbers)."""
        if observation.live:
            self.observe(budgets, observation, grant)
        elif grant is not None and not observation.auth_refused:  # a refusal: the judge's to free
            self.release(grant)
        names = observation.names()
        touched = False
        for budget in budgets:
            if names is not None and budget.name not in names:
                continue
            limiter = self.limiter(budget.name)
            if observation.pause is not None:
                limiter.pause(observation.pause)
                touched = True
            if observation.slow:
                limiter.slow_down(0.5, slowdown_seconds)
        if names is not None:
            # A named budget the call did not spend (a 429 about the cycle on a bulk call, say).
            for name in set(names) - {b.name for b in budgets}:
                if observation.pause is not None:
                    self.limiter(name).pause(observation.pause)
                    touched = True
        if touched and self.pools is not None:
            self.pools.drop(self.connection_id, names)
        return observation.slow


class RateLimiter:
    """One connection's named budget (pause, slow-down; a single budget's grant for tests and
    tools)."""

    def __init__(self, client: redis.Redis, keys: Keys, connection_id: str, name: str) -> None:
        self.client = client
        self.keys = keys
        self.connection_id = connection_id
        self.name = name
        base = keys.ratelimit(connection_id, name)
        self._keys = [base, f"{base}:hint", f"{base}:pause", f"{base}:slow"]
        self._pause_until = 0.0  # epoch seconds, as last read
        self._pause_read_at = -1.0  # monotonic
        # The greenlets of a task starting together read the pause once, not each.
        self._pause_lock = threading.Lock()

    def acquire(self, budget: Budget | None, *, has_slot: bool = False) -> Grant:
        """Take one request from the budget, or learn how long to park.  With no budget only a
        pause (429) can deny, read at most every ``PAUSE_RECHECK_SECONDS`` per limiter."""
        if budget is None:
            return self._pause_only()
        named = Budget(budget.limit, budget.window, self.name, budget.cycle_start_day, budget.cycle_scale)
        return Budgets(self.client, self.keys, self.connection_id).acquire((named,), has_slot=has_slot)

    def _pause_only(self) -> Grant:
        if time.monotonic() - self._pause_read_at >= PAUSE_RECHECK_SECONDS:
            with self._pause_lock:
                mono = time.monotonic()
                if mono - self._pause_read_at >= PAUSE_RECHECK_SECONDS:
                    raw = self.client.get(self._keys[2])
                    self._pause_until = int(raw) / 1000.0 if raw is not None else 0.0
                    self._pause_read_at = mono
        now = time.time()
        if self._pause_until > now:
            return Grant(False, self._pause_until - now, int(now * 1000))
        return Grant(True, 0.0, int(now * 1000))

    def pause(self, seconds: float) -> None:
        seconds = min(MAX_SERVER_WAIT_SECONDS, seconds) if math.isfinite(seconds) else MAX_SERVER_WAIT_SECONDS
        until = _PAUSE(self.client, [self._keys[2]], [max(1, int(seconds * 1000))])
        self._pause_until = max(self._pause_until, int(until) / 1000.0)

    def slow_down(self, factor: float, seconds: float) -> None:
        self.client.set(self._keys[3], f"{max(0.01, min(1.0, factor)):.3f}", px=max(1, int(seconds * 1000)))
