"""``connector send-test``: one sample event through a connection, as the ingest enqueues it,
waiting for the target's acknowledgement (the idempotency ledger records it) or a dead letter."""

from __future__ import annotations

import time
import uuid
from dataclasses import dataclass, field
from typing import Any

import click

from app.enqueue import Enqueuer
from app.errors import ApiError
from app.ingest import ingest_body
from connector import redisconn
from connector.celery_app import create_celery
from connector.config import Connection, Settings
from connector.errors import MappingError, SkipEvent
from connector.keys import Keys
from ops.common import pick_connection, settings_or_exit
from workers.delivery.deadletters import DeadLetters
from workers.delivery.ledger import Ledger
from workers.mapping.destination import map_event


@dataclass
class Sent:
    message_id: str
    keys: list[str]
    actions: list[str]
    started: float = field(default_factory=time.monotonic)


@dataclass
class Outcome:
    delivered: bool
    seconds: float
    dead_letter: Any = None


def sample_event(user_id: str, event_name: str) -> dict[str, Any]:
    return {
        "type": "track",
        "userId": user_id,
        "event": event_name,
        "messageId": f"send-test-{uuid.uuid4()}",
        "properties": {"sent_by": "connector send-test"},
        "context": {"library": {"name": "connector-send-test", "version": "1"}},
    }


def enqueue_sample(settings: Settings, connection: Connection, *, user_id: str, event_name: str) -> Sent:
    """Validate, map (to know the idempotency keys) and enqueue exactly as the ingest does."""

    result = ingest_body(sample_event(user_id, event_name), "track")
    if result.rejected:
        raise click.ClickException(f"the sample event is invalid: {result.rejected[0].message}")
    event = result.expanded()[0]  # as the worker will see it
    try:
        outbound = map_event(event, connection)
    except SkipEvent as exc:
        click.echo(f"note: connection {connection.id!r} skips this event ({exc}); enqueuing anyway", err=True)
        outbound = []
    except MappingError as exc:
        raise click.ClickException(f"the sample event does not map: {exc}") from None
    client = redisconn.client(
        settings.redis, settings.redis_tls_verify, socket_connect_timeout=3, socket_timeout=10
    )
    keys = Keys(settings.key_prefix)
    try:
        Enqueuer(
            create_celery(settings.redis, settings.redis_tls_verify, settings.broker, settings.key_prefix),
            client,
            keys,
        ).segment_events(connection, result.encoded, result.shared, result.stored_bytes)
    except ApiError as exc:
        raise click.ClickException(f"could not enqueue: {exc.code}: {exc.message}") from None
    return Sent(
        message_id=str(event["messageId"]),
        keys=[r.idempotency_key for r in outbound],
        actions=[r.action for r in outbound],
    )


def wait_for_delivery(
    settings: Settings, connection: Connection, sent: Sent, *, timeout: float, interval: float = 0.2
) -> Outcome:
    """Until the ledger records every call as done (the target acknowledged), or a dead letter."""
    client = redisconn.client(
        settings.redis, settings.redis_tls_verify, socket_connect_timeout=3, socket_timeout=10
    )
    keys = Keys(settings.key_prefix)
    ledger = Ledger(client, keys, connection.id)
    dead = DeadLetters(client, keys)
    deadline = time.monotonic() + timeout
    while True:
        if all(ledger.done_many(sent.keys)):
            return Outcome(True, time.monotonic() - sent.started)
        for record in dead.iter(connection=connection.id, newer_than=timeout + 60, limit=50):
            if record.message_id == sent.message_id or record.idempotency_key in sent.keys:
                return Outcome(False, time.monotonic() - sent.started, record)
        if time.monotonic() > deadline:
            return Outcome(False, time.monotonic() - sent.started)
        time.sleep(interval)


@click.command("send-test")
@click.option("--connection", "-c", "connection_id", help="connection id (default: the only one)")
@click.option("--user-id", default="connector-send-test", show_default=True, help="userId of the event")
@click.option("--event", "event_name", default="Connector Test Event", show_default=True)
@click.option("--wait/--no-wait", default=True, help="wait until the target acknowledged it")
@click.option("--timeout", type=float, default=30.0, show_default=True, help="seconds to wait")
def send_test(connection_id: str | None, user_id: str, event_name: str, wait: bool, timeout: float) -> None:
    """Send one sample track event through a connection, as the ingest would enqueue it.

    The event goes on the connection's Voucherify queue like any accepted event; a running
    worker delivers it.  With --wait (default) this waits for the idempotency ledger to record
    the delivery, i.e. until Voucherify (or the fake) acknowledged it, or for a dead letter.
    """
    settings = settings_or_exit()
    connection = pick_connection(settings, connection_id)
    sent = enqueue_sample(settings, connection, user_id=user_id, event_name=event_name)
    click.echo(
        f"enqueued {sent.message_id} on {connection.voucherify.queue} for connection {connection.id!r}: "
        f"{len(sent.keys)} Voucherify call(s) expected ({', '.join(sent.actions) or 'none: skipped by settings'})"
    )
    if not sent.keys:
        return
    if not wait:
        click.echo(
            "watch it with: connector stats   (queues),  connector dlq list -c "
            f"{connection.id}   (failures), or the worker's log (message_id={sent.message_id})"
        )
        return
    result = wait_for_delivery(settings, connection, sent, timeout=timeout)
    if result.delivered:
        click.echo(f"delivered: {connection.voucherify.base_url} acknowledged it after {result.seconds:.2f}s")
        return
    if result.dead_letter is not None:
        raise click.ClickException(
            f"dead-lettered ({result.dead_letter.reason}, status {result.dead_letter.status}): "
            f"{result.dead_letter.error}; see connector dlq show {result.dead_letter.id}"
        )
    raise click.ClickException(
        f"not acknowledged within {timeout:.0f}s: is a worker consuming {connection.voucherify.queue}? "
        "(connector stats shows the queue; it may also be waiting for a retry or a rate limit)"
    )
