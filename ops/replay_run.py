"""The engine of ``connector replay`` (SPEC 15): read, check, pace, enqueue, checkpoint.

Each line goes through the ingest's own functions (:func:`app.ingest.check_item`,
:func:`app.ingest.normalize`, :func:`app.ingest.encode_checked`), then the suppression list, the
``integrations`` and consent gates the workers apply, and the idempotency ledger; what is left
is published with :class:`app.enqueue.Enqueuer` -- the live events' path, so holds, coalescing,
bulk, the stale rule, budgets and traces apply as to live traffic.

Two departures from the live door, both because an archive is history, not news:
- the archived ``timestamp`` is Segment's already corrected time: it is kept as it is (no second
  skew correction against today's receipt), so the stale rule sees the event's real age and a
  newer live identify wins over replayed older state;
- an event without ``messageId`` gets one derived from its content, so a second replay of the
  same file is a duplicate for the ledger rather than new events.

Pacing: before each chunk the replay waits while the connection's backlog (events or bytes) is
above ``pace`` (default half) of its bound -- live ingest keeps the other half, so it never
answers ``backlog_full`` because of a replay.  Quota is not the replay's business: the workers
spend only the connection's budgets, which already keep the shop's reserve.

Checkpoints: after each chunk is published, the position after it, the counts so far and the
report file's size are written to Redis (``Keys.replay``).  A kill -9 or Ctrl-C loses at most
the chunk in hand, which ``--resume`` reads and sends again (the ledger absorbs what was
already delivered); the report file is cut back to its checkpointed size first.
"""

from __future__ import annotations

import hashlib
import logging
import os
import time
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import IO, Any

import orjson
import redis

from app.errors import ApiError
from app.ingest import encode_checked, iso
from app.schemas import parse_utc
from connector import regulations
from connector.config import Connection
from connector.contract import REPLAY_DOOR
from connector.errors import MappingError, SkipEvent
from connector.keys import Keys
from ops import replay_read as rr
from ops.replay_forecast import DistinctCounter
from ops.replay_source import Counting, Source, prepare
from workers.mapping.destination import map_event_detailed
from workers.mapping.destination.actions import ADD_CUSTOM_EVENT

log = logging.getLogger("connector.replay")

CHUNK_EVENTS = 100  # one broker message, as one Tracking API batch of 100
CHECKPOINT_LINES = 5_000  # a checkpoint at least this often when lines are only skipped
CHECKPOINT_TTL = 30 * 86400
DOOR = REPLAY_DOOR  # the items it makes carry the replay mark (bigger bulks)
PACE_POLL_SECONDS = 0.5
NOTICE_SECONDS = 30.0


@dataclass
class Tally:
    """Counts of one file over all its runs (a resumed run starts from the checkpoint's)."""

    lines: int = 0
    accepted: int = 0
    kinds: dict[str, int] = field(default_factory=dict)
    rejected: dict[str, int] = field(default_factory=dict)
    skipped: dict[str, int] = field(default_factory=dict)
    custom_events: int = 0
    forced: int = 0
    done: bool = False

    def add(self, bucket: dict[str, int], code: str, n: int = 1) -> None:
        bucket[code] = bucket.get(code, 0) + n

    @property
    def rejected_total(self) -> int:
        return sum(self.rejected.values())

    def as_dict(self) -> dict[str, Any]:
        return {
            "lines": self.lines,
            "accepted": self.accepted,
            "kinds": self.kinds,
            "rejected": self.rejected,
            "rejected_total": self.rejected_total,
            "skipped": self.skipped,
            "custom_events": self.custom_events,
            "forced": self.forced,
            "done": self.done,
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Tally:
        return cls(**{k: data[k] for k in cls.__dataclass_fields__ if k in data})


@dataclass
class Options:
    connection: Connection
    start: datetime | None = None
    end: datetime | None = None
    dry_run: bool = False
    resume: bool = False
    force: bool = False
    csv: bool | None = None  # None: by the name (.csv, .csv.gz)
    pace: float = 0.5
    report: Path | None = None


class Replay:
    """One ``connector replay`` run over one connection; :meth:`run` per file."""

    def __init__(
        self,
        options: Options,
        client: redis.Redis,
        keys: Keys,
        enqueuer: Any,
        *,
        progress: Callable[[str, Tally, int, int | None, str], None] | None = None,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        self.o = options
        self.c = options.connection
        self.redis = client
        self.keys = keys
        self.enqueuer = enqueuer
        self.progress = progress or (lambda *_: None)
        self.sleep = sleep
        self.customers = DistinctCounter()
        self.run_id = os.urandom(4).hex()
        self.backlog_seen = 0  # the connection's backlog at the last look (the progress shows it)
        self.say: Callable[[str], None] = lambda text: None  # the operator's notices (the CLI: stderr)

    # --- checkpoints ---------------------------------------------------------------------

    def checkpoint_key(self, source: Source) -> str:
        return self.keys.replay(self.c.id, source.identity)

    def load(self, source: Source) -> dict[str, Any] | None:
        raw = self.redis.get(self.checkpoint_key(source))
        return orjson.loads(raw) if raw else None

    def _save(self, source: Source, position: rr.Position, tally: Tally, report_bytes: int) -> None:
        if self.o.dry_run:
            return
        state = {
            "file": source.name,
            "position": [position.line, position.seek, position.seek_line],
            "tally": tally.as_dict(),
            "report": str(self.o.report) if self.o.report else None,
            "report_bytes": report_bytes,
            "updated": time.time(),
        }
        self.redis.set(self.checkpoint_key(source), orjson.dumps(state), ex=CHECKPOINT_TTL)

    # --- one file --------------------------------------------------------------------------

    def run(self, source: Source) -> Tally:
        state = self.load(source) if self.o.resume else None
        tally = Tally.from_dict(state["tally"]) if state else Tally()
        if state and tally.done:
            return tally
        start = rr.Position(*state["position"]) if state else rr.Position()
        report = self._open_report(state)
        stream = source.open()
        try:
            if source.seekable and start.seek:
                stream.seek(start.seek)
            counting = Counting(stream)
            base = start.seek if source.seekable else 0
            records = self._records(source, stream, counting, start)
            self._loop(source, records, tally, report, counting, base)
        finally:
            if source.seekable:
                stream.close()
            if report is not None:
                report.close()
        return tally

    def _open_report(self, state: dict[str, Any] | None) -> IO[bytes] | None:
        if self.o.report is None:
            return None
        f = open(self.o.report, "ab")  # noqa: SIM115 - closed by run()
        if state is not None and isinstance(state.get("report_bytes"), int):
            # Lines reported after the checkpoint are read (and reported) again: cut them off.
            f.truncate(min(state["report_bytes"], f.tell()))
            f.seek(0, os.SEEK_END)
        return f

    def _records(
        self, source: Source, stream: IO[bytes], counting: Counting, start: rr.Position
    ) -> Iterator[rr.Record]:
        gz = Source.is_gzip(stream)
        as_csv = self.o.csv if self.o.csv is not None else source.name.lower().endswith((".csv", ".csv.gz"))
        feed: Any = counting
        if as_csv:
            if source.seekable and start.seek:
                stream.seek(0)
            return rr.customers(feed, start, gz=gz, default_time=iso(source.mtime))
        return rr.archive(feed, start, gz=gz, seekable=source.seekable)

    def _loop(
        self,
        source: Source,
        records: Iterator[rr.Record],
        tally: Tally,
        report: IO[bytes] | None,
        counting: Counting,
        base: int,
    ) -> None:
        batch: list[tuple[dict[str, Any], bytes]] = []
        position: rr.Position | None = None
        since = 0
        received_at = datetime.now(UTC)
        try:
            for record in records:
                since += 1
                tally.lines = max(tally.lines, record.line)
                position = record.resume
                if record.problem is not None:
                    self._reject(source, tally, report, record.line, *record.problem)
                else:
                    assert record.event is not None
                    self._take(source, tally, report, record, received_at, batch)
                if len(batch) >= CHUNK_EVENTS or since >= CHECKPOINT_LINES:
                    self._flush(source, batch, tally, report, position)
                    batch, since = [], 0
                    received_at = datetime.now(UTC)
                    self.progress(source.name, tally, base + counting.count, source.size, "")
        except rr.FileRejected as exc:
            self._reject(source, tally, report, 1, exc.code, exc.message)
            tally.done = True
            self._save(source, position or rr.Position(), tally, self._report_size(report))
            raise
        tally.done = True
        self._flush(source, batch, tally, report, position or rr.Position())
        self.progress(source.name, tally, base + counting.count, source.size, "done")

    def _take(
        self,
        source: Source,
        tally: Tally,
        report: IO[bytes] | None,
        record: rr.Record,
        received_at: datetime,
        batch: list[tuple[dict[str, Any], bytes]],
    ) -> None:
        assert record.event is not None
        prepared = prepare(record.event, received_at)
        if len(prepared) == 2 and isinstance(prepared[0], str):
            code, message = prepared
            self._reject(source, tally, report, record.line, code, message)
            return
        event, encoded = prepared
        if not self._in_window(event):
            tally.add(tally.skipped, "outside_window")
            return
        batch.append((event, encoded))

    def _in_window(self, event: dict[str, Any]) -> bool:
        if self.o.start is None and self.o.end is None:
            return True
        stamp = event.get("timestamp")
        at = parse_utc(stamp) if isinstance(stamp, str) else None
        if at is None:
            return False  # no time to place it in the window: not in it
        if self.o.start is not None and at < self.o.start:
            return False
        return not (self.o.end is not None and at >= self.o.end)

    def _reject(
        self, source: Source, tally: Tally, report: IO[bytes] | None, line: int, code: str, message: str
    ) -> None:
        tally.add(tally.rejected, code)
        if report is not None:
            report.write(
                orjson.dumps({"file": source.name, "line": line, "code": code, "message": message}) + b"\n"
            )

    @staticmethod
    def _report_size(report: IO[bytes] | None) -> int:
        if report is None:
            return 0
        report.flush()
        return report.tell()

    # --- a chunk: suppression, gates, ledger, pace, publish, checkpoint -----------------------

    def _flush(
        self,
        source: Source,
        batch: list[tuple[dict[str, Any], bytes]],
        tally: Tally,
        report: IO[bytes] | None,
        position: rr.Position,
    ) -> None:
        kept = self._filter(batch, tally)
        if kept and not self.o.dry_run:
            self._publish(kept)
        for event, _ in kept:
            tally.accepted += 1
            tally.add(tally.kinds, str(event.get("type")))
        self._save(source, position, tally, self._report_size(report))

    def _filter(
        self, batch: list[tuple[dict[str, Any], bytes]], tally: Tally
    ) -> list[tuple[dict[str, Any], bytes]]:
        if not batch:
            return []
        found = regulations.suppressed_among(
            self.redis, self.keys, self.c.id, [e.get("userId") for e, _ in batch]
        )
        passing: list[tuple[dict[str, Any], bytes, list[Any]]] = []
        for event, encoded in batch:
            user = event.get("userId")
            if user is not None and not isinstance(user, bool) and str(user) in found:
                tally.add(tally.skipped, "suppressed")
                continue
            try:
                # The workers' gates and routes (integrations, consent, disabled types...).
                mapped = map_event_detailed(event, self.c)
            except SkipEvent as exc:
                tally.add(tally.skipped, exc.reason)
                continue
            except MappingError:
                passing.append((event, encoded, []))  # dead-lettered by the worker, as live
                continue
            if not mapped.requests and not mapped.failures:
                tally.add(tally.skipped, "no_subscription")
                continue
            passing.append((event, encoded, mapped.requests))
        ledger_keys = [self.keys.ledger(self.c.id, r.idempotency_key) for _, _, rs in passing for r in rs]
        done = iter(v == b"done" for v in self.redis.mget(ledger_keys)) if ledger_keys else iter(())
        kept: list[tuple[dict[str, Any], bytes]] = []
        for event, encoded, requests in passing:
            delivered = [next(done) for _ in requests]
            if requests and all(delivered):
                if not self.o.force:
                    tally.add(tally.skipped, "duplicate")
                    continue
                event, encoded = self._forced(event)
                tally.forced += 1
            for request in requests:
                if request.action == ADD_CUSTOM_EVENT:
                    tally.custom_events += 1
                elif request.customer is not None:
                    self.customers.add(str(request.customer))
            kept.append((event, encoded))
        return kept

    def _forced(self, event: dict[str, Any]) -> tuple[dict[str, Any], bytes]:
        """``--force``: a delivered event sent again under a new messageId (its idempotency keys
        derive from it), the run's id appended: Voucherify would answer a reused
        Idempotency-Key with its first answer, and the ledger would skip it."""
        own = str(event.get("messageId"))
        base = own if len(own) <= 80 else hashlib.sha256(own.encode()).hexdigest()[:40]
        again = dict(event, messageId=f"{base}~replay-{self.run_id}")
        encoded = encode_checked(again, again, {}, 0)
        assert not isinstance(encoded, tuple)
        return again, encoded

    def wait_for_room(self, events: int, stored: int) -> None:
        """Wait while the backlog is above ``pace`` of its bound (events or bytes)."""
        limit = self.c.backlog_limit * self.o.pace
        bytes_limit = self.c.backlog_bytes_limit * self.o.pace
        said = 0.0
        while True:
            raw_events, raw_bytes = self.redis.mget(
                [self.keys.backlog(self.c.id), self.keys.backlog_bytes(self.c.id)]
            )
            now_events, now_bytes = int(raw_events or 0), int(raw_bytes or 0)
            self.backlog_seen = now_events
            if now_events == 0 or (now_events + events <= limit and now_bytes + stored <= bytes_limit):
                return
            if time.monotonic() - said >= NOTICE_SECONDS:
                # Said, not only logged: a replay waiting on workers that do not run (or on a
                # paused connection) must not look like a hang.
                said = time.monotonic()
                self.say(
                    f"waiting: the backlog holds {now_events:,} events ({now_bytes:,} bytes), more than "
                    f"{self.o.pace:.0%} of its bound {self.c.backlog_limit:,}: live ingest keeps the rest "
                    "(are the workers running? connector stats)"
                )
            self.sleep(PACE_POLL_SECONDS)

    def _publish(self, kept: list[tuple[dict[str, Any], bytes]]) -> None:
        shared = {"receivedAt": iso(datetime.now(UTC)), "door": DOOR}
        encoded = [orjson.Fragment(b) for _, b in kept]
        stored = sum(len(b) for _, b in kept) + len(orjson.dumps(shared))
        while True:
            self.wait_for_room(len(kept), stored)
            try:
                self.enqueuer.segment_events(self.c, encoded, shared, stored)
                return
            except ApiError as exc:
                # Every refusal of the live door (backlog or dead letters full, Redis busy, the
                # broker away) means "later" for a replay, never "lost": wait, then again.
                log.warning("replay publish refused: %s", exc.code, extra={"connection": self.c.id})
                self.sleep(2.0)

    def distinct_customers(self) -> int:
        return self.customers.count()


def counter_text(counts: dict[str, int]) -> str:
    return ", ".join(f"{k} {v:,}" for k, v in Counter(counts).most_common()) or "none"
