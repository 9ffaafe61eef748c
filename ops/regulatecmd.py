"""``connector regulate`` and ``connector regulations`` (SPEC 14): what ``POST /v1/regulations``
and ``GET /v1/regulations/{id}`` do, from an operator's shell (Redis and the broker directly: no
ADMIN_TOKEN needed where REDIS_URL is already the key to everything)."""

from __future__ import annotations

import time
from typing import Any

import click

from connector import regulations
from connector.celery_app import create_celery
from connector.contract import TASK_REGULATE
from connector.keys import Keys
from ops.common import print_json, redis_client, settings_or_exit, table


@click.command("regulate")
@click.argument("regulation_type", metavar="TYPE", type=click.Choice(regulations.TYPES))
@click.argument("user_ids", metavar="USER_ID...", nargs=-1, required=True)
@click.option(
    "--connection", "connection_ids", multiple=True, help="Only this connection (repeatable; default: all)."
)
@click.option("--wait", is_flag=True, help="Wait until the regulation has FINISHED or FAILED.")
@click.option("--timeout", default=300.0, show_default=True, help="Seconds --wait waits at most.")
def regulate(
    regulation_type: str,
    user_ids: tuple[str, ...],
    connection_ids: tuple[str, ...],
    wait: bool,
    timeout: float,
) -> None:
    """Suppress, delete or unsuppress users (Segment's regulation types)."""
    settings = settings_or_exit()
    if len(user_ids) > regulations.MAX_SUBJECTS:
        raise click.BadParameter(f"at most {regulations.MAX_SUBJECTS} user ids", param_hint="USER_ID")
    unknown = [c for c in connection_ids if settings.connection(c) is None]
    if unknown:
        raise click.BadParameter(f"unknown connection {unknown[0]!r}", param_hint="--connection")
    chosen = [c for c in settings.connections if not connection_ids or c.id in connection_ids]
    client, keys = redis_client(), Keys(settings.key_prefix)
    subjects = list(dict.fromkeys(user_ids))
    regulation_id = regulations.create(client, keys, regulation_type, subjects, [c.id for c in chosen])
    if regulation_type in regulations.DELETING:
        celery = create_celery(
            settings.redis_url, settings.redis_tls_verify, settings.broker, settings.key_prefix
        )
        for connection in chosen:
            queue = connection.voucherify.queue
            celery.send_task(
                TASK_REGULATE, args=[regulation_id, connection.id], queue=queue, routing_key=queue
            )
    click.echo(regulation_id)
    if not wait:
        return
    deadline = time.monotonic() + timeout
    while True:
        found = regulations.read(client, keys, regulation_id)
        if found is None or found["overallStatus"] != regulations.RUNNING:
            break
        if time.monotonic() > deadline:
            raise click.ClickException(f"{regulation_id} still RUNNING after {timeout:.0f}s")
        time.sleep(0.5)
    _show(found)
    if found and found["overallStatus"] == regulations.FAILED:
        raise SystemExit(1)


def _show(found: dict[str, Any] | None) -> None:
    if found is None:
        raise click.ClickException("no such regulation")
    click.echo(
        f"{found['id']}  {found['regulationType']}  {found['overallStatus']}  created {found['createdAt']}"
    )
    for cid, part in found["connections"].items():
        click.echo(f"  {cid}: {part['status']}  {part['detail']}")


@click.command("regulations")
@click.argument("regulation_id", required=False)
@click.option("--suppressed", is_flag=True, help="List the suppressed user ids per connection.")
@click.option("--json", "as_json", is_flag=True, help="JSON output.")
def regulations_command(regulation_id: str | None, suppressed: bool, as_json: bool) -> None:
    """Recent regulations, one of them, or who is suppressed."""
    settings = settings_or_exit()
    client, keys = redis_client(), Keys(settings.key_prefix)
    if suppressed:
        listing = regulations.suppressed_list(client, keys, [c.id for c in settings.connections])
        if as_json:
            print_json(listing)
        else:
            for cid, users in listing.items():
                click.echo(f"{cid}: {len(users)} suppressed" + (": " + ", ".join(users) if users else ""))
        return
    if regulation_id:
        found = regulations.read(client, keys, regulation_id)
        if as_json:
            if found is None:
                raise click.ClickException("no such regulation")
            print_json(found)
        else:
            _show(found)
        return
    rows = regulations.recent(client, keys)
    if as_json:
        print_json(rows)
        return
    table(
        [{**r, "subjects": len(r["subjectIds"])} for r in rows],
        [
            ("id", "ID", 30),
            ("regulationType", "TYPE", 22),
            ("overallStatus", "STATUS", 9),
            ("subjects", "SUBJECTS", 9),
            ("createdAt", "CREATED", 25),
            ("finishedAt", "FINISHED", 25),
        ],
    )
