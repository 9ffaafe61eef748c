"""Event traces (SPEC 12, ``connector trace ID``): the journey of one event, kept in Redis.

An event's trace is two Redis lists of small JSON records, keyed by its connection and its id
(a Segment ``messageId`` or a Voucherify event id: the client's, so one connection's client
cannot reach another connection's traces by reusing its ids)::

    trace:h:{c}:{id}   received, mapping              capped at MAX_HEAD (the first ones kept)
    trace:s:{c}:{id}   attempt, wait, outcome          capped at MAX_STEPS (the newest kept)
    trace:c:{id}       the connections with a trace of this id (``connector trace ID`` finds them)

Voucherify's answers are kept as excerpts without customer data (:func:`answer_excerpt`): the
status, error code/key/message fields and ids of the JSON, never names, emails or metadata.

Both expire ``TRACE_RETENTION_HOURS`` (default 24) after the last write.  Memory is bounded:
each record is a few hundred bytes at most (answer excerpts are cut, never a payload, never a
header), each id holds at most MAX_HEAD + MAX_STEPS records, and when a connection receives more
than ``TRACE_SAMPLE_ABOVE_PER_MINUTE`` events a minute only 1 in N delivered events keeps its
trace (N = rate / that bound, chosen by a hash of the id, so every process agrees).  Failures
(dead letters, retries) and skips are ALWAYS kept: they are what an operator looks for.  Events
refused at the ingest carry ids the client chose: at most ``MAX_REFUSED_PER_FLUSH`` of them are
traced per process and write period.

Writing is cheap: a process collects records and overview counters in a :class:`Recorder` and
writes them in one pipelined round trip -- a worker once per task (with its backlog release),
the web at most once a second (:meth:`Recorder.autoflush`).  Only a task that delivered
something under heavy load reads first (two counters) to decide what to sample.
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
import re
import threading
import time
import zlib
from collections.abc import Iterable, Sequence, Set
from typing import Any, Final

import orjson
import redis

from connector import overview
from connector.keys import Keys
from connector.tuning import TraceOptions

log = logging.getLogger("connector.trace")

MAX_HEAD: Final = 8
MAX_STEPS: Final = 40
EXCERPT_CHARS: Final = 300
MAX_ID_CHARS: Final = 200
# Events refused at the ingest that get a trace, per process between two writes (the web writes
# once a second).  The ids are the client's: without a bound, one public write key sending
# batches of invalid events with fresh messageIds would fill Redis with traces for a day.
MAX_REFUSED_PER_FLUSH: Final = 20
# ... and they are kept an hour at most: at the bound, one process keeps ~72,000 of them (~30 MB).
REFUSED_KEEP_SECONDS: Final = 3600


# A trace's identity: (connection id, event id).
Traced = tuple[str, str]

# The trace budget (SPEC 16: traces are diagnostics and give way first).  Two classes, each a
# zset of "{c}:{id}" by last write, the bytes written per trace and their sum: "main" (delivered,
# retried, dead-lettered) takes the budget less the minor share; "minor" (skipped at the mapping,
# refused at the ingest: what a flood of junk makes) only ``TraceOptions.minor_share`` of it, so
# such a flood never pushes out the traces an operator looks for, nor fills Redis.
MAIN: Final = "main"
MINOR: Final = "minor"
# What a trace costs besides its records: two keys, the index entry, the budget's own entries.
TRACE_OVERHEAD_BYTES: Final = 400
# At most this many traces given up per write (the rest at the next one).
MAX_EVICTED_PER_WRITE: Final = 5000

# KEYS: the class's zset, its sizes hash, its byte total.  ARGV: budget (bytes), now (ms),
# forget-before (ms: members not written since the retention, whose keys have expired), then
# (member, bytes) pairs written now.  Returns the members given up (their keys are the caller's
# to delete: a script touches only the keys it is passed).
_BUDGET_LUA: Final = """
local total = 0
for i = 4, #ARGV, 2 do
  redis.call('ZADD', KEYS[1], ARGV[2], ARGV[i])
  redis.call('HINCRBY', KEYS[2], ARGV[i], ARGV[i + 1])
  total = redis.call('INCRBY', KEYS[3], ARGV[i + 1])
end
if #ARGV < 4 then total = tonumber(redis.call('GET', KEYS[3]) or '0') end
local function forget(member)
  local size = tonumber(redis.call('HGET', KEYS[2], member) or '0')
  redis.call('HDEL', KEYS[2], member)
  redis.call('ZREM', KEYS[1], member)
  total = redis.call('DECRBY', KEYS[3], size)
end
for _, m in ipairs(redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', ARGV[3], 'LIMIT', 0, 1000)) do
  forget(m)
end
local budget = tonumber(ARGV[1])
local evicted = {}
while total > budget and #evicted < MAX_EVICTED do
  local oldest = redis.call('ZRANGE', KEYS[1], 0, 199)
  if #oldest == 0 then break end
  for _, m in ipairs(oldest) do
    forget(m)
    evicted[#evicted + 1] = m
    if total <= budget then break end
  end
end
if total <= 0 then redis.call('DEL', KEYS[3]) end
return evicted
""".replace("MAX_EVICTED", str(MAX_EVICTED_PER_WRITE))

# Adds a connection to an id's index; its TTL is raised to ARGV[2], never lowered.
_INDEX_LUA: Final = """
redis.call('SADD', KEYS[1], ARGV[1])
local ttl = tonumber(ARGV[2])
if redis.call('TTL', KEYS[1]) < ttl then redis.call('EXPIRE', KEYS[1], ttl) end
return 1
"""


def keep_one_in(rate_per_minute: int, bound: int) -> int:
    """N of "keep 1 in N delivered traces" at ``rate_per_minute`` received events."""
    if bound <= 0 or rate_per_minute <= bound:
        return 1
    return math.ceil(rate_per_minute / bound)


def sampled(event_id: str, one_in: int) -> bool:
    """Whether ``event_id``'s delivered trace is kept at 1 in ``one_in`` (the same answer in
    every process: a hash of the id, not a random draw)."""
    return one_in <= 1 or zlib.crc32(event_id.encode()) % one_in == 0


def clean_id(event_id: Any) -> str | None:
    if event_id is None or event_id == "":
        return None
    return str(event_id)[:MAX_ID_CHARS]


def excerpt(text: str | None) -> str | None:
    if not text:
        return None
    return text if len(text) <= EXCERPT_CHARS else text[:EXCERPT_CHARS] + "…"


# What an answer excerpt keeps of a JSON answer: its error fields and ids (a field named ``id``
# or ending in ``_id``).  Everything else -- a customer's name, email, address, metadata, the
# echo of what was sent -- is left out: a trace is kept for a day and shown on the status page.
_ANSWER_FIELDS: Final = frozenset(
    {"code", "key", "message", "details", "status", "error", "error_code", "request_id", "object", "errors"}
)
NON_JSON_CHARS: Final = 80
_EMAIL = re.compile(r"[^\s@\"'<>]+@[^\s@\"'<>]+")
_DIGITS = re.compile(r"\d{5,}")


def _kept(value: Any, depth: int = 0) -> Any:
    if depth > 4:
        return None
    if isinstance(value, dict):
        out: dict[str, Any] = {}
        for key, item in value.items():
            name = str(key)
            wanted = name in _ANSWER_FIELDS or name == "id" or name.endswith("_id")
            if wanted and (isinstance(item, str | int | float | bool) or item is None):
                out[name] = item if not isinstance(item, str) else item[:200]
                continue
            kept = _kept(item, depth + 1) if isinstance(item, dict | list) else None
            if kept:
                out[name] = kept
        return out or None
    if isinstance(value, list):
        items = [k for k in (_kept(v, depth + 1) for v in value[:10]) if k]
        return items or None
    return None


def answer_excerpt(text: str | None) -> str | None:
    """An answer as a trace keeps it: for JSON, its error fields and ids only; for anything
    else, a short start with emails and long digit runs masked."""
    if not text:
        return None
    try:
        data = orjson.loads(text)
    except orjson.JSONDecodeError:
        short = _DIGITS.sub("<digits>", _EMAIL.sub("<email>", text[: NON_JSON_CHARS * 2]))
        return excerpt(short[:NON_JSON_CHARS] + ("…" if len(text) > NON_JSON_CHARS else ""))
    kept = _kept(data)
    return excerpt(orjson.dumps(kept).decode()) if kept else "(JSON without error fields or ids)"


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
        data = orjson.dumps(record)
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
        written: dict[Traced, int] = {}
        dropped = self._dropped(client, delivered, now)
        ttl = max(1, self.options.retention_seconds)
        pipe = client.pipeline(transaction=False)
        indexed: dict[Traced, int] = {}
        for section, key_of, trim in (
            (head, self.keys.trace_head, (0, MAX_HEAD - 1)),
            (steps, self.keys.trace_steps, (-MAX_STEPS, -1)),
        ):
            grouped: dict[Traced, list[bytes]] = {}
            for traced, data in section:
                if traced not in dropped:
                    grouped.setdefault(traced, []).append(data)
            for traced, records in grouped.items():
                key = key_of(*traced)
                keep = min(ttl, REFUSED_KEEP_SECONDS) if traced in refused else ttl
                pipe.rpush(key, *records)
                pipe.ltrim(key, *trim)
                pipe.expire(key, keep)
                indexed[traced] = max(indexed.get(traced, 0), keep)
                written[traced] = written.get(traced, 0) + sum(map(len, records))
        for (cid, event_id), keep in indexed.items():
            # The index lives as long as the longest trace it names (a refused event's hour
            # must not cut short another connection's day).
            pipe.eval(_INDEX_LUA, 1, self.keys.trace_index(event_id), cid, keep)
        for cid, event_id in dropped:  # delivered and not sampled: what earlier tasks wrote goes too
            pipe.delete(self.keys.trace_head(cid, event_id), self.keys.trace_steps(cid, event_id))
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
        if written and self.options.budget_bytes > 0:
            self._keep_budget(client, written, minor | refused, now, ttl)

    def _keep_budget(
        self, client: redis.Redis, written: dict[Traced, int], minor: Set[Traced], now: float, ttl: int
    ) -> None:
        """Account what was just written to its class's budget; give up the oldest traces of a
        class over its share (they are diagnostics: data and the ingest come first)."""
        share = min(1.0, max(0.0, self.options.minor_share))
        budgets = {
            MINOR: int(self.options.budget_bytes * share),
            MAIN: int(self.options.budget_bytes * (1 - share)),
        }
        by_class: dict[str, list[Any]] = {MAIN: [], MINOR: []}
        for (cid, event_id), size in written.items():
            cls = MINOR if (cid, event_id) in minor else MAIN
            by_class[cls].extend([f"{cid}:{event_id}", size + TRACE_OVERHEAD_BYTES])
        now_ms = int(now * 1000)
        evicted: list[str] = []
        for cls, pairs in by_class.items():
            if not pairs:
                continue
            keys = [self.keys.traces(cls), self.keys.traces_sizes(cls), self.keys.traces_bytes(cls)]
            gone = client.eval(_BUDGET_LUA, 3, *keys, budgets[cls], now_ms, now_ms - ttl * 1000, *pairs)
            evicted.extend(as_text(m) for m in gone or ())
        if not evicted:
            return
        pipe = client.pipeline(transaction=False)
        for member in evicted:
            cid, _, event_id = member.partition(":")
            pipe.delete(self.keys.trace_head(cid, event_id), self.keys.trace_steps(cid, event_id))
            pipe.srem(self.keys.trace_index(event_id), cid)
        pipe.execute()
        log.info("trace budget: gave up the oldest traces", extra={"traces": len(evicted)})

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


def as_text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value
