"""Hand accepted work to the broker: one message per request, never one per event.

Answering 2xx means the broker holds the work (SPEC 2.1), so every failure to publish becomes a
503 with ``Retry-After`` that Segment's libraries retry.  Before publishing, the connection's
backlog counter is reserved; over its bound the client gets a 429 instead of Redis running out
of memory (SPEC 5, backpressure).
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Sequence
from typing import Any, NoReturn

import redis
from celery import Celery
from kombu.exceptions import KombuError, OperationalError

from app.errors import ApiError
from connector import backlog, regulations
from connector.broker import NotReplicated
from connector.config import Connection
from connector.contract import TASK_REGULATE, TASK_SEGMENT_EVENTS, TASK_VOUCHERIFY_WEBHOOK
from connector.kept import KeptGuard
from connector.keys import Keys
from connector.memory import MemoryGuard

log = logging.getLogger("connector.ingest")

RETRY_AFTER_UNAVAILABLE = "5"
RETRY_AFTER_BACKLOG = "30"

# Everything that means "the broker did not take it": Redis gone, a timeout, a refused publish.
_BROKER_ERRORS: tuple[type[BaseException], ...] = (
    OperationalError,
    KombuError,
    redis.RedisError,
    ConnectionError,
    TimeoutError,
    OSError,
)


def not_replicated() -> ApiError:
    return ApiError(
        503,
        "not_replicated",
        "the queue's replicas did not acknowledge the work in time (REDIS_MIN_REPLICAS); retry later",
        headers={"Retry-After": RETRY_AFTER_UNAVAILABLE},
    )


def unavailable() -> ApiError:
    return ApiError(
        503,
        "broker_unavailable",
        "the queue is unavailable; nothing was accepted, retry later",
        headers={"Retry-After": RETRY_AFTER_UNAVAILABLE},
    )


class Enqueuer:
    def __init__(
        self,
        celery: Celery,
        client: redis.Redis,
        keys: Keys,
        memory: MemoryGuard | None = None,
        kept: KeptGuard | None = None,
    ) -> None:
        self.celery = celery
        self.redis = client
        self.keys = keys
        self.memory = memory
        self.kept = kept

    def _bounds(self, connection: Connection) -> None:
        """The bounds of Redis memory other than the backlog (SPEC 16): the whole Redis near
        its maxmemory (503 ``redis_memory_full``: room is kept for the workers to finish), the
        connection's dead letters over their bound (429 ``dead_letters_full``: they are data,
        never dropped; an operator replays or purges them), its ledger and customer records
        over theirs (429 ``customer_records_full``, connector.kept).  Named in the answer (by
        cause, never by connection id: a browser's write key is public, and ids are what the
        webhook doors keep to themselves), the log and the refusals metric (by code)."""
        seen = self.memory.full() if self.memory is not None else None
        if seen is not None:
            log.warning(
                "redis memory over its high water: refusing new work",
                extra={"connection": connection.id, "used": seen.used, "maxmemory": seen.maxmemory},
            )
            raise ApiError(
                503,
                "redis_memory_full",
                "Redis is nearly out of memory; nothing was accepted, retry later",
                headers={"Retry-After": RETRY_AFTER_BACKLOG},
            )
        dead = int(self.redis.hget(self.keys.dlq_bytes, connection.id) or 0)
        if dead >= connection.dead_letter_bytes_limit:
            _full(
                connection.id,
                "dead letters",
                dead,
                "dead_letters_full",
                "this connection holds too many dead letters (replay or purge them: connector dlq)",
            )
        # The ledger, stale times and unchanged digests outlive the backlog by days (keyed by the
        # client's ids: a flood of distinct userIds makes them); their bound (connector.kept).
        records = self.kept.over(connection.id) if self.kept is not None else None
        if records is not None:
            _full(
                connection.id,
                "customer records",
                records,
                "customer_records_full",
                "this connection keeps too many per-customer records "
                "(CUSTOMER_RECORDS_MB; they expire by themselves)",
            )

    def _reserve(self, connection: Connection, count: int, stored_bytes: int, *, flow: bool = False) -> None:
        try:
            self._bounds(connection)
            ok = backlog.reserve(
                self.redis,
                connection.id,
                count,
                connection.backlog_limit,
                stored_bytes=stored_bytes,
                bytes_limit=connection.backlog_bytes_limit,
                keys=self.keys,
                flow=flow,
            )
        except _BROKER_ERRORS:
            log.warning("redis unavailable while reserving backlog", extra={"connection": connection.id})
            raise unavailable() from None
        if not ok:
            raise ApiError(
                429,
                "backlog_full",
                "this connection has too much queued work; retry later",
                headers={"Retry-After": RETRY_AFTER_BACKLOG},
            )

    def _publish(
        self, connection: Connection, count: int, stored_bytes: int, name: str, args: list[Any], queue: str
    ) -> None:
        # Segment events (towards Voucherify) are the forecast's arrivals.
        self._reserve(connection, count, stored_bytes, flow=name == TASK_SEGMENT_EVENTS)
        try:
            # argsrepr: Celery would otherwise saferepr() the whole payload into a header on every
            # publish (measurable on a 100-event batch), and copy event data into Flower/logs.
            self.celery.send_task(
                name,
                args=args,
                queue=queue,
                routing_key=queue,
                retry=False,
                argsrepr=f"[{connection.id!r}, <{count} event(s)>]",
                kwargsrepr="{}",
            )
        except NotReplicated as exc:
            # The message IS on the master (its worker will release the backlog it reserved): the
            # client's retry may deliver it twice, which the idempotency ledger absorbs; a 200
            # could have been lost for good by a failover now.
            log.warning(
                "publish not acknowledged by enough replicas",
                extra={"connection": connection.id, "error": str(exc)},
            )
            raise not_replicated() from None
        except _BROKER_ERRORS:
            log.warning("broker unavailable while publishing", extra={"connection": connection.id})
            with contextlib.suppress(*_BROKER_ERRORS):  # else the scheduler's reconcile heals it
                backlog.release(self.redis, connection.id, count, stored_bytes, keys=self.keys)
            raise unavailable() from None

    def segment_events(
        self, connection: Connection, events: Sequence[Any], shared: dict[str, Any], stored_bytes: int
    ) -> None:
        """``events``: dicts, or their JSON as ``orjson.Fragment`` (embedded as they are);
        ``shared``: the fields they have in common, stored once (connector.contract)."""
        self._publish(
            connection,
            len(events),
            stored_bytes,
            TASK_SEGMENT_EVENTS,
            [connection.id, events, shared, stored_bytes],
            connection.voucherify.queue,
        )

    def voucherify_webhook(
        self, connection: Connection, payload: Any, received_at: float, stored_bytes: int
    ) -> None:
        assert connection.segment is not None
        self._publish(
            connection,
            1,
            stored_bytes,
            TASK_VOUCHERIFY_WEBHOOK,
            [connection.id, payload, received_at, stored_bytes],
            connection.segment.queue,
        )

    def suppressed(self, connection: Connection, user_ids: Sequence[Any]) -> set[str]:
        """Which of ``user_ids`` a regulation suppresses on the connection (SPEC 14): one
        ``SMISMEMBER`` per request.  Redis unreachable: 503, as the publish would be -- an event
        is never let through unchecked."""
        try:
            return regulations.suppressed_among(self.redis, self.keys, connection.id, user_ids)
        except _BROKER_ERRORS:
            raise unavailable() from None

    def regulation(self, connection: Connection, regulation_id: str) -> None:
        """A regulation's deletion for one connection, on its Voucherify queue (the deletion is a
        Voucherify call).  No backlog reserved: an operator's request is never refused for
        traffic, and it holds no events."""
        try:
            self.celery.send_task(
                TASK_REGULATE,
                args=[regulation_id, connection.id],
                queue=connection.voucherify.queue,
                routing_key=connection.voucherify.queue,
                retry=False,
            )
        except _BROKER_ERRORS:
            log.warning(
                "broker unavailable while publishing a regulation", extra={"connection": connection.id}
            )
            raise unavailable() from None


def _full(connection_id: str, what: str, used: int, code: str, message: str) -> NoReturn:
    """A bound of the connection's is reached: said in the log (with the connection id) and in a
    429 naming the cause -- but not the connection (a browser's write key is public)."""
    log.warning(
        f"{what} over their bound: refusing new work", extra={"connection": connection_id, "bytes": used}
    )
    raise ApiError(429, code, f"{message}; retry later", headers={"Retry-After": RETRY_AFTER_BACKLOG})
