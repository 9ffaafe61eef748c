"""Request budgets shared by every worker on every machine, enforced in Redis.

A :class:`Budget` is ``limit`` requests per ``window`` for one connection, under a *name*; which
budgets a call spends, and what an answer says about them, is the target's to say
(``Target.budgets_for`` / ``Target.interpret``): Voucherify's ``rate_limit_per_minute`` per 60 s
is the budget ``voucherify``, Segment's ``requests_per_second`` per 1 s the budget ``segment``.
This module knows no system and no header.

One Lua script decides atomically, on Redis's clock (workers' clocks do not matter):

1. ``pause`` key set (the target answered 429 / asked us to wait)  -> deny until it ends;
2. a *sliding-window log* (zset of grant times) holds fewer than ``limit * slow`` grants in the
   last ``window`` -> grant and record.  A log, not a token bucket, because the budget must
   NEVER be exceeded in any window (Voucherify blocks the project's API access if it is);
3. otherwise deny, and hand out a *parking slot*: ``hint`` advances by ``window / limit`` per
   denial, so throttled work parks in the delayed store spread over the time the budget needs
   instead of stampeding back all at once.  Work coming back from such a slot (``has_slot``)
   competes only on the log; fresh work waits behind the queue while the hint lies in the future,
   which keeps throttled work from being starved by newer events.

Adaptive slow-down: an :class:`Observation` may pause the budgets of a call (for the server's
wait, or a few seconds) and halve them for a while (``slow`` key), because other clients of the
same project spend the same quota.
"""

from __future__ import annotations

import math
import threading
import time
import uuid
from dataclasses import dataclass

import redis

from connector.keys import Keys
from connector.lua import Lua
from workers.delivery.retries import MAX_SERVER_WAIT_SECONDS

_ACQUIRE = Lua(
    """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local limit = tonumber(ARGV[1])
local window = tonumber(ARGV[2])
local has_slot = ARGV[4] == '1'
local slow = tonumber(redis.call('GET', KEYS[4]) or '1') or 1
local eff = math.max(1, math.floor(limit * slow))
local pause = tonumber(redis.call('GET', KEYS[3]) or '0') or 0
local hint = tonumber(redis.call('GET', KEYS[2]) or '0') or 0
local wait = 0
if pause > now then
  wait = pause - now
elseif (not has_slot) and hint > now then
  wait = hint - now
else
  redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now - window)
  local n = redis.call('ZCARD', KEYS[1])
  if n < eff then
    redis.call('ZADD', KEYS[1], now, ARGV[3])
    redis.call('PEXPIRE', KEYS[1], window + 1000)
    return {1, now, now}
  end
  local oldest = redis.call('ZRANGE', KEYS[1], n - eff, n - eff, 'WITHSCORES')
  wait = tonumber(oldest[2]) + window - now + 1
end
local interval = math.max(1, math.ceil(window / eff))
local slot = math.max(hint + interval, now + wait)
redis.call('SET', KEYS[2], slot, 'PX', math.max(1, slot - now + window))
return {0, now, slot}
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


@dataclass(frozen=True)
class Budget:
    limit: int | None  # requests per window; None: unbounded (only a pause can deny)
    window: float = 60.0  # seconds
    name: str = ""  # {p}rl:{connection}:{name} (the target's name: "voucherify", "segment")


@dataclass(frozen=True)
class Observation:
    """What one answer says about the budgets the call spent (``Target.interpret``)."""

    wait: float | None = None  # the server's requested wait: a floor for the next try
    pause: float | None = None  # stop spending these budgets for this long (seconds)
    slow: bool = False  # halve these budgets for a while (a 429, little quota left)
    # Only this named budget (a quota type the answer names); None: every budget of the call.
    budget: str | None = None


PAUSE_RECHECK_SECONDS = 0.25


class RateLimiter:
    """One connection's named budget.  Instances live for one task."""

    def __init__(self, client: redis.Redis, keys: Keys, connection_id: str, name: str) -> None:
        self.client = client
        base = keys.ratelimit(connection_id, name)
        self._keys = [base, f"{base}:hint", f"{base}:pause", f"{base}:slow"]
        self._pause_until = 0.0  # epoch seconds, as last read
        self._pause_read_at = -1.0  # monotonic
        # The greenlets of a task starting together read the pause once, not each.
        self._pause_lock = threading.Lock()

    def acquire(self, budget: Budget | None, *, has_slot: bool = False) -> Grant:
        """Take one request from the budget, or learn how long to park.

        With no budget configured only a pause (429) can deny; it is then read at most every
        ``PAUSE_RECHECK_SECONDS`` per task instead of once per request (a round trip saved per
        event; a pause noticed 250 ms late costs a few extra 429s, which are retried anyway).
        """
        if budget is None:
            return self._pause_only()
        granted, now, slot = _ACQUIRE(
            self.client,
            self._keys,
            [budget.limit, max(1, int(budget.window * 1000)), uuid.uuid4().hex, "1" if has_slot else "0"],
        )
        if int(granted) == 1:
            return Grant(True, 0.0, int(now))
        return Grant(False, max(0.0, (int(slot) - int(now)) / 1000.0), int(now))

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


class Budgets:
    """One connection's budgets for one task: a limiter per budget name."""

    def __init__(self, client: redis.Redis, keys: Keys, connection_id: str) -> None:
        self.client = client
        self.keys = keys
        self.connection_id = connection_id
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

    def acquire(self, budgets: tuple[Budget, ...], *, has_slot: bool = False) -> Grant:
        """One request from each budget of a call, in order; the first denial is the answer."""
        grant = Grant(True, 0.0)
        for budget in budgets:
            grant = self.limiter(budget.name).acquire(budget if budget.limit else None, has_slot=has_slot)
            if not grant.granted:
                return grant
        return grant

    def apply(
        self, budgets: tuple[Budget, ...], observation: Observation, *, slowdown_seconds: float
    ) -> bool:
        """Pause and slow the budgets an answer speaks of; True when it slowed them down."""
        for budget in budgets:
            if observation.budget is not None and budget.name != observation.budget:
                continue
            limiter = self.limiter(budget.name)
            if observation.pause is not None:
                limiter.pause(observation.pause)
            if observation.slow:
                limiter.slow_down(0.5, slowdown_seconds)
        return observation.slow
