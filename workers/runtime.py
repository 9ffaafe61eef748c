"""Process-wide state of a worker: settings, Redis client, HTTP transports, send slots -- and
:func:`context_for`, how a task gets its delivery context from them.

Created once per process (after Celery forks its children, :mod:`workers.worker`), so sockets
are never shared across processes.
"""

from __future__ import annotations

import os
import threading
import time
from dataclasses import dataclass, field

import redis

from connector import redisconn
from connector.config import Connection, Settings
from connector.keys import Keys
from connector.tuning import Tuning
from workers import targets
from workers.delivery.budgets import Budgets, GrantPools
from workers.delivery.context import Context
from workers.delivery.fairslots import FairSlots
from workers.delivery.transport import RequestsTransport, Transport
from workers.inwork import EventGate, max_wait_seconds
from workers.targets.voucherify_schema import MAX_LISTING_BYTES


@dataclass
class Runtime:
    settings: Settings
    redis: redis.Redis
    keys: Keys = field(default_factory=Keys)
    tuning: Tuning = field(default_factory=Tuning)
    # One pooled transport for deliveries (built on first use, sized from the tuning), and a
    # small one for reading metadata schemas (their answers are read whole, not excerpted).
    transport: Transport | None = None
    schema_transport: Transport | None = None
    # The process's send slots per target system (greenlet-aware under gevent's patching).
    send_slots: dict[str, FairSlots] = field(default_factory=dict)
    # Budget grants taken ahead, for the process's calls of the next second (one round trip per
    # burst, not per call).
    grant_pools: GrantPools = field(default_factory=GrantPools)
    # The process's bound on events in work at once (built on first use, from the tuning).
    event_gate: EventGate | None = None
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def delivery_transport(self) -> Transport:
        with self._lock:
            if self.transport is None:
                # One connection per send slot, and some for the Segment outbox's flushes.
                self.transport = RequestsTransport(pool_size=max(16, self.tuning.inflight + 16))
            return self.transport

    def events(self) -> EventGate:
        with self._lock:
            if self.event_gate is None:
                self.event_gate = EventGate(self.tuning.worker_events)
            return self.event_gate

    def gate_wait(self) -> float:
        return max_wait_seconds(self.settings.broker.visibility_timeout, self.tuning.task_budget)

    def schema_reader(self) -> Transport:
        with self._lock:
            if self.schema_transport is None:
                self.schema_transport = RequestsTransport(pool_size=2, excerpt_bytes=MAX_LISTING_BYTES)
            return self.schema_transport

    def slots(self, system: str) -> FairSlots:
        slot = self.send_slots.get(system)
        if slot is None:
            with self._lock:
                slot = self.send_slots.setdefault(system, FairSlots(self.tuning.inflight))
        return slot


def build_runtime(settings: Settings) -> Runtime:
    client = redisconn.client(
        settings.redis,
        settings.redis_tls_verify,
        socket_connect_timeout=2,
        socket_timeout=10,
        health_check_interval=10,
    )
    return Runtime(settings=settings, redis=client, keys=Keys(settings.key_prefix), tuning=settings.tuning)


def context_for(rt: Runtime, connection: Connection, direction: str) -> Context:
    """A task's delivery context towards ``direction``'s system, from the process's caches."""
    budgets = Budgets(rt.redis, rt.keys, connection.id, rt.grant_pools, targets.system_of(direction))
    target = targets.bind(
        direction,
        connection,
        client=rt.redis,
        keys=rt.keys,
        tuning=rt.tuning,
        budgets=budgets,
        schema_transport=rt.schema_reader(),
    )
    return Context(
        client=rt.redis,
        keys=rt.keys,
        tuning=rt.tuning,
        connection=connection,
        target=target,
        transport=rt.delivery_transport(),
        budgets=budgets,
        deadline=time.monotonic() + rt.tuning.task_budget,
        # Per system, not per origin: connections of one worker share its slots fairly, whatever
        # region or dedicated cluster each one calls (workers.delivery.fairslots).
        slots=rt.slots(target.name).for_connection(connection.id),
        trace_options=rt.settings.trace,
    )


_lock = threading.Lock()
_runtime: Runtime | None = None
_pid: int | None = None


def runtime() -> Runtime:
    """This process's runtime (installed by the worker's start-up, see :func:`set_runtime`)."""
    global _runtime, _pid
    if _runtime is None or _pid != os.getpid():
        with _lock:
            if _runtime is None or _pid != os.getpid():
                from workers.settings import load_settings

                _runtime = build_runtime(load_settings())
                _pid = os.getpid()
    return _runtime


def set_runtime(rt: Runtime | None) -> None:
    """For the worker's start-up, tests and the CLI: install a runtime built from explicit settings."""
    global _runtime, _pid
    _runtime = rt
    _pid = os.getpid() if rt else None
