"""Dead letters: what could not be delivered, kept whole enough to understand and replay.

Storage: ``{p}dlq`` (zset id -> dead-lettered time, ms) + ``{p}dlq:data`` (hash id -> JSON),
and ``{p}dlq:counts`` (hash connection id -> count, kept by the same Lua calls) so that
``/metrics`` and ``connector stats`` read dead letters per connection without loading records.
A record keeps the connection, direction and queue, the original payload (Segment event or
Voucherify webhook, bounded), the request description (no secrets: auth headers are added only
at send time), the last status, error and a bounded response excerpt, the attempt history, the
reason and the time.

Reasons (a closed set, used as a metric label)::

    mapping_error          the event cannot become a request (never retried)
    rejected               the target answered a permanent status (4xx but 408/423/429, 501, 505)
    retry_window_exceeded  still failing when the connection's retry window ran out
    too_large              a Segment track call over 32 KB
    internal_error         a bug met this event (kept so it can be replayed after the fix)

Replay re-publishes with the SAME idempotency keys -- the stored request as it is, or with
``remap`` the original payload through today's mapping (deterministic keys again) -- and
removes the record only after the publish succeeded.  Once the cause is fixed, the ledger makes
sure each event lands once even if a replay is repeated.
"""

from __future__ import annotations

import hashlib
import time
import uuid
from collections.abc import Iterator
from dataclasses import MISSING, asdict, dataclass, field, fields
from typing import Any

import orjson
import redis

from connector import backlog
from connector.contract import TASK_DELIVER, ingest_call, merge_objects
from connector.keys import Keys
from connector.publish import Publish
from workers.delivery.dlqscripts import ADD, ADD_THEN_TRIM, REMOVE

MAPPING_ERROR = "mapping_error"
REJECTED = "rejected"
# A 401/403 that only this kind of call gets (the credentials' probe is accepted): a WAF rule,
# a key without the permission (workers.delivery.refusals).
REFUSED = "refused"
RETRY_WINDOW_EXCEEDED = "retry_window_exceeded"
TOO_LARGE = "too_large"
INTERNAL_ERROR = "internal_error"

MAX_PAYLOAD_BYTES = 256 * 1024
MAX_EXCERPT_CHARS = 2048
MAX_ERROR_CHARS = 1000
MAX_HISTORY = 50


@dataclass
class DeadLetter:
    connection_id: str
    direction: str
    reason: str
    error: str
    queue: str = ""
    payload: Any = None
    request: dict[str, Any] | None = None
    status: int | None = None
    response_excerpt: str = ""
    history: list[dict[str, Any]] = field(default_factory=list)
    attempts: int = 0
    first_attempt_at: float | None = None
    received_at: float | None = None
    dead_lettered_at: float = 0.0
    id: str = ""
    # The digest of the batch objects (context, integrations) ``payload`` was mapped with: the
    # payload keeps the event's own fields, the store one copy of the objects (read back
    # merged by :meth:`DeadLetters.get` / :meth:`DeadLetters.iter`).
    shared: str | None = None
    # Their JSON when the writer knows it (never serialized with the record).
    shared_blob: bytes | None = field(default=None, repr=False)

    @property
    def idempotency_key(self) -> str | None:
        return (self.request or {}).get("idempotency_key")

    @property
    def message_id(self) -> str | None:
        req = self.request or {}
        if req.get("message_id"):
            return str(req["message_id"])
        if isinstance(self.payload, dict):
            value = self.payload.get("messageId") or self.payload.get("id")
            return str(value) if value is not None else None
        return None

    @property
    def action(self) -> str | None:
        return (self.request or {}).get("action")

    def summary(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "connection": self.connection_id,
            "direction": self.direction,
            "reason": self.reason,
            "status": self.status,
            "action": self.action,
            "message_id": self.message_id,
            "attempts": self.attempts,
            "dead_lettered_at": self.dead_lettered_at,
            "error": self.error,
        }

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data.pop("shared_blob", None)
        if not data.get("shared"):
            data.pop("shared", None)
        data["idempotency_key"] = self.idempotency_key
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> DeadLetter:
        known = {f for f in cls.__dataclass_fields__} - {"shared_blob"}
        return cls(**{k: v for k, v in data.items() if k in known})


def _bounded_payload(payload: Any) -> Any:
    raw = orjson.dumps(payload, default=str)
    if len(raw) <= MAX_PAYLOAD_BYTES:
        return payload
    return {"_truncated": True, "bytes": len(raw), "excerpt": raw[:4096].decode(errors="replace")}


# What a stored record leaves out: its id (the hash field), what it derives (the time: its
# score in the index), and the fields at their defaults -- a dead letter is charged to its
# connection, and a batch of 2,000 invalid events makes 2,000 of them (SPEC 16: the per-event
# record near the event's own size).
def _stored(record: DeadLetter) -> dict[str, Any]:
    data = record.to_dict()
    for name in ("id", "idempotency_key", "dead_lettered_at"):
        data.pop(name, None)
    for f in fields(DeadLetter):
        default = f.default_factory() if f.default_factory is not MISSING else f.default
        if default is not MISSING and f.name in data and data[f.name] == default:
            del data[f.name]
    return data


# The fields letters of one failure and batch share (a batch of invalid events: the same
# direction, queue, reason, error and batch objects), stored once as the records' base and
# merged back on read: ~240 B of each record.
_BASE_FIELDS = ("direction", "queue", "reason", "error", "shared")


def _based(data: dict[str, Any]) -> tuple[str, bytes]:
    """Moves ``data``'s base fields into its base: (the base's reference, its JSON)."""
    base = {k: data.pop(k) for k in _BASE_FIELDS if k in data}
    blob = orjson.dumps(base, option=orjson.OPT_SORT_KEYS)
    ref = "b:" + hashlib.sha256(blob).hexdigest()[:22]
    data["base"] = ref
    return ref, blob


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value


class DeadLetters:
    def __init__(self, client: redis.Redis, keys: Keys) -> None:
        self.client = client
        self.keys = keys

    # --- writing ------------------------------------------------------------------------------
    @staticmethod
    def _prepared(record: DeadLetter) -> list[Any]:
        """(id, score, JSON, connection id) of ``record``, its id, time and bounds filled in."""
        record.id = record.id or f"{int(time.time())}-{uuid.uuid4().hex[:12]}"
        record.dead_lettered_at = record.dead_lettered_at or time.time()
        record.payload = _bounded_payload(record.payload)
        record.response_excerpt = (record.response_excerpt or "")[:MAX_EXCERPT_CHARS]
        record.error = (record.error or "")[:MAX_ERROR_CHARS]
        record.history = list(record.history or [])[-MAX_HISTORY:]
        if record.shared and not record.shared_blob:
            record.shared = None  # the objects expired: the record is the event's own fields
        data = _stored(record)
        base, base_blob = _based(data)
        return [
            record.id,
            int(record.dead_lettered_at * 1000),
            orjson.dumps(data, default=str),
            record.connection_id,
            f"{record.connection_id}:{record.shared}" if record.shared else "",
            record.shared_blob or b"" if record.shared else b"",
            f"{record.connection_id}:{base}",
            base_blob,
        ]

    @property
    def _keys(self) -> list[str]:
        k = self.keys
        return [k.dlq, k.dlq_data, k.dlq_counts, k.dlq_bytes, k.dlq_shared, k.dlq_shared_refs]

    def add(self, record: DeadLetter) -> str:
        ADD(self.client, self._keys, self._prepared(record))
        return record.id

    def bytes_of(self, connection_id: str) -> int:
        """What ``connection_id``'s dead letters occupy (records and their shared objects)."""
        return int(self.client.hget(self.keys.dlq_bytes, connection_id) or 0)

    def add_then_trim(
        self, records: list[DeadLetter], list_key: str, lock_key: str, token: str, count: int
    ) -> bool:
        """Write ``records`` and drop the first ``count`` items of ``list_key`` in one atomic
        step, only while ``lock_key`` holds ``token``; False (nothing written) otherwise."""
        args: list[Any] = [token, count]
        for record in records:
            args.extend(self._prepared(record))
        done = ADD_THEN_TRIM(self.client, [*self._keys, list_key, lock_key], args)
        return int(done) >= 0

    def remove(self, ids: list[str]) -> int:
        if not ids:
            return 0
        removed = 0
        for start in range(0, len(ids), 500):
            chunk = ids[start : start + 500]
            removed += int(REMOVE(self.client, self._keys, chunk))
        return removed

    def counts(self) -> dict[str, int]:
        """Dead letters per connection, without loading a record."""
        raw = self.client.hgetall(self.keys.dlq_counts)
        return {_text(k): int(v) for k, v in raw.items() if int(v) > 0}

    # --- reading ------------------------------------------------------------------------------
    def get(self, entry_id: str) -> DeadLetter | None:
        pipe = self.client.pipeline(transaction=False)
        pipe.hget(self.keys.dlq_data, entry_id)
        pipe.zscore(self.keys.dlq, entry_id)
        raw, score = pipe.execute()
        if raw is None:
            return None
        return self._merged(self._record(entry_id, raw, score, {}), {})

    def _record(self, entry_id: str, raw: bytes, score: float | None, cache: dict[str, Any]) -> DeadLetter:
        """A stored record as written: its base merged back, its time from its score (a record
        of an older version keeps both in itself)."""
        data = orjson.loads(raw)
        ref = data.pop("base", None)
        if isinstance(ref, str) and ref:
            data = {**self._shared(f"{data.get('connection_id')}:{ref}", cache), **data}
        if "dead_lettered_at" not in data and score is not None:
            data["dead_lettered_at"] = float(score) / 1000
        data.setdefault("direction", "")
        data.setdefault("reason", "")
        data.setdefault("error", "")
        record = DeadLetter.from_dict(data)
        record.id = entry_id
        return record

    def _shared(self, field_name: str, cache: dict[str, Any]) -> Any:
        if field_name not in cache:
            raw = self.client.hget(self.keys.dlq_shared, field_name)
            cache[field_name] = orjson.loads(raw) if raw else None
        return cache[field_name] or {}

    def _merged(self, record: DeadLetter, cache: dict[str, Any]) -> DeadLetter:
        """``record`` with its payload as it was mapped: the batch's objects merged back."""
        if not record.shared:
            return record
        objects = self._shared(f"{record.connection_id}:{record.shared}", cache)
        if objects:
            if isinstance(record.payload, dict):
                record.payload = merge_objects(dict(record.payload), objects)
            elif isinstance(record.payload, list):  # a coalesced call's events
                record.payload = [
                    merge_objects(dict(p), objects) if isinstance(p, dict) else p for p in record.payload
                ]
        return record

    def count(self) -> int:
        return int(self.client.zcard(self.keys.dlq))

    def iter(
        self,
        *,
        connection: str | None = None,
        direction: str | None = None,
        reason: str | None = None,
        older_than: float | None = None,
        newer_than: float | None = None,
        now: float | None = None,
        limit: int | None = None,
        chunk: int = 200,
    ) -> Iterator[DeadLetter]:
        """Newest first.  Ages are seconds before ``now``: ``older_than=3600`` = at least 1 h old."""
        now = time.time() if now is None else now
        high: float | str = int((now - older_than) * 1000) if older_than is not None else "+inf"
        low: float | str = int((now - newer_than) * 1000) if newer_than is not None else "-inf"
        yielded = 0
        offset = 0
        cache: dict[str, Any] = {}
        while True:
            scored: list[Any] = self.client.zrevrangebyscore(
                self.keys.dlq, high, low, start=offset, num=chunk, withscores=True
            )
            if not scored:
                return
            offset += len(scored)
            names = [_text(i) for i, _ in scored]
            raws: list[Any] = self.client.hmget(self.keys.dlq_data, names)
            for entry_id, raw, (_, score) in zip(names, raws, scored, strict=True):
                if raw is None:
                    continue
                record = self._record(entry_id, raw, score, cache)
                if connection and record.connection_id != connection:
                    continue
                if direction and record.direction != direction:
                    continue
                if reason and record.reason != reason:
                    continue
                yield self._merged(record, cache)
                yielded += 1
                if limit is not None and yielded >= limit:
                    return

    def select(self, **filters: Any) -> list[DeadLetter]:
        """``iter`` collected: the ``dlq list`` view."""
        return [*self.iter(**filters)]

    # --- replay / purge -----------------------------------------------------------------------
    def replay(
        self,
        records: list[DeadLetter],
        publish: Publish,
        *,
        remap: bool = False,
        queue_for: dict[str, dict[str, str]] | None = None,
    ) -> list[str]:
        """Publish each record again, then remove it.  ``queue_for`` maps connection id ->
        direction -> queue from the current configuration (a region may have moved)."""
        done: list[str] = []
        for record in records:
            queue = ((queue_for or {}).get(record.connection_id) or {}).get(record.direction) or record.queue
            task, args = self._replay_call(record, remap)
            if task != TASK_DELIVER:
                # Re-mapped work goes through the ordinary task, which releases one backlog unit
                # per event when done: add that unit so the counter does not drift down.
                backlog.reserve(self.client, record.connection_id, 1, 2**62, keys=self.keys)
            publish(task, args, queue)
            self.remove([record.id])
            done.append(record.id)
        return done

    @staticmethod
    def _replay_call(record: DeadLetter, remap: bool) -> tuple[str, list[Any]]:
        payload_ok = record.payload is not None and not (
            isinstance(record.payload, dict) and record.payload.get("_truncated")
        )
        if record.request is not None and not (remap and payload_ok):
            item = {
                "request": record.request,
                "payload": record.payload,
                "received_at": record.received_at,
                "first_attempt_at": None,  # a new retry window starts with the replay
                "attempts": 0,
                "history": [
                    *record.history[-MAX_HISTORY + 1 :],
                    {"t": time.time(), "replayed_from": record.id},
                ],
                "backlog": 0,
            }
            return TASK_DELIVER, [record.connection_id, record.direction, [item]]
        if not payload_ok:
            raise ValueError(
                f"dead letter {record.id} has neither a request nor a complete payload to replay"
            )
        return ingest_call(
            record.direction, record.connection_id, record.payload, record.received_at or time.time()
        )

    def purge(self, records: list[DeadLetter]) -> int:
        return self.remove([r.id for r in records])
