"""``connector resume ID``: lift a connection's pause (its credentials were refused) at once."""

from __future__ import annotations

import click
import redis

from connector.keys import Keys
from ops.common import redis_client, settings_or_exit
from workers.delivery import pauses


@click.command()
@click.argument("connection_id")
def resume(connection_id: str) -> None:
    """Resume a connection paused after Voucherify refused its credentials (401/403): its parked
    work is due at once.  The scheduler's probe does the same every 5 minutes by itself."""
    settings = settings_or_exit()
    if settings.connection(connection_id) is None:
        raise click.ClickException(f"no connection {connection_id!r} is configured")
    keys = Keys(settings.key_prefix)
    try:
        was, due = pauses.resume(redis_client(), keys, connection_id)
    except redis.RedisError as exc:
        raise click.ClickException(f"Redis: {type(exc).__name__}: {exc}") from None
    if was:
        click.echo(f"resumed {connection_id}: {due} parked entr{'y' if due == 1 else 'ies'} due now")
    else:
        click.echo(f"{connection_id} was not paused ({due} paused entries made due)")
