"""Fleet-wide counters (SPEC 16): the counters an operator alerts on, summed in Redis over every
process of every machine, and read from there by any web process's ``/metrics``.

Why not the processes' own counters: Prometheus scrapes the web only.  Worker dynos (Heroku) have
no port and share no directory with the web, several web dynos each answer with their own
numbers, and without ``PROMETHEUS_MULTIPROC_DIR`` even one web's gunicorn workers disagree.  The
fleet's totals live where every process already writes: Redis.

Layout (``{p}`` the key prefix, :mod:`connector.keys`)::

    {p}fleet:{c}    hash   JSON [counter, label values but the connection] -> total (integer)
    {p}fleets       set    connection ids that have such a hash (what a scrape reads)

The fields are bounded: every label of these counters takes values from a bounded set already
(configured connections, directions, regions, fixed reasons and outcomes, HTTP statuses).

Cost: an increment is a dict update in memory (:class:`Accumulator`); each process writes its
deltas every ``CONNECTOR_METRICS_FLUSH_SECONDS`` (5) from a background thread in one MULTI/EXEC
of HINCRBY -- never a Redis command per event -- and once more when it stops (the worker's
orderly stop, gunicorn's ``worker_exit``, the scheduler's end).  A web process writes its own
deltas before it answers a scrape.  So the fleet's totals lag by at most one flush period, and a
process killed -9 loses at most that period's counts.  When Redis does not answer, the deltas
stay in memory for the next flush (bounded: the same label sets).
"""

from __future__ import annotations

import atexit
import contextlib
import logging
import os
import threading
from collections.abc import Iterator
from dataclasses import dataclass

import orjson
import redis
from prometheus_client.core import CounterMetricFamily

from connector.keys import Keys

log = logging.getLogger("connector.metrics")

DEFAULT_FLUSH_SECONDS = 5.0
CONNECTION = "connection"

# (family, connection, the other label values): a delta not yet written.
Slot = tuple[str, str, tuple[str, ...]]


@dataclass(frozen=True)
class Definition:
    """A fleet counter: its family name (``connector_fleet_deliveries``: Prometheus shows
    ``..._total``), help text and labels, ``connection`` first."""

    name: str
    documentation: str
    labels: tuple[str, ...]


_definitions: dict[str, Definition] = {}


def define(name: str, documentation: str, labels: tuple[str, ...]) -> Definition:
    if not labels or labels[0] != CONNECTION:
        raise ValueError(f"{name}: a fleet counter is kept per connection (its first label)")
    found = _definitions.setdefault(name, Definition(name, documentation, labels))
    if found.labels != labels:
        raise ValueError(f"{name} defined twice with different labels")
    return found


def definitions() -> list[Definition]:
    return list(_definitions.values())


def field(family: str, values: tuple[str, ...]) -> bytes:
    return orjson.dumps([family, *values])


class Accumulator:
    """Counter deltas of one process, written to Redis by :meth:`flush`.  Thread- and
    greenlet-safe: the web's and the workers' requests and tasks count concurrently."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._deltas: dict[Slot, int] = {}

    def add(self, family: str, connection: str, rest: tuple[str, ...], amount: int) -> None:
        self.add_slot((family, connection, rest), amount)

    def add_slot(self, slot: Slot, amount: int) -> None:
        if amount <= 0:  # counters only go up (prometheus_client refuses negative ones too)
            return
        with self._lock:
            self._deltas[slot] = self._deltas.get(slot, 0) + amount

    def pending(self) -> dict[Slot, int]:
        with self._lock:
            return dict(self._deltas)

    def forget(self) -> None:
        """Drop what is pending, with a fresh lock: a forked child starts with its parent's
        memory (the parent writes those deltas itself) and maybe a lock held at the fork."""
        self._lock = threading.Lock()
        self._deltas = {}

    def flush(self, client: redis.Redis, keys: Keys) -> int:
        """Write the pending deltas in one round trip; the number of fields written.  On a Redis
        error they are kept for the next flush (and the error logged, not raised: a count is
        never worth a failed request or task)."""
        with self._lock:
            deltas, self._deltas = self._deltas, {}
        if not deltas:
            return 0
        pipe = client.pipeline(transaction=True)  # all of a flush or nothing: no half-counted batch
        connections = sorted({connection for _, connection, _ in deltas})
        pipe.sadd(keys.fleets(), *connections)
        for (family, connection, rest), amount in deltas.items():
            pipe.hincrby(keys.fleet(connection), field(family, rest), amount)
        try:
            pipe.execute()
        except redis.RedisError as exc:
            with self._lock:
                for slot, amount in deltas.items():
                    self._deltas[slot] = self._deltas.get(slot, 0) + amount
            log.warning(
                "fleet counters not written, kept for the next flush", extra={"error": str(exc)[:200]}
            )
            return 0
        return len(deltas)


def read(client: redis.Redis, keys: Keys) -> list[CounterMetricFamily]:
    """Every fleet counter's totals, per connection, as Prometheus families (each defined family,
    also when nothing counted it yet).  Raises :class:`redis.RedisError`."""
    raw_ids = client.smembers(keys.fleets())
    ids = sorted(i.decode() if isinstance(i, bytes) else str(i) for i in raw_ids)
    pipe = client.pipeline(transaction=False)
    for connection in ids:
        pipe.hgetall(keys.fleet(connection))
    hashes = pipe.execute() if ids else []
    families = {
        d.name: CounterMetricFamily(d.name, d.documentation, labels=list(d.labels)) for d in definitions()
    }
    for connection, fields in zip(ids, hashes, strict=True):
        for name, values, total in _parse(fields):
            definition = _definitions.get(name)
            # A field of an older release (another counter or label set) is left out, not guessed.
            if definition is not None and len(values) + 1 == len(definition.labels):
                families[name].add_metric([connection, *values], total)
    return list(families.values())


def _parse(fields: dict[bytes, bytes]) -> Iterator[tuple[str, list[str], int]]:
    for raw, total in fields.items():
        try:
            name, *values = orjson.loads(raw)
            yield str(name), [str(v) for v in values], int(total)
        except (orjson.JSONDecodeError, ValueError, TypeError):
            continue


# --- this process ---------------------------------------------------------------------------


class _Process:
    """The process's accumulator and where it writes (set by the entry point, :func:`configure`)."""

    def __init__(self) -> None:
        self.accumulator = Accumulator()
        self.client: redis.Redis | None = None
        self.keys = Keys()
        self.interval = DEFAULT_FLUSH_SECONDS
        self.flusher_pid: int | None = None
        self.wake = threading.Event()
        self.starting = threading.Lock()


_process = _Process()


def configure(client: redis.Redis, keys: Keys, interval: float = DEFAULT_FLUSH_SECONDS) -> None:
    """Where this process writes its deltas, and how often.  Without it (a CLI command, a unit
    test) counts stay in memory: nothing is written."""
    _process.client = client
    _process.keys = keys
    _process.interval = max(0.05, interval)


def slot(family: str, values: tuple[str, ...]) -> Slot:
    """Where :func:`add_slot` counts ``family`` with ``values`` (its labels, the connection first):
    made once per label set (the hot path adds to it thousands of times a second)."""
    return (family, values[0], values[1:])


def add(family: str, values: tuple[str, ...], amount: int) -> None:
    """Count ``amount`` for ``family`` (``values``: its label values, the connection first)."""
    add_slot(slot(family, values), amount)


def add_slot(where: Slot, amount: int) -> None:
    _process.accumulator.add_slot(where, amount)
    # The fork hook clears flusher_pid: no getpid() per count.
    if _process.flusher_pid is None and _process.client is not None:
        _start_flusher()


def flush() -> int:
    """Write this process's pending deltas now (at stop, before a scrape); fields written."""
    if _process.client is None:
        return 0
    return _process.accumulator.flush(_process.client, _process.keys)


def flush_within(seconds: float) -> None:
    """:func:`flush` for a process that is about to exit: waits ``seconds`` at most (a Redis that
    does not answer must not hold a stop past the platform's SIGKILL; those counts are lost)."""
    writer = threading.Thread(target=_flush_quietly, name="fleet-metrics-last-flush", daemon=True)
    writer.start()
    writer.join(seconds)


def pending() -> dict[Slot, int]:
    return _process.accumulator.pending()


def _start_flusher() -> None:
    # Started by the first count of each process, not at configure(): gunicorn preloads the app,
    # then forks, and a thread does not survive a fork.  One per process, whoever counts first.
    with _process.starting:
        if _process.flusher_pid is not None:
            return
        _process.flusher_pid = os.getpid()
    threading.Thread(target=_loop, name="fleet-metrics-flush", daemon=True).start()


def _loop() -> None:
    me = os.getpid()
    while _process.flusher_pid == me:
        _process.wake.wait(_process.interval)
        with contextlib.suppress(Exception):  # never let the flusher die
            flush()


def _forked() -> None:
    _process.accumulator.forget()
    _process.flusher_pid = None
    _process.wake = threading.Event()
    _process.starting = threading.Lock()


os.register_at_fork(after_in_child=_forked)


# A process that ends by returning from main (the scheduler, a CLI command) writes what is left;
# the workers and gunicorn's workers flush in their stop hooks as well (an os._exit skips this).
def _flush_quietly() -> None:
    with contextlib.suppress(Exception):
        flush()


atexit.register(_flush_quietly)
