"""Event traces (SPEC 12, ``connector trace ID``): the journey of one event, kept in Redis.

An event's trace is its records -- received, mapping (the head: the first MAX_HEAD kept);
attempts, waits, outcomes (the steps: the newest MAX_STEPS kept) -- keyed by its connection and
its id (a Segment ``messageId`` or a Voucherify event id: the client's, so one connection's
client cannot reach another connection's traces by reusing its ids).  Where they live, compactly
and within a budget, is :mod:`connector.tracestore`; reading them, :mod:`connector.tracereader`.

Voucherify's answers are kept as excerpts without customer data (:func:`answer_excerpt`): the
status, error code/key/message fields and ids of the JSON, never names, emails or metadata.

They expire ``TRACE_RETENTION_HOURS`` (default 24) after the last write to their bucket.  Memory
is bounded: each record is a few hundred bytes at most (answer excerpts are cut, never a
payload, never a header), records a batch shares are stored once, each id holds at most MAX_HEAD
+ MAX_STEPS records per bucket, all traces together at most ``TRACE_MEMORY_MB`` (skipped and
refused ones a share of it: a flood of junk never pushes out what an operator looks for), and
when a connection receives more than ``TRACE_SAMPLE_ABOVE_PER_MINUTE`` events a minute only 1 in
N delivered events keeps its trace (N = rate / that bound, chosen by a hash of the id, so every
process agrees).  Failures (dead letters, retries) and skips are ALWAYS kept: they are what an
operator looks for.  Events refused at the ingest carry ids the client chose: at most
``MAX_REFUSED_PER_FLUSH`` of them are traced per process and write period, for an hour.

Writing is cheap: a process collects records and overview counters in a :class:`Recorder` and
writes them in a few pipelined round trips -- a worker once per task (with its backlog
release), the web at most once a second (:meth:`Recorder.autoflush`).  Only a task that
delivered something under heavy load reads first (two counters) to decide what to sample.
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
import threading
import time
import zlib
from collections.abc import Iterable, Sequence, Set
from typing import Any, Final

import redis

from connector import overview, tracestore
from connector.jsonvalues import dumps_kept
from connector.keys import Keys
from connector.traceexcerpt import EXCERPT_CHARS as EXCERPT_CHARS
from connector.traceexcerpt import MAX_ID_CHARS as MAX_ID_CHARS
from connector.traceexcerpt import NON_JSON_CHARS as NON_JSON_CHARS
from connector.traceexcerpt import answer_excerpt as answer_excerpt
from connector.traceexcerpt import clean_id as clean_id
from connector.traceexcerpt import excerpt as excerpt
from connector.tracestore import MAIN as MAIN
from connector.tracestore import MINOR as MINOR
from connector.tracestore import as_text as as_text
from connector.tuning import TraceOptions

log = logging.getLogger("connector.trace")

MAX_HEAD: Final = 8
MAX_STEPS: Final = 40
# Events refused at the ingest that get a trace, per process between two writes (the web writes
# once a second).  The ids are the client's: without a bound, one public write key sending
# batches of invalid events with fresh messageIds would fill Redis with traces for a day.
MAX_REFUSED_PER_FLUSH: Final = 20
# ... and they are kept an hour at most: at the bound, one process keeps ~72,000 of them (~10 MB,
# and never more than the trace budget's minor share).
REFUSED_KEEP_SECONDS: Final = 3600


# A trace's identity: (connection id, event id).
Traced = tuple[str, str]


def keep_one_in(rate_per_minute: int, bound: int) -> int:
    """N of "keep 1 in N delivered traces" at ``rate_per_minute`` received events."""
    if bound <= 0 or rate_per_minute <= bound:
        return 1
    return math.ceil(rate_per_minute / bound)


def sampled(event_id: str, one_in: int) -> bool:
    """Whether ``event_id``'s delivered trace is kept at 1 in ``one_in`` (the same answer in
    every process: a hash of the id, not a random draw)."""
    return one_in <= 1 or zlib.crc32(event_id.encode()) % one_in == 0


class Recorder:
    """Trace records and overview counts of one task (worker) or one process (web), written by
    :meth:`flush` in one pipeline.  Thread- and greenlet-safe (a task delivers concurrently)."""

    def __init__(
        self, keys: Keys, options: TraceOptions | None = None, connection: str | None = None
    ) -> None:
        """``connection``: the connection of records whose call names none (a worker's task
        context is one connection's); without one, such records are not kept."""
        self.keys = keys
        self.options = options or TraceOptions()
        self.connection = connection
        self._lock = threading.Lock()
        self._head: list[tuple[Traced, bytes]] = []
        self._steps: list[tuple[Traced, bytes]] = []
        self._counts: dict[tuple[str, str], int] = {}
        self._samples: list[tuple[str, str, str]] = []  # (connection, field, event id)
        self._delivered: set[Traced] = set()  # sampling candidates
        self._refused = 0  # refused events traced since the last write
        self._refused_ids: set[Traced] = set()  # ... theirs (kept REFUSED_KEEP_SECONDS only)
        self._minor: set[Traced] = set()  # skipped or refused: the budget's minor share
        self._last_flush = time.monotonic()
        self._flusher_pid: int | None = None

    # --- recording ------------------------------------------------------------------------

    def _record(
        self,
        section: list[tuple[Traced, bytes]],
        ids: Iterable[Any],
        kind: str,
        fields: dict[str, Any],
        connection: str | None = None,
    ) -> None:
        connection = connection or self.connection
        if self.options.retention_seconds <= 0 or not connection:
            return
        record = {
            "t": round(time.time(), 3),
            "kind": kind,
            **{k: v for k, v in fields.items() if v is not None},
        }
        data = dumps_kept(record)  # held until the task's flush: right-sized
        clean = [i for i in (clean_id(x) for x in ids) if i is not None]
        with self._lock:
            section.extend(((connection, i), data) for i in dict.fromkeys(clean))

    def count(
        self, connection: str, kind: str, reason: str | None = None, n: int = 1, sample: Any = None
    ) -> None:
        name = overview.field(kind, reason)
        sample_id = clean_id(sample)
        with self._lock:
            self._counts[(connection, name)] = self._counts.get((connection, name), 0) + n
            if sample_id is not None:
                self._samples.append((connection, name, sample_id))

    def received(
        self, event_id: Any, *, connection: str, direction: str, door: str, at: float | None
    ) -> None:
        self._record(
            self._head,
            [event_id],
            "received",
            {"connection": connection, "direction": direction, "door": door, "at": at},
            connection,
        )

    def rejected(self, event_id: Any, *, connection: str, direction: str, door: str, code: str) -> None:
        """Refused at ingest: a trace and a sample of the overview's count -- for the first
        ``MAX_REFUSED_PER_FLUSH`` of a write period (the count itself is the metrics')."""
        with self._lock:
            if self._refused >= MAX_REFUSED_PER_FLUSH:
                return
            self._refused += 1
            self._refused_ids.add((connection, str(clean_id(event_id))))
            self._minor.add((connection, str(clean_id(event_id))))
        self._record(
            self._head,
            [event_id],
            "received",
            {"connection": connection, "direction": direction, "door": door, "rejected": code},
            connection,
        )
        self.sample(connection, overview.REJECTED, code, event_id)

    def sample(self, connection: str, kind: str, reason: str | None, event_id: Any) -> None:
        """``event_id`` as a sample of an overview field counted elsewhere (the ingest's
        counts are the metrics' own calls)."""
        sample_id = clean_id(event_id)
        if sample_id is not None:
            with self._lock:
                self._samples.append((connection, overview.field(kind, reason), sample_id))

    def mapping(self, event_id: Any, **fields: Any) -> None:
        """Of the recorder's connection (a worker's task)."""
        self._record(self._head, [event_id], "mapping", fields)

    def attempt(
        self,
        ids: Sequence[Any],
        *,
        method: str,
        path: str,
        status: int | None,
        latency_ms: int,
        answer: str | None = None,
        error: str | None = None,
        connection: str | None = None,
    ) -> None:
        self._record(
            self._steps,
            ids,
            "attempt",
            {
                "method": method,
                "path": path,
                "status": status,
                "latency_ms": latency_ms,
                "answer": answer_excerpt(answer),
                "error": excerpt(error),
            },
            connection,
        )

    def wait(self, ids: Sequence[Any], *, connection: str, reason: str, until: float) -> None:
        self._record(self._steps, ids, "wait", {"reason": reason, "until": round(until, 3)}, connection)
        if reason == "throttled":
            self.count(connection, overview.WAITING_QUOTA, n=len(ids) or 1)

    def outcome(
        self,
        ids: Sequence[Any],
        *,
        connection: str,
        outcome: str,
        reason: str | None = None,
        status: int | None = None,
        error: str | None = None,
    ) -> None:
        """``outcome``: delivered | skipped | failed (retried later) | dead_letter."""
        clean = [i for i in (clean_id(x) for x in ids) if i is not None]
        self._record(
            self._steps,
            clean,
            "outcome",
            {"outcome": outcome, "reason": reason, "status": status, "error": excerpt(error)},
            connection,
        )
        # A failure is counted once (its first id is the sample); a delivery once per event it
        # carried (a coalesced call delivers several).
        if outcome == overview.DELIVERED:
            self.count(connection, outcome, n=max(1, len(clean)))
        else:
            self.count(connection, outcome, reason, sample=clean[0] if clean else None)
        if outcome == overview.DELIVERED:
            with self._lock:
                self._delivered.update((connection, event_id) for event_id in clean)
        elif outcome == overview.SKIPPED:
            owner = connection or self.connection
            if owner:
                with self._lock:
                    self._minor.update((owner, event_id) for event_id in clean)

    # --- writing ---------------------------------------------------------------------------

    def flush(self, client: redis.Redis) -> None:
        """Write what was collected (one pipeline; a read first only to sample under load).
        Never raises a Redis error: a trace is not worth a requeued task or a refused event."""
        with self._lock:
            head, self._head = self._head, []
            steps, self._steps = self._steps, []
            counts, self._counts = self._counts, {}
            samples, self._samples = self._samples, []
            delivered, self._delivered = self._delivered, set()
            self._refused = 0
            refused, self._refused_ids = self._refused_ids, set()
            minor, self._minor = self._minor, set()
            self._last_flush = time.monotonic()
        if not (head or steps or counts or samples):
            return
        try:
            self._write(client, head, steps, counts, samples, delivered, refused, minor)
        except redis.RedisError as exc:
            log.warning("trace records not written", extra={"error": str(exc)[:200]})

    def _dropped(self, client: redis.Redis, delivered: set[Traced], now: float) -> set[Traced]:
        bound = self.options.sample_above_per_minute
        if not delivered or bound <= 0:
            return set()
        connections = sorted({cid for cid, _ in delivered})
        minute = overview.minute_of(now)
        pipe = client.pipeline(transaction=False)
        for cid in connections:
            pipe.hget(self.keys.overview_minute(cid, minute), overview.RECEIVED)
            pipe.hget(self.keys.overview_minute(cid, minute - 1), overview.RECEIVED)
        values = pipe.execute()
        one_in = {
            cid: keep_one_in(max(int(values[2 * i] or 0), int(values[2 * i + 1] or 0)), bound)
            for i, cid in enumerate(connections)
        }
        return {(cid, eid) for cid, eid in delivered if not sampled(eid, one_in[cid])}

    def _write(
        self,
        client: redis.Redis,
        head: list[tuple[Traced, bytes]],
        steps: list[tuple[Traced, bytes]],
        counts: dict[tuple[str, str], int],
        samples: list[tuple[str, str, str]],
        delivered: set[Traced],
        refused: Set[Traced] = frozenset(),
        minor: Set[Traced] = frozenset(),
    ) -> None:
        now = time.time()
        dropped = self._dropped(client, delivered, now)
        ttl = max(1, self.options.retention_seconds)
        # The counts first: the overview is what the status page shows, a trace only detail.
        pipe = client.pipeline(transaction=False)
        minute, hour = overview.minute_of(now), overview.hour_of(now)
        touched: set[str] = set()
        for (cid, name), n in counts.items():
            pipe.hincrby(self.keys.overview_minute(cid, minute), name, n)
            pipe.hincrby(self.keys.overview_hour(cid, hour), name, n)
            touched.add(cid)
        for cid in touched:
            pipe.expire(self.keys.overview_minute(cid, minute), overview.MINUTE_KEEP_SECONDS)
            pipe.expire(self.keys.overview_hour(cid, hour), overview.HOUR_KEEP_SECONDS)
        lists: set[str] = set()
        for cid, name, event_id in samples:
            key = self.keys.overview_samples(cid, name)
            pipe.lpush(key, event_id)
            lists.add(key)
        for key in lists:
            pipe.ltrim(key, 0, overview.SAMPLES_PER_FIELD - 1)
            pipe.expire(key, max(ttl, overview.HOUR_KEEP_SECONDS))
        pipe.execute()
        # Skipped and refused events' traces go to their own buckets: the budget's minor share.
        groups: dict[tuple[str, str], dict[str, tuple[list[bytes], list[bytes]]]] = {}
        for index, section in enumerate((head, steps)):
            for traced, data in section:
                if traced in dropped:
                    continue
                cid, event_id = traced
                kind = (
                    tracestore.KIND_REFUSED
                    if traced in refused
                    else tracestore.KIND_MINOR
                    if traced in minor
                    else tracestore.KIND_MAIN
                )
                event = groups.setdefault((kind, cid), {}).setdefault(event_id, ([], []))
                event[index].append(data)
        if groups:
            tracestore.write(
                client,
                self.keys,
                groups,
                ttls={
                    tracestore.KIND_MAIN: ttl,
                    tracestore.KIND_MINOR: ttl,
                    tracestore.KIND_REFUSED: min(ttl, REFUSED_KEEP_SECONDS),
                },
                budgets=tracestore.class_budgets(self.options.budget_bytes, self.options.minor_share),
                max_head=MAX_HEAD,
                max_steps=MAX_STEPS,
            )
        if dropped:  # delivered and not sampled: what earlier tasks wrote goes too
            tracestore.drop(client, self.keys, dropped)

    def autoflush(self, client: redis.Redis, interval: float = 1.0) -> None:
        """For a long-lived process (the web): write at most once per ``interval`` on the
        caller's path, and from a background thread for what comes after the last request.
        The thread is started per process (gunicorn preloads, then forks)."""
        if self._flusher_pid != os.getpid():
            self._flusher_pid = os.getpid()
            threading.Thread(
                target=self._loop, args=(client, interval), name="trace-flush", daemon=True
            ).start()
        if time.monotonic() - self._last_flush >= interval:
            self.flush(client)

    def _loop(self, client: redis.Redis, interval: float) -> None:
        while True:
            time.sleep(interval)
            with contextlib.suppress(Exception):  # never let the flusher die
                self.flush(client)
