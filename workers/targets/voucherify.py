"""Voucherify as a delivery target (Segment -> Voucherify, SPEC 3 and 5).

- Base URL and queue by region (:mod:`connector.regions`, resolved when the settings load), or a
  dedicated cluster's ``api_url``.
- Credentials: ``X-App-Id``/``X-App-Token`` (rest), or the Actions destination's base64 pair
  (segmentio).
- Budgets (SPEC 10): the connection's quota settings as named budgets, and what Voucherify's
  answers say about them (429 types, the shop's reserve, 401/403): see
  :mod:`workers.targets.voucherify_quota`.  ``Retry-After`` and ``X-Rate-Limit-Retry`` (the
  epoch second of the next allowed call) are waits.
- Coalescing (rest mode): a task's upserts merged and sent in bulk
  (:mod:`workers.targets.voucherify_coalesce`); across tasks, the hold window, the unchanged
  skip and the read-back of bulk calls (:mod:`workers.targets.voucherify_fewer`).
- Stale-update rule: a customer upsert older than the newest one applied is not sent.
- ``metadata_schema = "defined"`` (rest): customer metadata kept to the project's metadata
  schema (:mod:`workers.targets.voucherify_schema`), never sent unfiltered; a 400 about metadata
  refreshes the schema and tries once more.
"""

from __future__ import annotations

import base64
import threading
import time
from collections.abc import Mapping, Sequence
from typing import Any

from connector import CHANNEL, USER_AGENT, metrics
from connector.config import Connection, VoucherifySettings
from connector.contract import DESTINATION, DeliveryItem
from connector.keys import Keys
from connector.tuning import Tuning
from workers.delivery import outcomes
from workers.delivery.attempts import append_history
from workers.delivery.budgets import Budget, Budgets, Observation
from workers.delivery.classify import retry_after
from workers.delivery.pauses import PAUSED_REASON
from workers.delivery.stale import event_time_ms
from workers.delivery.transport import HTTPResult, Transport
from workers.mapping.destination.actions import UPSERT_CUSTOMER
from workers.mapping.destination.metadata import (
    CustomerMetadataSchema,
    carries_customer_metadata,
    filter_request,
)
from workers.outbound import OutboundRequest
from workers.targets.base import Answer, HttpTarget, Wait
from workers.targets.voucherify_coalesce import coalesce_items, rebuild
from workers.targets.voucherify_fewer import FewerCalls
from workers.targets.voucherify_quota import (
    parse_rate_limit_retry,
    path_of,
    quota_budgets,
    reading,
    remember_headers,
    spends,
    warn_if_assumed,
)
from workers.targets.voucherify_schema import (
    SCHEMA_ATTEMPTS,
    MetadataSchemas,
    SchemaUnavailable,
    fetch,
    is_metadata_refusal,
)

NAME = "voucherify"
MAX_METADATA_KEY_LABELS = 100


def probe_path(connection: Connection) -> str:
    """The credentials probe's call (``connector check``'s): no data read or written."""
    if connection.voucherify.mode == "segmentio":
        return "/segmentio/test-authentication"
    return "/v1/customers?limit=1"


def auth_headers(vf: VoucherifySettings) -> dict[str, str]:
    """The credential headers for a connection's mode.  Never stored, never logged."""
    app_id = vf.app_id.reveal()
    secret = vf.secret_key.reveal()
    if vf.mode == "segmentio":
        # As the Actions destination: Basic base64(app id) without a colon or password, and the
        # secret key base64-encoded in its own header.
        return {
            "authorization": "Basic " + base64.b64encode(app_id.encode()).decode("ascii"),
            "secret-key": base64.b64encode(secret.encode()).decode("ascii"),
        }
    return {"X-App-Id": app_id, "X-App-Token": secret}


def budgets_of(connection: Connection) -> tuple[Budget, ...]:
    """Every budget of ``connection`` towards Voucherify (``connector stats``, the forecast)."""
    return tuple(quota_budgets(connection.voucherify.quota).values())


def server_wait(answer: Answer, now: float | None = None) -> float | None:
    """The longest wait the answer asks for, or None.  ``X-Rate-Limit-Retry`` (the end of the
    current quota period, on every answer) is a wait only on a 429: a 503's retry or a poll of
    an async action must not wait for the end of the hour."""
    if not isinstance(answer, HTTPResult):
        return None
    limit_retry = (
        parse_rate_limit_retry(answer.headers.get("x-rate-limit-retry"), time.time() if now is None else now)
        if answer.status == 429
        else None
    )
    waits = [w for w in (retry_after(answer, now), limit_retry) if w is not None]
    return max(waits) if waits else None


class VoucherifyTarget(FewerCalls, HttpTarget):
    name = NAME
    direction = DESTINATION

    def __init__(
        self,
        connection: Connection,
        *,
        client: Any,
        keys: Keys,
        tuning: Tuning,
        budgets: Budgets,
        schema_transport: Transport | None = None,
    ) -> None:
        vf = connection.voucherify
        super().__init__(connection, queue=vf.queue, region=vf.region, base_url=vf.base_url)
        self.settings = vf
        self.client = client
        self.keys = keys
        self.tuning = tuning
        self.budgets = budgets
        self.schema_transport = schema_transport
        self._by_name = quota_budgets(vf.quota)
        warn_if_assumed(connection.id, vf.quota)
        # metadata_schema = "defined" (rest mode): the connection's cached customer metadata schema.
        self.schemas: MetadataSchemas | None = None
        if keeps_metadata_to_schema(connection):
            self.schemas = MetadataSchemas(client, keys, connection.id, tuning.metadata_schema_refresh)

    budgets_of = staticmethod(budgets_of)

    def budgets_for(self, request: OutboundRequest | None) -> tuple[Budget, ...]:
        return spends(self._by_name, request.path if request is not None else None)

    @staticmethod
    def configured(connection: Connection) -> bool:
        return True  # every connection has a [connection.voucherify] section

    def auth_headers(self) -> dict[str, str]:
        return auth_headers(self.settings)

    def probe_call(self) -> tuple[str, str] | None:
        return "GET", probe_path(self.connection)

    def server_wait(self, answer: Answer) -> float | None:
        return server_wait(answer)

    def interpret(self, answer: Answer, spent: tuple[Budget, ...] = ()) -> Observation:
        if not isinstance(answer, HTTPResult):
            return super().interpret(answer, spent)
        path = path_of(spent)
        if self.client is not None:
            remember_headers(
                self.client, self.keys.quota_seen(self.connection.id), self.connection.id, answer, path
            )
        return reading(answer, self.settings.quota, path, self.server_wait(answer))

    def stale_time(self, action: str | None, event_time: str | None) -> int | None:
        return event_time_ms(event_time) if action == UPSERT_CUSTOMER else None

    def rebuild(self, request: OutboundRequest, live: Sequence[Mapping[str, Any]]) -> OutboundRequest | None:
        return rebuild(request, live)

    def coalesce(self, items: list[DeliveryItem]) -> list[DeliveryItem]:
        # Bulk only when its budgets grant it now (SPEC 10): else the customers go singly.
        return coalesce_items(items, allow_bulk=self.pregrant_bulk) if self.settings.mode == "rest" else items

    # --- the metadata schema ------------------------------------------------------------------

    def prepare(self, request: OutboundRequest, item: DeliveryItem) -> OutboundRequest | Wait:
        """``request`` with only the customer metadata the project's schema defines, or a wait
        while no schema has ever been read (never sent unfiltered).  An unreadable schema (403,
        a listing over 1 MB) is waited for ``SCHEMA_ATTEMPTS`` counted attempts, then the
        request goes without its metadata: none is known to be defined."""
        schemas = self.schemas
        if schemas is None or not carries_customer_metadata(request):
            return request
        cached = schemas.cached()
        schema = cached.schema
        if cached.due and schemas.try_lock():
            lasting = False
            try:
                refreshed = self._refresh_schema(schemas, request, item, have_one=schema is not None)
                lasting = isinstance(refreshed, SchemaUnavailable) and refreshed.lasting
            finally:
                if lasting:
                    schemas.hold_after_failure()  # the next read is FAILED_READ_SECONDS off
                else:
                    schemas.unlock()
            if isinstance(refreshed, SchemaUnavailable):
                refreshed = None
            if isinstance(refreshed, Wait):
                return refreshed
            schema = refreshed or schema
        reason = None
        if schema is None:
            # Another worker is reading it, or the read failed: wait for it, in the delayed
            # store -- as a counted attempt, a bounded number of times.
            waits = int(item.get("schema_waits") or 0) + 1
            if waits < SCHEMA_ATTEMPTS:
                return self._schema_wait(item, waits)
            schema, reason = CustomerMetadataSchema(), "schema_unavailable"
        kept, dropped = filter_request(request, schema)
        if dropped and not item.get("metadata_counted"):
            item["metadata_counted"] = True
            for key, why in dropped:
                label = metadata_key_label(self.connection.id, key)
                metrics.METADATA_DROPPED.labels(self.connection.id, label, reason or why).inc()
        return kept

    def _schema_wait(self, item: DeliveryItem, waits: int) -> Wait:
        """The item's ``waits``-th attempt without a schema: counted (its history says why),
        parked with the retry backoff."""
        now = time.time()
        item["schema_waits"] = waits
        item["attempts"] = int(item.get("attempts") or 0) + 1
        if not item.get("first_attempt_at"):
            item["first_attempt_at"] = now
        entry = {"t": round(now, 3), "status": None, "error": "metadata schema unavailable", "latency_ms": 0}
        append_history(item.setdefault("history", []), entry)
        delay = min(self.tuning.retry_cap, self.tuning.retry_base * 2 ** (waits - 1))
        return Wait("metadata_schema", delay)

    def _refresh_schema(
        self, schemas: MetadataSchemas, request: OutboundRequest, item: DeliveryItem, *, have_one: bool
    ) -> CustomerMetadataSchema | Wait | SchemaUnavailable | None:
        """One ``GET /v1/metadata-schemas``, stored for every worker; why not, or None when no
        grant was given for it while a schema is at hand."""
        # It spends the shop's quota like any call: a grant first.
        # With a schema at hand a denial parks nothing (the one we have is used): no slot then.
        budgets = self.budgets_for(None)
        grant = self.budgets.acquire(budgets, has_slot=bool(item.get("parked")), parks=not have_one)
        if not grant.granted:
            if have_one:
                return None  # keep using the one we have
            if grant.reason == PAUSED_REASON:  # until the resume, not due again at once
                return Wait(PAUSED_REASON, self.tuning.auth_probe)
            return Wait("throttled", grant.wait)
        headers = {"User-Agent": USER_AGENT, "X-Voucherify-Channel": CHANNEL, **self.auth_headers()}
        timeouts = (self.tuning.connect_timeout, self.tuning.read_timeout)
        assert self.schema_transport is not None
        try:
            schema: CustomerMetadataSchema | SchemaUnavailable = fetch(
                self.schema_transport, self.base_url, headers, timeouts
            )
        except SchemaUnavailable as exc:
            schema = exc
        self.budgets.answered(budgets, grant)  # answered late: counted again (it may have arrived late)
        self.budgets.release(grant)  # its answer's headers are not read: no probe's word
        if isinstance(schema, SchemaUnavailable):
            outcomes.report(
                connection=self.connection.id,
                direction=self.direction,
                outcome="metadata_schema_unavailable",
                message_id=request.message_id,
                action=request.action,
                error=str(schema),
            )
            return schema
        schemas.store(schema)
        return schema

    def after_refusal(self, answer: Answer, item: DeliveryItem) -> Wait | None:
        too_large = self.refused_for_size(answer, item)  # a big bulk: cut, never dead-lettered
        if too_large is not None:
            return too_large
        if self.schemas is None or not is_metadata_refusal(answer) or item.get("metadata_refreshed"):
            return None
        # The schema changed since it was read: refresh it, and try once more with it.
        self.schemas.mark_stale()
        item["metadata_refreshed"] = True
        return Wait("metadata_schema", 1.0)


def keeps_metadata_to_schema(connection: Connection) -> bool:
    return connection.voucherify.mode == "rest" and connection.destination.metadata_schema == "defined"


_metadata_keys: dict[str, set[str]] = {}
_metadata_lock = threading.Lock()


def metadata_key_label(connection_id: str, key: str) -> str:
    """The dropped key as a metric label: its name, for at most 100 names per connection and
    process (event data chooses the names: the label set stays bounded), then ``_other``."""
    with _metadata_lock:
        seen = _metadata_keys.setdefault(connection_id, set())
        if key in seen:
            return key
        if len(seen) >= MAX_METADATA_KEY_LABELS or len(key) > 100:
            return "_other"
        seen.add(key)
        return key


__all__ = [
    "NAME",
    "VoucherifyTarget",
    "auth_headers",
    "budgets_of",
    "parse_rate_limit_retry",
    "server_wait",
]
