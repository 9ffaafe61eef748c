"""``connector overview``: the delivery overview of the status page, per connection (SPEC 12)."""

from __future__ import annotations

from typing import Any

import click
import redis

from connector import overview
from connector.keys import Keys
from ops.common import print_json, redis_client, settings_or_exit


def _reasons(counts: dict[str, int]) -> str:
    return ", ".join(f"{reason} {n}" for reason, n in sorted(counts.items())) or "0"


def _line(period: dict[str, Any]) -> str:
    return (
        f"received {period['received']}  delivered {period['delivered']}  failed {period['failed']}  "
        f"waited for quota {period['waiting_quota']}\n"
        f"      rejected: {_reasons(period['rejected'])}\n"
        f"      skipped: {_reasons(period['skipped'])}\n"
        f"      dead-lettered: {_reasons(period['dead_letter'])}"
    )


@click.command("overview")
@click.option("--json", "as_json", is_flag=True, help="machine-readable output")
def overview_command(as_json: bool) -> None:
    """Per connection, over the last hour and the last day: received, rejected at ingest by
    reason, skipped by reason, delivered, failed, dead-lettered, waited for quota; sample event
    ids per reason (open one with `connector trace ID`)."""
    settings = settings_or_exit()
    try:
        data = overview.read(redis_client(), Keys(settings.key_prefix), [c.id for c in settings.connections])
    except redis.RedisError as exc:
        raise click.ClickException(f"Redis: {type(exc).__name__}: {exc}") from None
    if as_json:
        print_json(data)
        return
    for connection_id, info in data.items():
        click.echo(f"{connection_id}")
        click.echo(f"  last hour: {_line(info['last_hour'])}")
        click.echo(f"  last day:  {_line(info['last_day'])}")
        for name, ids in sorted(info["samples"].items()):
            click.echo(f"  samples {name}: {' '.join(ids)}")
