"""``connector dlq``: dead letters listed, shown, replayed (same idempotency keys), purged.

Only ``REDIS_URL`` (and ``CONNECTOR_KEY_PREFIX``) are needed: dead letters carry their queue,
so ``dlq`` works even when the configuration does not load; when it does, replay uses each
connection's *current* queue (its region may have changed since).
"""

from __future__ import annotations

import sys
import time
from collections.abc import Mapping
from typing import Any

import click
import orjson

from connector import config
from connector import publish as publishing
from connector.contract import DESTINATION, SOURCE
from connector.keys import Keys
from ops.common import age, parse_duration, print_json, redis_client, show_progress, table
from workers.delivery.deadletters import DeadLetters
from workers.settings import load_settings


def _dead_letters() -> DeadLetters:
    return DeadLetters(redis_client(), Keys(config.key_prefix()))


@click.group()
def dlq() -> None:
    """Dead letters: list, show, replay, purge."""


def _filters(f: Any) -> Any:
    f = click.option("--connection", "-c", help="only this connection id")(f)
    f = click.option("--direction", "-d", help="segment_to_voucherify | voucherify_to_segment")(f)
    f = click.option("--reason", "-r", help="mapping_error | rejected | retry_window_exceeded | ...")(f)
    f = click.option("--older-than", help="dead-lettered at least this long ago (90s, 15m, 2h, 3d)")(f)
    f = click.option("--newer-than", help="dead-lettered at most this long ago")(f)
    return f


def _select(
    store: Any, ids: tuple[str, ...], filters: Mapping[str, str | None], limit: int | None = None
) -> list[Any]:
    """The dead letters named by ``ids``, else those the filters (``_filters``' options) match."""
    if ids:
        records = []
        for entry_id in ids:
            record = store.get(entry_id)
            if record is None:
                raise click.ClickException(f"no dead letter {entry_id!r}")
            records.append(record)
        return records
    return list(
        store.iter(
            connection=filters.get("connection"),
            direction=filters.get("direction"),
            reason=filters.get("reason"),
            older_than=parse_duration(filters.get("older_than")),
            newer_than=parse_duration(filters.get("newer_than")),
            limit=limit,
        )
    )


@dlq.command("list")
@_filters
@click.option(
    "--limit", "-n", type=int, default=100, show_default=True, help="at most this many (newest first)"
)
@click.option("--json", "as_json", is_flag=True, help="machine-readable output")
def dlq_list(limit: int, as_json: bool, **filters: str | None) -> None:
    """List dead letters, newest first."""
    store = _dead_letters()
    records = _select(store, (), filters, limit)
    if as_json:
        print_json([r.summary() for r in records])
        return
    if not records:
        click.echo("no dead letters")
        return
    now = time.time()
    rows = [{**r.summary(), "age": age(now - r.dead_lettered_at)} for r in records]
    table(
        rows,
        [
            ("id", "ID", 30),
            ("age", "AGE", 6),
            ("connection", "CONNECTION", 20),
            ("direction", "DIRECTION", 22),
            ("reason", "REASON", 22),
            ("status", "STATUS", 6),
            ("action", "ACTION", 18),
            ("message_id", "MESSAGE ID", 40),
            ("error", "ERROR", 60),
        ],
    )
    total = store.count()
    if total > len(records):
        click.echo(f"({len(records)} shown of {total} dead letters; use filters or --limit)")


@dlq.command("show")
@click.argument("entry_id")
@click.option("--json", "as_json", is_flag=True, help="machine-readable output")
def dlq_show(entry_id: str, as_json: bool) -> None:
    """Everything kept about one dead letter."""
    record = _dead_letters().get(entry_id)
    if record is None:
        raise click.ClickException(f"no dead letter {entry_id!r}")
    data = record.to_dict()
    if as_json:
        print_json(data)
        return
    for key in (
        "id",
        "connection_id",
        "direction",
        "reason",
        "status",
        "error",
        "attempts",
        "queue",
        "idempotency_key",
    ):
        click.echo(f"{key:>16}: {data.get(key)}")
    for key in ("received_at", "first_attempt_at", "dead_lettered_at"):
        value = data.get(key)
        stamp = time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(value)) if value else "-"
        click.echo(f"{key:>16}: {stamp}")
    click.echo("         history:")
    for entry in data.get("history") or []:
        click.echo(f"                  {orjson.dumps(entry).decode()}")
    if data.get("response_excerpt"):
        click.echo(f"        response: {data['response_excerpt']}")
    click.echo("         request:")
    click.echo(orjson.dumps(data.get("request"), option=orjson.OPT_INDENT_2).decode())
    click.echo("         payload:")
    click.echo(orjson.dumps(data.get("payload"), option=orjson.OPT_INDENT_2, default=str).decode())


def _current_queues() -> dict[str, dict[str, str]] | None:
    """Connection id -> direction -> queue from today's configuration, if it loads."""
    try:
        settings = load_settings(require_connections=False)
    except Exception:
        return None
    return {
        c.id: {DESTINATION: c.voucherify.queue, **({SOURCE: c.segment.queue} if c.segment else {})}
        for c in settings.connections
    }


def _require_selection(ids: tuple[str, ...], everything: bool, *filters: str | None) -> None:
    if not ids and not everything and not any(filters):
        raise click.UsageError("name dead letters by ID, narrow them with filters, or pass --all")


@dlq.command("replay")
@click.argument("ids", nargs=-1)
@_filters
@click.option("--all", "everything", is_flag=True, help="every dead letter (or every one the filters match)")
@click.option(
    "--remap", is_flag=True, help="map the original payload again instead of resending the stored request"
)
@click.option("--dry-run", is_flag=True, help="only say what would be replayed")
@click.option("--json", "as_json", is_flag=True, help="machine-readable output")
@click.option(
    "--progress/--no-progress",
    default=None,
    help="progress bar on stderr (default: when stderr is a terminal)",
)
def dlq_replay(
    ids: tuple[str, ...],
    everything: bool,
    remap: bool,
    dry_run: bool,
    as_json: bool,
    progress: bool | None,
    **filters: str | None,
) -> None:
    """Put dead letters back on their queue, with the same idempotency keys."""
    _require_selection(ids, everything, *filters.values())
    store = _dead_letters()
    records = _select(store, ids, filters)
    if dry_run:
        replayed = [r.id for r in records]
    else:
        queue_for = _current_queues()
        replayed = []
        show = show_progress(progress) and len(records) > 1
        try:
            with click.progressbar(
                records, label="replaying", file=sys.stderr, hidden=not show, show_pos=True
            ) as bar:
                for record in bar:
                    replayed += store.replay(
                        [record], publishing.celery_publish, remap=remap, queue_for=queue_for
                    )
        except Exception as exc:
            raise click.ClickException(
                f"replay stopped after {len(replayed)} of {len(records)}: {type(exc).__name__}: {exc}"
            ) from None
    if as_json:
        print_json({"replayed": replayed, "dry_run": dry_run})
    else:
        verb = "would replay" if dry_run else "replayed"
        click.echo(f"{verb} {len(replayed)} dead letter(s)")


@dlq.command("purge")
@click.argument("ids", nargs=-1)
@_filters
@click.option("--all", "everything", is_flag=True, help="every dead letter (or every one the filters match)")
@click.option("--yes", "-y", is_flag=True, help="do not ask for confirmation")
@click.option("--dry-run", is_flag=True, help="only say what would be purged")
@click.option("--json", "as_json", is_flag=True, help="machine-readable output")
def dlq_purge(
    ids: tuple[str, ...], everything: bool, yes: bool, dry_run: bool, as_json: bool, **filters: str | None
) -> None:
    """Delete dead letters for good."""
    _require_selection(ids, everything, *filters.values())
    store = _dead_letters()
    records = _select(store, ids, filters)
    if not dry_run and records and not yes:
        click.confirm(f"purge {len(records)} dead letter(s)?", abort=True)
    purged = len(records) if dry_run else store.purge(records)
    if as_json:
        print_json(
            {
                "purged": [r.id for r in records] if not dry_run or records else [],
                "count": purged,
                "dry_run": dry_run,
            }
        )
    else:
        verb = "would purge" if dry_run else "purged"
        click.echo(f"{verb} {purged} dead letter(s)")
