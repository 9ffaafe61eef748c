"""The scheduler process (``connector scheduler``): parked work back onto Celery queues.

Each tick::

    release due holds (Lua, per connection) ──> one delayed entry of held upserts, due now
    claim_due (atomic Lua, leased) ──> publish connector.deliver(connection, direction, items)
                                         to the entry's queue ──> ack (ZREM + HDEL)
    sweep Segment outboxes ──────────> publish connector.segment_flush(connection) for each
                                         non-empty, unlocked, due outbox
    every reconcile_interval ────────> backlog.reconcile: reset counters left high by a process
                                         that died between reserving and publishing

Publish happens before the ack: a crash in between re-publishes the entry when its lease ends
(the ledger absorbs the duplicate); an entry that cannot be published (broker away) is simply
not acked and comes back after its lease.  Several schedulers may run (one per dyno, or a
rolling restart): the lease makes each entry go to one of them.  The loop never dies on a Redis
or broker error -- it logs, backs off (up to a few seconds) and carries on, so Redis restarts
and reconnects are survived.  SIGTERM/SIGINT stop it after the current tick.
"""

from __future__ import annotations

import logging
import signal
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from types import FrameType

import redis
from kombu.exceptions import KombuError

from connector import backlog, metrics
from connector.config import Settings
from connector.contract import TASK_DELIVER, TASK_SEGMENT_FLUSH
from connector.keys import Keys
from connector.publish import Publish, celery_publish
from connector.tuning import SchedulerConfig
from workers.delivery import holds, outbox
from workers.delivery.store import DelayedStore

log = logging.getLogger("connector.scheduler")

_PUBLISH_ERRORS: tuple[type[BaseException], ...] = (KombuError, redis.RedisError, OSError, ConnectionError)


@dataclass
class TickResult:
    published: int = 0
    failed: int = 0
    flushes: int = 0
    more: bool = False  # a full batch was claimed: run again without sleeping


@dataclass
class Scheduler:
    client: redis.Redis
    keys: Keys
    publish: Publish = celery_publish
    config: SchedulerConfig = field(default_factory=SchedulerConfig)
    stop_event: threading.Event = field(default_factory=threading.Event)
    # (connection id, its broker queues), from the configuration: for backlog.reconcile.
    connections: list[tuple[str, list[str]]] = field(default_factory=list)
    _next_reconcile: float = 0.0
    # Periodic duties run every tick (each decides when it is due), e.g. probing paused
    # connections (workers.delivery.pauses.Prober).  A duty's failure is logged, not fatal.
    duties: list[Callable[[], object]] = field(default_factory=list)

    def tick(self, now: float | None = None) -> TickResult:
        result = TickResult()
        # Customers whose hold window ended: their upserts into the delayed store, due now.
        holds.release_due(self.client, self.keys)
        store = DelayedStore(self.client, self.keys)
        entries = store.claim_due(now=now, limit=self.config.batch, lease=self.config.lease)
        result.more = len(entries) >= self.config.batch
        done: list[str] = []
        for entry in entries:
            try:
                self.publish(TASK_DELIVER, [entry.connection_id, entry.direction, entry.items], entry.queue)
            except _PUBLISH_ERRORS as exc:
                # Not acked: due again when the lease ends.
                result.failed += 1
                metrics.SCHEDULER_ERRORS.labels("publish").inc()
                log.warning(
                    "could not publish parked work", extra={"queue": entry.queue, "error": str(exc)[:200]}
                )
                continue
            metrics.SCHEDULER_PUBLISHED.labels(entry.queue).inc()
            done.append(entry.id)
            result.published += 1
        store.ack(done)
        result.flushes = self.sweep_outboxes(now)
        self.reconcile_backlogs()
        for duty in self.duties:
            try:
                duty()
            except (redis.RedisError, OSError) as exc:
                log.warning("a scheduler duty failed", extra={"error": str(exc)[:200]})
        return result

    def reconcile_backlogs(self) -> list[str]:
        mono = time.monotonic()
        if not self.connections or mono < self._next_reconcile:
            return []
        self._next_reconcile = mono + self.config.reconcile_interval
        reset = backlog.reconcile(
            self.client, self.connections, interval=self.config.reconcile_interval, keys=self.keys
        )
        for connection_id in reset:
            log.warning(
                "backlog counters reset: nothing holds this connection's work any more",
                extra={"connection": connection_id},
            )
        return reset

    def sweep_outboxes(self, now: float | None = None) -> int:
        published = 0
        for connection_id, queue in outbox.sweep(self.client, self.keys, now=now):
            if not queue:
                continue
            try:
                self.publish(TASK_SEGMENT_FLUSH, [connection_id], queue)
            except _PUBLISH_ERRORS as exc:
                outbox.unmark_swept(self.client, self.keys, connection_id)
                metrics.SCHEDULER_ERRORS.labels("publish").inc()
                log.warning(
                    "could not publish an outbox flush", extra={"queue": queue, "error": str(exc)[:200]}
                )
                continue
            metrics.OUTBOX_FLUSHES_PUBLISHED.labels(connection_id).inc()
            published += 1
        return published

    def run(self) -> None:
        log.info("scheduler started", extra={"prefix": self.keys.prefix, "interval": self.config.interval})
        backoff = 0.0
        while not self.stop_event.is_set():
            try:
                result = self.tick()
                backoff = 0.0
                if result.more:
                    continue
                wait = self.config.interval
            except redis.RedisError as exc:
                backoff = min(self.config.max_backoff, max(0.5, backoff * 2))
                metrics.SCHEDULER_ERRORS.labels("redis").inc()
                log.warning(
                    "redis unavailable; retrying", extra={"error": str(exc)[:200], "backoff": backoff}
                )
                wait = backoff
            except Exception:
                # A bug must not stop the process that brings every retry back: log and continue.
                backoff = min(self.config.max_backoff, max(0.5, backoff * 2))
                metrics.SCHEDULER_ERRORS.labels("internal").inc()
                log.exception("scheduler tick failed")
                wait = backoff
            self.stop_event.wait(wait)
        log.info("scheduler stopped")

    def install_signal_handlers(self) -> None:
        def stop(signum: int, frame: FrameType | None) -> None:
            log.info("signal %s: stopping after this tick", signum)
            self.stop_event.set()

        signal.signal(signal.SIGTERM, stop)
        signal.signal(signal.SIGINT, stop)


def connection_queues(settings: Settings) -> list[tuple[str, list[str]]]:
    """(connection id, the broker queues its work travels on), for :func:`backlog.reconcile`."""
    return [(c.id, c.queues) for c in settings.connections]
