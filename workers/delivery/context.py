"""A task's context: everything about (connection, target) the delivery code needs, built once
per task by :func:`workers.runtime.context_for` from the process's caches."""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field

import redis

from connector import backlog
from connector.config import Connection
from connector.contract import DESTINATION
from connector.keys import Keys
from connector.trace import Recorder
from connector.tuning import TraceOptions, Tuning
from workers.delivery import shutdown
from workers.delivery.budgets import Budgets
from workers.delivery.deadletters import DeadLetters
from workers.delivery.fairslots import ConnectionSlots
from workers.delivery.ledger import Ledger
from workers.delivery.stale import StaleGuard
from workers.delivery.target import Target
from workers.delivery.transport import Transport


@dataclass
class SuppressionSeen:
    """What a task read of its connection's suppressed set (workers.delivery.suppression)."""

    flags: dict[str, bool] = field(default_factory=dict)  # subject -> suppressed
    at: float = 0.0  # time.monotonic() of the read the flags date from


@dataclass
class Context:
    client: redis.Redis
    keys: Keys
    tuning: Tuning
    connection: Connection
    target: Target
    transport: Transport
    budgets: Budgets
    deadline: float = 0.0  # time.monotonic() after which work is parked, not started
    slots: ConnectionSlots | None = None  # send slots towards the target (None: no bound)
    trace_options: TraceOptions = field(default_factory=TraceOptions)
    # The task's trace records and overview counts, written once when the task ends (flush).
    trace: Recorder = field(init=False)
    ledger: Ledger = field(init=False)
    stale: StaleGuard = field(init=False)
    dead_letters: DeadLetters = field(init=False)
    _units: int = field(init=False, default=0)
    _bytes: int = field(init=False, default=0)
    _calls: int = field(init=False, default=0)  # calls made to the target (the forecast's count)
    _units_lock: threading.Lock = field(init=False, default_factory=threading.Lock)
    # Batch-shared objects by digest (connector.contract.shared_digest), as this task knows
    # them: the mapping task puts the fresh ones here; a later stage reads them from Redis.
    _shared: dict[str, bytes | None] = field(init=False, default_factory=dict)
    suppressed_seen: SuppressionSeen = field(init=False, default_factory=SuppressionSeen)
    suppressed_lock: threading.Lock = field(init=False, default_factory=threading.Lock)

    def __post_init__(self) -> None:
        self.ledger = Ledger(self.client, self.keys, self.connection_id)
        self.stale = StaleGuard(self.client, self.keys, self.connection_id)
        self.dead_letters = DeadLetters(self.client, self.keys)
        # Records that name no connection (mappings, attempts) are this task's connection's.
        self.trace = Recorder(self.keys, self.trace_options, connection=self.connection_id)

    # The target's data, as the delivery code reads it.
    @property
    def connection_id(self) -> str:
        return self.connection.id

    @property
    def direction(self) -> str:
        return self.target.direction

    @property
    def queue(self) -> str:
        return self.target.queue

    @property
    def region(self) -> str:
        return self.target.region

    @property
    def base_url(self) -> str:
        return self.target.base_url

    @property
    def window(self) -> float:
        return self.tuning.retry_window(float(self.connection.retry_window_seconds))

    @property
    def ledger_keep(self) -> float:
        return self.window + self.tuning.ledger_extra

    def out_of_time(self) -> bool:
        """The task's time budget is spent, or the worker is stopping: start nothing new."""
        return time.monotonic() >= self.deadline or shutdown.stopping()

    def remember_shared(self, digest: str, blob: bytes) -> None:
        self._shared[digest] = blob

    def shared_blob(self, digest: str | None) -> bytes | None:
        """The JSON of the batch objects ``digest`` names (None: unknown or expired)."""
        if not digest:
            return None
        if digest not in self._shared:
            raw = self.client.get(self.keys.shared(self.connection_id, digest))
            self._shared[digest] = raw if isinstance(raw, bytes) or raw is None else str(raw).encode()
        return self._shared[digest]

    def release_backlog(self, units: int, stored_bytes: int = 0) -> None:
        # Collected and released once per task (flush_backlog): a round trip per task, not per
        # event.  A task that dies before flushing leaves them reserved: its redelivery finds
        # the events done (ledger) and releases them then.
        if units or stored_bytes:
            with self._units_lock:
                self._units += units
                self._bytes += stored_bytes

    def count_call(self) -> None:
        with self._units_lock:
            self._calls += 1

    def flush_backlog(self) -> None:
        with self._units_lock:
            units, self._units = self._units, 0
            stored, self._bytes = self._bytes, 0
            calls, self._calls = self._calls, 0
        # Towards Voucherify, the events finished and the calls made are counted for the
        # forecast (calls per event), in the same round trip.
        flow = calls if self.direction == DESTINATION else None
        if units or stored or flow:
            backlog.release(self.client, self.connection_id, units, stored, keys=self.keys, calls=flow)
        self.trace.flush(self.client)
