"""Grants a worker process takes ahead and shares (:mod:`workers.delivery.budgets`): a burst
costs one round trip to Redis, not one per call.  A lease holds grants for ``LEASE_SECONDS``;
what it did not use goes back with the process's next round trip -- to the counters, and to the
live credit when no answer has counted them yet (they never reached the server)."""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field

from workers.delivery.readings import Readings

LEASE_SECONDS = 1.0  # how long a process may hold grants it took for later calls
MAX_LEASE = 64  # grants taken in one round trip at the most


@dataclass(frozen=True)
class Grant:
    granted: bool
    wait: float  # seconds from now until the parking slot (0 when granted)
    at_ms: int = 0  # Redis server time of the decision (epoch ms)
    # Why denied: "throttled" (a budget) or "paused" (the connection, e.g. refused credentials).
    reason: str = "throttled"
    # Per budget of the call: the grant's number (live budgets; 0 otherwise), for its answer.
    seqs: tuple[int, ...] = ()
    probes: tuple[str, ...] = ()  # the budgets it was a probe of (no answer of the window known)
    slot: bool = False  # a denial with a parking slot (due then), not the probe's or a window's


@dataclass
class Lease:
    count: int  # grants left
    expires: float  # monotonic
    fields: list[str]  # per budget: the counter the grants were counted in (refund)
    seqs: tuple[int, ...] = ()  # per budget: the lease's first grant number (its calls' answers)
    probes: tuple[str, ...] = ()
    last: tuple[int, ...] = ()  # per budget: the lease's last grant number (0: not numbered)

    def unused_from(self) -> tuple[int, ...]:
        """Per budget, the first number of the grants left (the last ``count`` of the lease),
        or 0: what a refund gives back to the live credit (budget_acquire.lua)."""
        return tuple(max(0, n - self.count + 1) if n > 0 else 0 for n in self.last)

    def merged(self, other: Lease) -> Lease:
        """Two expired leases handed back in one round trip: their counts add up; the live
        credit comes back only from the lower of their first unused numbers on (never more)."""
        froms = [min(a, b) for a, b in zip(self.unused_from(), other.unused_from(), strict=False)]
        count = self.count + other.count
        return Lease(
            count,
            other.expires,
            other.fields,
            other.seqs,
            other.probes,
            tuple(f + count - 1 if f else 0 for f in froms),
        )


@dataclass
class _Pool:
    leases: list[Lease] = field(default_factory=list)
    want: int = 1  # grants the next round trip asks for
    asked_at: float = -1e9  # monotonic time of the last round trip
    denied: tuple[float, Grant] | None = None  # a non-slotted denial, until (monotonic)


class GrantPools:
    """A worker process's grants taken ahead, denials and answers (per connection and budgets):
    shared by the process's tasks and greenlets, so a burst costs a round trip, not one each."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._pools: dict[tuple[str, tuple[str, ...]], _Pool] = {}
        self.readings = Readings()

    def take(self, key: tuple[str, tuple[str, ...]], denials: bool) -> tuple[Grant | None, Lease | None, int]:
        """(a grant or -- ``denials`` -- a remembered denial, an expired lease to hand back,
        grants to ask for)."""
        with self._lock:
            pool = self._pools.setdefault(key, _Pool())
            mono = time.monotonic()
            expired = None
            live, later = [], []
            for lease in pool.leases:
                if lease.expires > mono:
                    live.append(lease)
                elif lease.count <= 0:
                    continue
                elif expired is None:
                    expired = lease
                elif expired.fields == lease.fields:
                    expired = expired.merged(lease)  # every expired lease's leftovers go back
                else:
                    # Counted in another counter (granule): a refund names one, and taking the
                    # sum from one would un-count grants that were used.  The next round trip.
                    later.append(lease)
            pool.leases = live + later
            for lease in live:  # not ``later``: expired, only to be handed back
                if lease.count > 0:
                    lease.count -= 1
                    return (
                        Grant(True, 0.0, int(time.time() * 1000), seqs=lease.seqs, probes=lease.probes),
                        None,
                        0,
                    )
            if pool.denied is not None and denials:
                until, grant = pool.denied
                if mono < until:
                    if expired is not None:
                        pool.leases.append(expired)  # handed back with the next round trip
                    return Grant(False, until - mono, int(time.time() * 1000), grant.reason), None, 0
                pool.denied = None
            # Size the next lease by the demand: it doubles while leases run dry within their
            # time, halves when one expired unused, and starts at one after a quiet while.
            if expired is not None:
                pool.want = max(1, pool.want // 2)
            elif mono - pool.asked_at < LEASE_SECONDS:
                pool.want = min(MAX_LEASE, pool.want * 2)
            elif mono - pool.asked_at > 10 * LEASE_SECONDS:
                pool.want = 1
            pool.asked_at = mono
            return None, expired, pool.want

    def add(self, key: tuple[str, tuple[str, ...]], lease: Lease) -> None:
        if lease.count <= 0:
            return
        with self._lock:
            self._pools.setdefault(key, _Pool()).leases.append(lease)

    def deny(self, key: tuple[str, tuple[str, ...]], grant: Grant) -> None:
        """Remember a denial that hands out no slot: the process's next calls of these budgets
        wait as long without a round trip each."""
        with self._lock:
            self._pools.setdefault(key, _Pool()).denied = (time.monotonic() + grant.wait, grant)

    def forget_denials(self, connection_id: str) -> None:
        """An answer changed what the budgets may grant: ask Redis again."""
        with self._lock:
            for (conn, _), pool in self._pools.items():
                if conn == connection_id:
                    pool.denied = None

    def drop(self, connection_id: str, names: tuple[str, ...] | None) -> None:
        """Forget grants of these budgets (paused: the leftovers must not be spent)."""
        with self._lock:
            for (conn, budget_names), pool in self._pools.items():
                if conn == connection_id and (names is None or set(names) & set(budget_names)):
                    pool.leases = []
                    pool.want = 1
                    pool.denied = None
