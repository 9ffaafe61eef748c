"""Request budgets shared by every worker on every machine, enforced in Redis.

A :class:`Budget` is ``limit`` requests per ``window`` for one connection, under a *name*; which
budgets a call spends, and what an answer says about them, is the target's to say
(``Target.budgets_for`` / ``Target.interpret``): Voucherify's quotas are the budgets
``api_calls_minute`` / ``_hour`` / ``_cycle``, ``bulk_calls_hour`` and ``webhook_calls_day``,
Segment's ``requests_per_second`` the budget ``segment``.  This module knows no system and no
header.

One Lua script decides atomically, on Redis's clock (workers' clocks do not matter), for ALL the
budgets of a call at once (a call denied by its second budget spends nothing of the first):

1. the connection is paused (:mod:`workers.delivery.pauses`, e.g. its credentials refused)
   -> deny, reason ``paused``;
2. a budget's ``pause`` key is set (a 429 of that quota type, or the live headers said the
   shop's reserve is reached) -> deny until it ends;
3. every budget has room -> grant (up to ``want`` calls at once, see below) and count;
4. otherwise deny, and hand out a *parking slot*: ``hint`` advances by ``window / limit`` per
   denial, so throttled work parks in the delayed store spread over the time the budget needs
   instead of stampeding back all at once.  Work coming back from such a slot (``has_slot``)
   competes only on the counts; fresh work waits behind the queue while the hint lies in the
   future, which keeps throttled work from being starved by newer events.

Counting, cheap for any limit (a log of a million grants is not an option): a *sliding window of
sub-window counters*.  A budget's window is cut into ``SUBWINDOWS`` granules; a grant increments
its granule's counter (a hash field), and a call is allowed while the granules overlapping the
last ``window`` -- the oldest one counted whole -- hold fewer than the limit.  Counting the
partly expired granule whole over-counts, never under-counts: the limit holds in EVERY window
of that length, sliding or fixed, so also in Voucherify's own windows whatever their alignment
(it blocks the shop's whole API when one is exceeded).  A billing cycle is a calendar window,
not a sliding one: a counter per cycle (:func:`connector.quotas.cycle_window`).

Grants for a whole burst at once (:class:`GrantPools`): a worker process asks for several grants
in one round trip and spends them locally within ``LEASE_SECONDS``.  They are counted in the
granule of the lease's END, so a grant used late in its lease is still counted for a whole
window after its use; every grant path (one grant, a lease, a bulk call's) therefore counts the
granules ahead of now as well, or it would miss what other processes leased there.  Grants not
used in time are handed back on the next round trip.

Adaptive slow-down: an :class:`Observation` may pause the budgets of a call (for the server's
wait, or a few seconds) and halve them for a while (``slow`` key).
"""

from __future__ import annotations

import math
import threading
import time
from dataclasses import dataclass, field

import redis

from connector.keys import Keys
from connector.lua import Lua
from connector.quotas import SUBWINDOWS, cycle_window
from workers.delivery.retries import MAX_SERVER_WAIT_SECONDS

LEASE_SECONDS = 1.0  # how long a process may hold grants it took for later calls
MAX_LEASE = 64  # grants taken in one round trip at the most
LEASE_SHARE = 100  # ...and at most this part of a budget (1 / 100)
PER_BUDGET_ARGS = 8

# KEYS: [connection pause] + per budget [counts, hint, pause, slow]
# ARGV: n, want, lease_ms, has_slot, refund, then per budget:
#   limit (0: unbounded), window_ms, granule_ms (0: fixed window), fixed field now, fixed field at
#   lease end, fixed window end ms, refund field a, refund field b
_ACQUIRE = Lua(
    """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local n = tonumber(ARGV[1])
local want = tonumber(ARGV[2])
local lease = tonumber(ARGV[3])
-- '0' fresh (waits behind the hint), '1' back from a slot, '2' a try that parks nothing (no slot)
local has_slot = ARGV[4] ~= '0'
local reserve = ARGV[4] ~= '2'
local refund = tonumber(ARGV[5])
if refund > 0 then
  for i = 0, n - 1 do
    local a = 6 + i * 8
    local key = KEYS[2 + i * 4]
    for _, f in ipairs({ARGV[a + 6], ARGV[a + 7]}) do
      if f ~= '' then
        local v = tonumber(redis.call('HGET', key, f) or '0') or 0
        if v > 0 then redis.call('HINCRBY', key, f, -math.min(v, refund)) end
      end
    end
  end
end
if redis.call('EXISTS', KEYS[1]) == 1 then
  return {0, now, now, 1}
end
local wait = 0
local worst = -1
local worst_eff = 1
local room = want
local worst_limit = 0
for i = 0, n - 1 do
  local a = 6 + i * 8
  local limit = tonumber(ARGV[a])
  local window = tonumber(ARGV[a + 1])
  local gran = tonumber(ARGV[a + 2])
  local key = KEYS[2 + i * 4]
  local pause = tonumber(redis.call('GET', KEYS[4 + i * 4]) or '0') or 0
  local w = 0
  local eff = 1
  if limit > 0 then
    -- also while paused: the parking slots handed out then are spaced at the budget's rate
    local slow = tonumber(redis.call('GET', KEYS[5 + i * 4]) or '1') or 1
    eff = math.max(1, math.floor(limit * slow))
  end
  if pause > now then
    w = pause - now
  elseif limit > 0 then
    local hint = tonumber(redis.call('GET', KEYS[3 + i * 4]) or '0') or 0
    if (not has_slot) and hint > now then
      w = hint - now
    elseif gran > 0 then
      -- Count every granule from the window's oldest on, those AHEAD of now included: a lease
      -- (ours or another process's) is counted at its end, a granule ahead, and a call asking
      -- for one grant must see it too.  Older granules are pruned, so the hash stays small.
      local first = math.floor((now - window) / gran)
      local last = math.floor((now + lease) / gran)
      local counts = {}
      local used = 0
      local all = redis.call('HGETALL', key)
      for j = 1, #all, 2 do
        local b = tonumber(all[j])
        if b and b >= first then
          local v = tonumber(all[j + 1]) or 0
          counts[b] = v
          used = used + v
          if b > last then last = b end
        end
      end
      if used >= eff then
        -- wait until enough of the oldest granules have left the window
        local need = used + 1 - eff
        local freed = 0
        w = (last + 1) * gran + window - now
        for b = first, last do
          freed = freed + (counts[b] or 0)
          if freed >= need then
            w = (b + 1) * gran + window - now
            break
          end
        end
      else
        room = math.min(room, eff - used)
      end
    else
      local used = math.max(tonumber(redis.call('HGET', key, ARGV[a + 3]) or '0') or 0,
                            tonumber(redis.call('HGET', key, ARGV[a + 4]) or '0') or 0)
      if used >= eff then
        w = math.max(1, tonumber(ARGV[a + 5]) - now)
      else
        room = math.min(room, eff - used)
      end
    end
  end
  if w > wait then
    wait = w
    worst = i
    worst_eff = eff
    worst_limit = limit
  end
end
if wait > 0 and (worst_limit == 0 or not reserve) then
  return {0, now, now + wait, 0}
end
if wait > 0 then
  local hkey = KEYS[3 + worst * 4]
  local hint = tonumber(redis.call('GET', hkey) or '0') or 0
  local window = tonumber(ARGV[6 + worst * 8 + 1])
  local interval = math.max(1, math.ceil(window / worst_eff))
  local slot = math.max(hint + interval, now + wait)
  redis.call('SET', hkey, slot, 'PX', math.max(1, slot - now + window))
  return {0, now, slot, 0}
end
local g = math.max(1, room)
local out = {g, now, now, 0}
for i = 0, n - 1 do
  local a = 6 + i * 8
  local window = tonumber(ARGV[a + 1])
  local gran = tonumber(ARGV[a + 2])
  local key = KEYS[2 + i * 4]
  if gran > 0 then
    local b = math.floor((now + lease) / gran)
    if redis.call('HINCRBY', key, tostring(b), g) == g then
      local first = math.floor((now - window) / gran)
      for _, f in ipairs(redis.call('HKEYS', key)) do
        if (tonumber(f) or 0) < first then redis.call('HDEL', key, f) end
      end
    end
    redis.call('PEXPIRE', key, window + lease + gran + 1000)
    out[#out + 1] = tostring(b)
  else
    redis.call('HINCRBY', key, ARGV[a + 3], g)
    if ARGV[a + 4] ~= ARGV[a + 3] then redis.call('HINCRBY', key, ARGV[a + 4], g) end
    redis.call('PEXPIRE', key, math.max(1000, tonumber(ARGV[a + 5]) - now) + window)
    out[#out + 1] = ARGV[a + 4]
  end
end
return out
"""
)

_PAUSE = Lua(
    """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local untl = now + tonumber(ARGV[1])
local cur = tonumber(redis.call('GET', KEYS[1]) or '0') or 0
if untl > cur then
  redis.call('SET', KEYS[1], untl, 'PX', tonumber(ARGV[1]) + 1000)
end
return untl
"""
)


@dataclass(frozen=True)
class Grant:
    granted: bool
    wait: float  # seconds from now until the parking slot (0 when granted)
    at_ms: int = 0  # Redis server time of the decision (epoch ms)
    # Why denied: "throttled" (a budget) or "paused" (the connection, e.g. refused credentials).
    reason: str = "throttled"


@dataclass(frozen=True)
class Budget:
    limit: int | None  # requests per window; None: unbounded (only a pause can deny)
    window: float = 60.0  # seconds
    name: str = ""  # {p}rl:{connection}:{name}
    # A billing cycle (fixed calendar windows from this day, UTC) instead of a sliding window.
    cycle_start_day: int | None = None
    cycle_scale: float = 1.0  # a test clock's speed (CONNECTOR_QUOTA_PERIOD_SCALE)

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

    def names(self) -> tuple[str, ...] | None:
        if self.budget is None:
            return None
        return (self.budget,) if isinstance(self.budget, str) else self.budget


PAUSE_RECHECK_SECONDS = 0.25


def _fields(budget: Budget, now: float, lease: float) -> tuple[str, str, int]:
    """A cycle budget's counter fields (the cycle now, the cycle at the lease's end: a lease
    across the boundary counts in both) and the current cycle's end (epoch ms)."""
    if budget.cycle_start_day is None:
        return "", "", 0
    start, end = cycle_window(now, budget.cycle_start_day, budget.cycle_scale)
    later, _ = cycle_window(now + lease, budget.cycle_start_day, budget.cycle_scale)
    return str(int(start)), str(int(later)), int(end * 1000)


@dataclass
class _Lease:
    count: int  # grants left
    expires: float  # monotonic
    fields: list[str]  # per budget: the counter the grants were counted in (refund)


@dataclass
class _Pool:
    leases: list[_Lease] = field(default_factory=list)
    want: int = 1  # grants the next round trip asks for
    asked_at: float = -1e9  # monotonic time of the last round trip


class GrantPools:
    """A worker process's grants taken ahead (per connection and budget set): one Redis round
    trip per burst of calls, not per call.  Shared by the process's tasks and greenlets."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._pools: dict[tuple[str, tuple[str, ...]], _Pool] = {}

    def take(self, key: tuple[str, tuple[str, ...]]) -> tuple[bool, _Lease | None, int]:
        """(granted locally, an expired lease to hand back, how many grants to ask for)."""
        with self._lock:
            pool = self._pools.setdefault(key, _Pool())
            mono = time.monotonic()
            expired = None
            live = []
            for lease in pool.leases:
                if lease.expires <= mono:
                    if lease.count > 0:
                        expired = lease
                else:
                    live.append(lease)
            pool.leases = live
            for lease in live:
                if lease.count > 0:
                    lease.count -= 1
                    return True, None, 0
            # Size the next lease by the demand: it doubles while leases run dry within their
            # time, halves when one expired unused, and starts at one after a quiet while.
            if expired is not None:
                pool.want = max(1, pool.want // 2)
            elif mono - pool.asked_at < LEASE_SECONDS:
                pool.want = min(MAX_LEASE, pool.want * 2)
            elif mono - pool.asked_at > 10 * LEASE_SECONDS:
                pool.want = 1
            pool.asked_at = mono
            return False, expired, pool.want

    def add(self, key: tuple[str, tuple[str, ...]], lease: _Lease) -> None:
        if lease.count <= 0:
            return
        with self._lock:
            self._pools.setdefault(key, _Pool()).leases.append(lease)

    def drop(self, connection_id: str, names: tuple[str, ...] | None) -> None:
        """Forget grants of these budgets (paused: the leftovers must not be spent)."""
        with self._lock:
            for (conn, budget_names), pool in self._pools.items():
                if conn == connection_id and (names is None or set(names) & set(budget_names)):
                    pool.leases = []
                    pool.want = 1


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

    def acquire(self, budgets: tuple[Budget, ...], *, has_slot: bool = False, parks: bool = True) -> Grant:
        """One call's grant from every budget of ``budgets`` at once, or how long to park.
        ``parks=False``: the caller will not park at a parking slot when denied (a try: bulk or
        singles, a probe) -- none is reserved, so later work does not wait behind a ghost."""
        if not budgets:
            return Grant(True, 0.0, int(time.time() * 1000))
        never = [b for b in budgets if b.limit == 0]
        if never:
            # A budget of nothing (bulk_calls_per_hour = 0): never granted, asked again later.
            return Grant(False, never[0].window, int(time.time() * 1000))
        key = (self.connection_id, tuple(b.name for b in budgets))
        expired: _Lease | None = None
        want = 1
        if self.pools is not None:
            local, expired, want = self.pools.take(key)
            if local:
                return Grant(True, 0.0, int(time.time() * 1000))
            # Grants taken ahead are held from the other processes until used or handed back:
            # only for budgets large enough that a lease is a small part of them (a small budget
            # is shared call by call, or hoarded grants would leave the others waiting).
            caps = [max(1, b.limit // LEASE_SHARE) for b in budgets if b.limit]
            want = max(1, min(want, MAX_LEASE, *caps)) if caps else min(want, MAX_LEASE)
        granules = [b.granule for b in budgets if b.granule > 0]
        lease = min([LEASE_SECONDS, *granules]) if want > 1 else 0.0
        started = time.monotonic()
        now = time.time()
        mode = "2" if not parks else "1" if has_slot else "0"  # see the script's has_slot
        args: list[object] = [len(budgets), want, int(lease * 1000), mode]
        args.append(expired.count if expired is not None else 0)
        redis_keys = [self.keys.paused(self.connection_id, self.system)]
        for i, budget in enumerate(budgets):
            base = self.keys.ratelimit(self.connection_id, budget.name)
            # ":n": the counters (a new key: the old layout was a zset under the bare name).
            redis_keys += [f"{base}:n", f"{base}:hint", f"{base}:pause", f"{base}:slow"]
            fixed_now, fixed_later, fixed_end = _fields(budget, now, lease)
            refund = expired.fields[i] if expired is not None and i < len(expired.fields) else ""
            args += [
                budget.limit or 0,
                max(1, int(budget.window * 1000)),
                int(budget.granule * 1000),
                fixed_now,
                fixed_later,
                fixed_end,
                refund,
                "",
            ]
        out = _ACQUIRE(self.client, redis_keys, args)
        granted, at, slot, paused = int(out[0]), int(out[1]), int(out[2]), int(out[3])
        if granted <= 0:
            reason = "paused" if paused else "throttled"
            return Grant(False, max(0.0, (slot - at) / 1000.0), at, reason)
        if self.pools is not None and granted > 1:
            fields = [f.decode() if isinstance(f, bytes) else str(f) for f in out[4:]]
            self.pools.add(key, _Lease(granted - 1, started + lease, fields))
        return Grant(True, 0.0, at)

    def apply(
        self, budgets: tuple[Budget, ...], observation: Observation, *, slowdown_seconds: float
    ) -> bool:
        """Pause and slow the budgets an answer speaks of; True when it slowed them down."""
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
        """Take one request from the budget, or learn how long to park.

        With no budget only a pause (429) can deny; it is then read at most every
        ``PAUSE_RECHECK_SECONDS`` per limiter instead of once per request.
        """
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
