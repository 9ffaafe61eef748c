"""``connector resume ID [--system voucherify|segment]``: lift a connection's pauses (its
credentials were refused) at once; pauses are per target system (SPEC 13), both by default."""

from __future__ import annotations

import click
import redis

from connector.contract import SYSTEMS
from connector.keys import Keys
from ops.common import redis_client, settings_or_exit
from workers.delivery import pauses


@click.command()
@click.argument("connection_id")
@click.option(
    "--system",
    type=click.Choice([*SYSTEMS, "all"]),
    default="all",
    show_default=True,
    help="the target system whose pause to lift",
)
def resume(connection_id: str, system: str) -> None:
    """Resume a connection paused after Voucherify or Segment refused its credentials (401/403):
    its parked work is due at once.  The scheduler's probe does the same every 5 minutes by
    itself (for Segment: the outbox's next batch is the probe)."""
    settings = settings_or_exit()
    if settings.connection(connection_id) is None:
        raise click.ClickException(f"no connection {connection_id!r} is configured")
    keys = Keys(settings.key_prefix)
    for name in SYSTEMS if system == "all" else (system,):
        try:
            was, due = pauses.resume(redis_client(), keys, connection_id, name)
        except redis.RedisError as exc:
            raise click.ClickException(f"Redis: {type(exc).__name__}: {exc}") from None
        if was:
            click.echo(
                f"resumed {connection_id} ({name}): {due} parked entr{'y' if due == 1 else 'ies'} due now"
            )
        elif name == pauses.VOUCHERIFY or system != "all":
            click.echo(f"{connection_id} was not paused ({name}; {due} paused entries made due)")
