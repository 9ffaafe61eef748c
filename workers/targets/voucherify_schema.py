"""The project's customer metadata schema, for ``metadata_schema = "defined"`` (rest mode).

Reading it is ``GET /v1/metadata-schemas``: an ordinary Voucherify API call, paid from the shop's
own quota (SPEC 10).  So it is rare:

* cached in Redis, shared by every worker on every machine (``{p}mschema:{c}``: JSON
  ``{"fetched_at", "schema", "stale"}``, no TTL: an old schema beats none);
* refreshed when older than ``CONNECTOR_METADATA_SCHEMA_REFRESH_SECONDS`` (default 3600, the
  tuning's ``metadata_schema_refresh``), or
  after Voucherify refused an upsert's metadata (400), by one worker at a time (``:lock``);
* the GET takes a grant from the connection's rate limiter like any other call; when none is
  granted, or the GET fails, the last schema stays in use and the refresh is tried again later;
  only work that has no schema at all waits (parked), it is never sent unfiltered;
* each process remembers the schema a few seconds, so items do not each cost a Redis read;
* a GET that fails for good (a 403: the key may not read schemas; a listing over 1 MB) keeps
  the lock for :data:`FAILED_READ_SECONDS`: the next read is that far off, whatever waits.  Work
  without a schema waits a bounded number of attempts (``SCHEMA_ATTEMPTS``, counted as
  attempts with backoff), then goes without its metadata (docs/refusals.md says why).
"""

from __future__ import annotations

import threading
import time
import uuid
from dataclasses import dataclass
from typing import Any, Final

import orjson
import redis

from connector.errors import TransportFailure
from connector.keys import Keys
from workers.delivery.transport import HTTPResult, Transport
from workers.mapping.destination.metadata import CustomerMetadataSchema

PATH: Final = "/v1/metadata-schemas"
LOCK_SECONDS: Final = 30
FAILED_READ_SECONDS: Final = 10  # after a failed read, the next one waits this long
SCHEMA_ATTEMPTS: Final = 3  # attempts an item waits for an unreadable schema, then none
MEMO_SECONDS: Final = 5.0
# A listing of every schema of a project: generous, but bounded (the transport reads no more).
MAX_LISTING_BYTES: Final = 1 << 20


class SchemaUnavailable(Exception):
    """The GET did not give a schema (no answer, an error status, an unreadable body).
    ``lasting``: asking again at once would give the same (a 4xx, a listing over 1 MB), unlike
    no answer, a 429 or a 5xx."""

    def __init__(self, message: str, *, lasting: bool = False) -> None:
        super().__init__(message)
        self.lasting = lasting


@dataclass(frozen=True)
class Cached:
    schema: CustomerMetadataSchema | None
    due: bool  # a refresh is due (old, marked stale, or none yet)


_memo: dict[tuple[str, str], tuple[float, Cached]] = {}
_memo_lock = threading.Lock()


class MetadataSchemas:
    """One connection's cached schema (Redis), and its refresh."""

    def __init__(
        self, client: redis.Redis, keys: Keys, connection_id: str, refresh_seconds: float = 3600.0
    ) -> None:
        self.client = client
        self.refresh_seconds = refresh_seconds
        self.key = f"{keys.prefix}mschema:{connection_id}"
        self.lock_key = self.key + ":lock"
        self._token = uuid.uuid4().hex

    def cached(self) -> Cached:
        now = time.monotonic()
        memo_key = (self.key, str(id(self.client)))
        with _memo_lock:
            memo = _memo.get(memo_key)
        if memo is not None and now - memo[0] < MEMO_SECONDS and not memo[1].due:
            return memo[1]
        raw = self.client.get(self.key)
        entry: Any = orjson.loads(raw) if raw else None
        if not isinstance(entry, dict) or not isinstance(entry.get("schema"), dict):
            return Cached(None, True)
        schema = CustomerMetadataSchema.from_json(entry["schema"])
        age = time.time() - float(entry.get("fetched_at") or 0)
        cached = Cached(schema, bool(entry.get("stale")) or age >= self.refresh_seconds)
        with _memo_lock:
            _memo[memo_key] = (now, cached)
        return cached

    def store(self, schema: CustomerMetadataSchema) -> None:
        entry = {"fetched_at": time.time(), "schema": schema.to_json(), "stale": False}
        self.client.set(self.key, orjson.dumps(entry))
        self._forget()

    def mark_stale(self) -> None:
        """After Voucherify refused metadata: the next item refreshes the schema first."""
        raw = self.client.get(self.key)
        entry: Any = orjson.loads(raw) if raw else None
        if isinstance(entry, dict):
            entry["stale"] = True
            self.client.set(self.key, orjson.dumps(entry))
        self._forget()

    def try_lock(self) -> bool:
        return bool(self.client.set(self.lock_key, self._token, nx=True, ex=LOCK_SECONDS))

    def hold_after_failure(self, seconds: float = FAILED_READ_SECONDS) -> None:
        """Keep the lock (ours) a while after a failed read: the next read is that far off."""
        if self.client.get(self.lock_key) == self._token.encode():
            self.client.pexpire(self.lock_key, max(1, int(seconds * 1000)))

    def unlock(self) -> None:
        if self.client.get(self.lock_key) == self._token.encode():
            self.client.delete(self.lock_key)

    def _forget(self) -> None:
        with _memo_lock:
            _memo.pop((self.key, str(id(self.client))), None)


def fetch(
    transport: Transport, base_url: str, headers: dict[str, str], timeout: tuple[float, float]
) -> CustomerMetadataSchema:
    """``GET /v1/metadata-schemas`` -> the customer schema; raises :class:`SchemaUnavailable`."""
    try:
        result: HTTPResult = transport.send("GET", base_url + PATH, headers, None, timeout)
    except TransportFailure as exc:
        raise SchemaUnavailable(exc.message) from None
    if result.status != 200:
        transient = result.status in (408, 423, 429) or result.status >= 500
        raise SchemaUnavailable(f"HTTP {result.status}", lasting=not transient)
    try:
        return CustomerMetadataSchema.from_listing(orjson.loads(result.body))
    except (orjson.JSONDecodeError, ValueError) as exc:
        # A listing cut at MAX_LISTING_BYTES is unreadable JSON too: lasting.
        raise SchemaUnavailable(f"unreadable metadata schema listing: {exc}", lasting=True) from None


def is_metadata_refusal(result: HTTPResult | TransportFailure) -> bool:
    """A 400 about metadata: the schema changed since it was read (or a value breaks a rule)."""
    return isinstance(result, HTTPResult) and result.status == 400 and "metadata" in result.body.lower()


__all__ = [
    "FAILED_READ_SECONDS",
    "MAX_LISTING_BYTES",
    "SCHEMA_ATTEMPTS",
    "Cached",
    "MetadataSchemas",
    "SchemaUnavailable",
    "fetch",
    "is_metadata_refusal",
]
