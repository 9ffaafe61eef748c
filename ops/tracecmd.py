"""``connector trace ID``: the journey of one event (SPEC 12), read from Redis.

Works with only ``REDIS_URL`` (and ``CONNECTOR_KEY_PREFIX``), like ``connector dlq``: the
trace names its connection itself.  Exit status 1 when no trace is found.
"""

from __future__ import annotations

import click
import redis

from connector import config, tracereader
from connector.keys import Keys
from ops.common import print_json, redis_client


@click.command("trace")
@click.argument("event_id")
@click.option("--connection", default=None, help="only this connection's trace of the id")
@click.option("--json", "as_json", is_flag=True, help="machine-readable output")
def trace_command(event_id: str, connection: str | None, as_json: bool) -> None:
    """The journey of one event: a Segment messageId or a Voucherify event id.

    Received (when the web accepted it, which door, which connection), mapping (subscriptions
    matched and not), each attempt (method, path, status, latency, an excerpt of the answer),
    waits (held in the hold window, quota, retries, until when) and the outcome; a failed
    attempt that is retried says when.  Times are ISO 8601, UTC.  Kept TRACE_RETENTION_HOURS (default 24); under heavy
    load only a share of delivered events keep theirs, failures and skips always do.

    Traces are kept per connection (ids are the clients'): an id found on several connections
    is listed once per connection; --connection picks one.
    """
    try:
        found = tracereader.find(redis_client(), Keys(config.key_prefix()), event_id, connection)
    except redis.RedisError as exc:
        raise click.ClickException(f"Redis: {type(exc).__name__}: {exc}") from None
    if as_json:
        if len(found) <= 1:
            print_json(tracereader.summary(event_id, next(iter(found.values()), [])))
        else:
            print_json(
                {
                    "id": event_id,
                    "found": True,
                    "connections": list(found),
                    "traces": [tracereader.summary(event_id, records) for records in found.values()],
                }
            )
    elif not found:
        click.echo(tracereader.render(event_id, []), nl=False)
    else:
        if len(found) > 1:
            click.echo(f"{event_id!r} has traces on {len(found)} connections: {', '.join(found)}")
        for records in found.values():
            click.echo(tracereader.render(event_id, records), nl=False)
    if not found:
        raise SystemExit(1)
