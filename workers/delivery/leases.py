"""Grants a worker process takes ahead and shares (:mod:`workers.delivery.budgets`): a burst
costs one round trip to Redis, not one per call.  A lease holds grants for ``LEASE_SECONDS``;
what it did not use goes back with the process's next round trip -- to the counters, and to the
live credit when no answer has counted them yet (they never reached the server).

A call must be counted in every window of the server's clock its arrival falls in, and it
arrives some time after its grant.  So a grant is counted ahead of its lease's end
(:func:`ahead`) and is good until its ``send_by``, a third of that earlier: a call not on the
wire by then is not sent with it -- the grant is handed back like a lease's leftover and the
call asks again (``Budgets.hand_back``).  The rest is the way to the server; a call answered
after the granule it was counted in ended (a slow network, a stalled process or server) may
have arrived after it, so it is counted again in its answer's (``Budgets.answered``).
Measured: three loaded workers sent 122 calls in a window of 120 when grants were counted
when taken; with the look before the wire alone, 141 on a machine loaded far more (answers
taking 1.5 s)."""

from __future__ import annotations

import math
import threading
import time
from dataclasses import dataclass, field
from typing import Any

from workers.delivery.readings import Readings

LEASE_SECONDS = 1.0  # how long a process may hold grants it took for later calls
MAX_LEASE = 64  # grants taken in one round trip at the most
COUNT_AHEAD_SECONDS = 0.75  # a grant is counted this long after its lease's end...
COUNT_AHEAD_SHARE = 0.125  # ...at most this part of its shortest window (a test's tiny ones)


def ahead(shortest_window: float) -> tuple[float, float]:
    """(how long after its lease's end a grant is counted, how long it may go on the wire
    after its lease's end): it holds its budget that much longer, so its rate falls by at most
    ``COUNT_AHEAD_SHARE``; 0.75 s and 0.5 s for a window of a minute."""
    counted = min(COUNT_AHEAD_SECONDS, max(0.0, shortest_window) * COUNT_AHEAD_SHARE)
    return counted, counted * 2 / 3


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
    fields: tuple[str, ...] = ()  # per budget: the counter it is counted in (handed back: refund)
    # Epoch seconds (a planned call's item carries them): on the wire by then, or handed back;
    # answered after ``count_ends``, counted again (module doc).
    send_by: float = math.inf
    count_ends: float = math.inf

    def late(self) -> bool:
        """Granted, but too late now to go on the wire with this grant."""
        return self.granted and time.time() > self.send_by

    def unsent(self) -> Lease:
        """This grant as a lease of one, expired: what handing it back refunds."""
        return Lease(1, -math.inf, list(self.fields), self.seqs, (), self.seqs)

    def as_item(self) -> dict[str, Any]:
        """A planned call's grant as its item carries it to the attempt (``pregranted``)."""
        return {
            "fields": list(self.fields),
            "seqs": list(self.seqs),
            "send_by": self.send_by,
            "count_ends": self.count_ends,
        }

    @classmethod
    def from_item(cls, data: Any) -> Grant | None:
        """The grant an item's ``pregranted`` carries; None: none (or none readable: the call
        asks for one).  ``True`` (a plan that kept no numbers): granted, its time unknown."""
        if data is True:
            return cls(True, 0.0)
        if not isinstance(data, dict):
            return None
        try:
            return cls(
                True,
                0.0,
                seqs=tuple(int(s) for s in data.get("seqs") or ()),
                fields=tuple(str(f) for f in data.get("fields") or ()),
                send_by=_seconds(data.get("send_by")),
                count_ends=_seconds(data.get("count_ends")),
            )
        except (TypeError, ValueError):
            return None


def _seconds(value: Any) -> float:
    """A planned grant's time as its item carried it (``None``: JSON's word for infinity)."""
    return float(value) if isinstance(value, int | float) else math.inf


@dataclass
class Lease:
    count: int  # grants left
    expires: float  # monotonic
    fields: list[str]  # per budget: the counter the grants were counted in (refund)
    seqs: tuple[int, ...] = ()  # per budget: the lease's first grant number (its calls' answers)
    probes: tuple[str, ...] = ()
    last: tuple[int, ...] = ()  # per budget: the lease's last grant number (0: not numbered)
    send_by: float = math.inf  # epoch seconds: its grants on the wire by then (module doc)
    count_ends: float = math.inf  # epoch seconds: when the granule its grants were counted in ends

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
                    if expired is not None:
                        pool.leases.append(expired)  # handed back with the next round trip
                    grant = Grant(
                        True,
                        0.0,
                        int(time.time() * 1000),
                        seqs=lease.seqs,
                        probes=lease.probes,
                        fields=tuple(lease.fields),
                        send_by=lease.send_by,
                        count_ends=lease.count_ends,
                    )
                    return grant, None, 0
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
