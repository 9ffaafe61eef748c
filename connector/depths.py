"""What is waiting, read from Redis: broker queues, parked work, dead letters, backlogs, budgets.

One read used by ``GET /metrics`` (at scrape time), the status page and ``connector stats``.
Cheap by construction: LLEN per queue, ZCARD/ZCOUNT on the delayed store, one HGETALL of the
dead-letter counts, a GET per connection backlog -- all in one pipeline; never a record load.
Pure Redis (no HTTP client): the web process imports it.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any, Protocol

import orjson
import redis

from connector.config import Connection, Settings
from connector.contract import SYSTEMS
from connector.keys import Keys
from connector.quotas import cycle_window


class BudgetLike(Protocol):
    """A named budget (``workers.delivery.budgets.Budget``): read here, defined by the targets."""

    @property
    def name(self) -> str: ...
    @property
    def limit(self) -> int | None: ...
    @property
    def window(self) -> float: ...
    @property
    def granule(self) -> float: ...  # seconds per counter; 0: a billing cycle
    @property
    def cycle_start_day(self) -> int | None: ...
    @property
    def cycle_scale(self) -> float: ...


@dataclass
class RateLimitState:
    target: str
    limit: int | None  # requests per window, None when unbounded
    window_seconds: float
    used: int  # grants in the current window
    paused_for_seconds: float  # > 0 while the target asked us to wait (429)
    slow_factor: float  # 1.0, or less after a low X-Rate-Limit-Remaining / a 429


@dataclass
class ConnectionState:
    id: str
    backlog: int
    backlog_limit: int
    dead_letters: int
    rate_limits: list[RateLimitState] = field(default_factory=list)
    # None, or {"reason": "auth", "since": epoch s}: the connection's Voucherify delivery is
    # paused (SPEC 10; the key of before pauses were per system).
    paused: dict[str, Any] | None = None
    # Per target system (SPEC 13): {"voucherify": None | {...}, "segment": None | {...}}.
    pauses: dict[str, dict[str, Any] | None] = field(default_factory=dict)


@dataclass
class Snapshot:
    queues: dict[str, int]
    unacked: int
    delayed: int
    delayed_due: int
    dead_letters: int
    connections: list[ConnectionState]
    dead_letters_unconfigured: dict[str, int] = field(default_factory=dict)
    taken_at: float = 0.0

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def _int(value: Any) -> int:
    try:
        return int(value) if value is not None else 0
    except (TypeError, ValueError):
        return 0


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value


def _pause(raw: Any) -> dict[str, Any] | None:
    """A connection's pause record (workers.delivery.pauses writes it)."""
    if raw is None:
        return None
    try:
        data = orjson.loads(raw)
        return {"reason": str(data.get("reason") or "auth"), "since": float(data.get("since") or 0.0)}
    except (orjson.JSONDecodeError, TypeError, ValueError, AttributeError):
        return {"reason": "auth", "since": 0.0}


def queue_names(settings: Settings) -> list[str]:
    return settings.voucherify_queues + settings.segment_queues


def snapshot(
    client: redis.Redis,
    settings: Settings,
    keys: Keys | None = None,
    *,
    budgets: Callable[[Connection], Sequence[BudgetLike]] | None = None,
) -> Snapshot:
    """Everything in one round trip (two with ``budgets``: each connection's budgets, whose
    state is read too)."""
    keys = keys or Keys(settings.key_prefix)
    now = time.time()
    queues = queue_names(settings)
    pipe = client.pipeline(transaction=False)
    for queue in queues:
        pipe.llen(keys.broker_queue(queue))  # the queue under this deployment's broker prefix
    pipe.hlen(keys.broker_unacked)
    pipe.zcard(keys.delayed)
    pipe.zcount(keys.delayed, "-inf", int(now * 1000))
    pipe.zcard(keys.dlq)
    pipe.hgetall(keys.dlq_counts)
    for connection in settings.connections:
        pipe.get(keys.backlog(connection.id))
    for connection in settings.connections:
        for system in SYSTEMS:
            pipe.get(keys.paused(connection.id, system))
    results = pipe.execute()
    depth = {queue: _int(n) for queue, n in zip(queues, results[: len(queues)], strict=True)}
    rest = results[len(queues) :]
    unacked, delayed, due, dlq_total, dlq_raw = rest[:5]
    count = len(settings.connections)
    backlogs = rest[5 : 5 + count]
    flat = rest[5 + count : 5 + count + count * len(SYSTEMS)]
    pauses = [
        {system: _pause(raw) for system, raw in zip(SYSTEMS, flat[i * len(SYSTEMS) :], strict=False)}
        for i in range(count)
    ]
    dlq_counts = {_text(k): _int(v) for k, v in (dlq_raw or {}).items() if _int(v) > 0}
    states = [
        ConnectionState(
            id=c.id,
            backlog=_int(b),
            backlog_limit=c.backlog_limit,
            dead_letters=dlq_counts.pop(c.id, 0),
            paused=p[SYSTEMS[0]],
            pauses=p,
        )
        for c, b, p in zip(settings.connections, backlogs, pauses, strict=True)
    ]
    if budgets is not None:
        _add_rate_limits(client, settings, keys, states, budgets)
    return Snapshot(
        queues=depth,
        unacked=_int(unacked),
        delayed=_int(delayed),
        delayed_due=_int(due),
        dead_letters=_int(dlq_total),
        connections=states,
        dead_letters_unconfigured=dlq_counts,
        taken_at=now,
    )


def used_in_window(counts: dict[Any, Any], budget: BudgetLike, now: float) -> int:
    """A budget's grants in its current window, from its counters (layout: budgets.py)."""
    values = {_text(k): _int(v) for k, v in counts.items()}
    if budget.cycle_start_day is not None:
        start, _ = cycle_window(now, budget.cycle_start_day, budget.cycle_scale)
        return values.get(str(int(start)), 0)
    granule_ms = max(1, int(budget.granule * 1000))
    first = (int(now * 1000) - int(budget.window * 1000)) // granule_ms
    return sum(v for k, v in values.items() if k.lstrip("-").isdigit() and int(k) >= first)


def _add_rate_limits(
    client: redis.Redis,
    settings: Settings,
    keys: Keys,
    states: list[ConnectionState],
    budgets: Callable[[Connection], Sequence[BudgetLike]],
) -> None:
    targets: list[tuple[ConnectionState, BudgetLike]] = [
        (state, budget)
        for connection, state in zip(settings.connections, states, strict=True)
        for budget in budgets(connection)
    ]
    now = time.time()
    now_ms = int(now * 1000)
    pipe = client.pipeline(transaction=False)
    for state, budget in targets:
        base = keys.ratelimit(state.id, budget.name)
        pipe.hgetall(f"{base}:n")
        pipe.get(f"{base}:pause")
        pipe.get(f"{base}:slow")
    results = pipe.execute()
    for index, (state, budget) in enumerate(targets):
        counts, pause, slow = results[index * 3 : index * 3 + 3]
        try:
            factor = float(slow) if slow is not None else 1.0
        except ValueError:
            factor = 1.0
        state.rate_limits.append(
            RateLimitState(
                target=budget.name,
                limit=budget.limit,
                window_seconds=budget.window,
                used=used_in_window(counts or {}, budget, now),
                paused_for_seconds=max(0.0, (_int(pause) - now_ms) / 1000.0),
                slow_factor=factor,
            )
        )
