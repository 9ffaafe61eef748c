"""``connector stats``: queue depths, parked work, dead letters, backlogs and the state of every
budget (used in its window, paused, slowed) per connection."""

from __future__ import annotations

import time

import click
import redis

from connector import depths, forecast
from connector.keys import Keys
from ops.common import print_json, redis_client, settings_or_exit, table
from workers import targets


@click.command()
@click.option("--json", "as_json", is_flag=True, help="machine-readable output")
def stats(as_json: bool) -> None:
    """Queue depths, retry backlog, dead letters and rate-limit state per connection."""
    settings = settings_or_exit()
    try:
        snap = depths.snapshot(
            redis_client(), settings, Keys(settings.key_prefix), budgets=targets.budgets_of
        )
    except redis.RedisError as exc:
        raise click.ClickException(f"Redis: {type(exc).__name__}: {exc}") from None
    try:
        found = {fc.connection: fc for fc in forecast.forecasts(redis_client(), settings)}
    except redis.RedisError as exc:
        raise click.ClickException(f"Redis: {type(exc).__name__}: {exc}") from None
    if as_json:
        data = snap.as_dict()
        for conn in data["connections"]:
            fc = found.get(conn["id"])
            conn["forecast"] = {**fc.as_dict(), "sentences": fc.sentences()} if fc else None
        print_json(data)
        return
    click.echo("QUEUES")
    table(
        [{"queue": q, "waiting": n} for q, n in snap.queues.items()],
        [("queue", "QUEUE", 50), ("waiting", "WAITING", 10)],
    )
    click.echo(
        f"\nunacknowledged (taken by a worker): {snap.unacked}   parked (retries, throttled): {snap.delayed}"
        f" ({snap.delayed_due} due now)   dead letters: {snap.dead_letters}\n"
    )
    click.echo("CONNECTIONS")
    rows = []
    for state in snap.connections:
        limits = []
        for rl in state.rate_limits:
            text = f"{rl.target} {rl.used}/{rl.limit if rl.limit is not None else '-'} per {rl.window_seconds:g}s"
            if rl.paused_for_seconds > 0:
                text += f" PAUSED {rl.paused_for_seconds:.0f}s"
            if rl.slow_factor < 1:
                text += f" slowed x{rl.slow_factor:g}"
            limits.append(text)
        for system, pause in reversed(list((state.pauses or {"voucherify": state.paused}).items())):
            if pause:  # per target system (SPEC 13): the other one still delivers
                limits.insert(
                    0,
                    f"{system} PAUSED ({pause['reason']}) since {_when(pause['since'])}: "
                    f"connector resume {state.id} --system {system} once fixed",
                )
        rows.append(
            {
                "id": state.id,
                "backlog": f"{state.backlog}/{state.backlog_limit}",
                "dead": state.dead_letters,
                "limits": "; ".join(limits),
            }
        )
    table(
        rows,
        [
            ("id", "CONNECTION", 30),
            ("backlog", "BACKLOG", 16),
            ("dead", "DEAD LETTERS", 12),
            ("limits", "RATE LIMITS", 90),
        ],
    )
    click.echo("\nQUOTA (Voucherify): used / the connector's part, the shop's reserve; forecast")
    for fc in found.values():
        click.echo(f"  {fc.connection}")
        for b in fc.budgets:
            limit = b.limit if b.limit is not None else "-"
            reserve = f", reserve {b.reserve}" if b.reserve is not None else ""
            paused = f", waiting {b.paused_for_seconds:.0f}s" if b.paused_for_seconds > 0 else ""
            click.echo(f"    {b.name:<18} {b.used}/{limit} per {b.window_seconds:g}s{reserve}{paused}")
        for kind, live in fc.live.items():
            click.echo(
                f"    Voucherify says ({kind}): {live['remaining']:.0f} of {live['limit']:.0f} left"
                f" ({live['age_seconds']:.0f}s ago)"
            )
        click.echo(
            f"    backlog {fc.backlog}, {fc.arrivals_last_hour:.0f} arrived and {fc.events_last_hour:.0f} finished last hour"
        )
        for sentence in fc.sentences():
            click.echo(f"    {sentence}")
    for connection_id, count in snap.dead_letters_unconfigured.items():
        click.echo(f"(dead letters of a connection no longer configured: {connection_id}: {count})")


def _when(epoch: float) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(epoch))
