"""The ``connector`` command: operations on a running deployment.

::

    connector dlq list    [--connection C] [--direction D] [--reason R]
                          [--older-than 2h] [--newer-than 1d] [--limit N] [--json]
    connector dlq show    ID [--json]
    connector dlq replay  (ID... | filters | --all) [--remap] [--dry-run] [--json]
    connector dlq purge   (ID... | filters | --all) [--yes] [--dry-run] [--json]
    connector scheduler   [--interval S]         the Procfile's scheduler process
    connector check       [--json] [--offline] [--strict]   configuration, Redis, credentials
    connector send-test   [-c C] [--no-wait] [--timeout S]  one sample event through a connection
    connector stats       [--json]               queues, retry backlog, dead letters, rate limits
    connector map         [-c C] --event FILE [--send] [--json]   dry run of one event's mapping

``check``, ``send-test``, ``stats`` and ``map`` read the configuration as the processes do.
With none of REDIS_URL, CONNECTIONS_FILE, INGEST_WRITE_KEYS, VOUCHERIFY_APP_ID set, every
command uses the ``make run`` running from this checkout (``.run/cli.env``, see
:mod:`ops.runfile`) and says so on stderr.  For ``dlq``
only ``REDIS_URL`` (and ``CONNECTOR_KEY_PREFIX``) are needed: dead letters carry their queue, so
``dlq`` works even when the configuration does not load; when it does, replay uses each
connection's *current* queue (its region may have changed since).
"""

from __future__ import annotations

import os
import re
import sys
import time
from typing import Any

import click
import orjson
import redis

from connector import redisconn
from connector.config import DEFAULT_REDIS_URL, ConfigError, redact_url, redis_tls_verify

_DURATION_RE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([smhdw]?)\s*$", re.IGNORECASE)
_UNITS = {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}


def parse_duration(value: str | None) -> float | None:
    """``90``, ``90s``, ``15m``, ``2h``, ``3d``, ``1w`` -> seconds."""
    if value is None:
        return None
    match = _DURATION_RE.match(value)
    if not match:
        raise click.BadParameter(f"{value!r} is not a duration like 90s, 15m, 2h, 3d")
    return float(match.group(1)) * _UNITS[match.group(2).lower()]


def _redis() -> redis.Redis:
    url = os.environ.get("REDIS_URL") or DEFAULT_REDIS_URL
    return redisconn.client(url, _tls_verify(), socket_connect_timeout=3, socket_timeout=10)


def _tls_verify() -> str:
    try:
        return redis_tls_verify()
    except ConfigError as exc:
        raise click.ClickException(str(exc)) from None


def _dead_letters() -> Any:
    from connector.keys import Keys
    from workers.delivery.deadletters import DeadLetters

    return DeadLetters(_redis(), Keys.from_env())


def _print_json(data: Any) -> None:
    click.echo(orjson.dumps(data, option=orjson.OPT_INDENT_2, default=str).decode())


def _age(seconds_ago: float) -> str:
    s = max(0, int(seconds_ago))
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if s >= size:
            return f"{s // size}{unit}"
    return f"{s}s"


def _table(rows: list[dict[str, Any]], columns: list[tuple[str, str, int]]) -> None:
    widths = [
        min(limit, max([len(title)] + [len(str(r.get(key) or "")) for r in rows]))
        for key, title, limit in columns
    ]
    click.echo("  ".join(title.ljust(w) for (_, title, _), w in zip(columns, widths, strict=True)).rstrip())
    for row in rows:
        cells = []
        for (key, _, _), width in zip(columns, widths, strict=True):
            text = str(row.get(key) if row.get(key) is not None else "")
            cells.append((text[: width - 1] + "…" if len(text) > width else text).ljust(width))
        click.echo("  ".join(cells).rstrip())


@click.group()
def main() -> None:
    """Segment <-> Voucherify connector: operations.

    With no REDIS_URL and no connection configured in the shell, commands use the `make run`
    running from this checkout (it writes .run/cli.env) and say so on stderr.
    """
    from ops import runfile

    try:
        note = runfile.apply(os.environ)
    except runfile.RunFileError as exc:
        raise click.ClickException(str(exc)) from None
    if note:
        click.echo(f"connector: {note}", err=True)


# ---------------------------------------------------------------------------------------------
# dlq


@main.group()
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
    store: Any,
    ids: tuple[str, ...],
    connection: str | None,
    direction: str | None,
    reason: str | None,
    older_than: str | None,
    newer_than: str | None,
    limit: int | None = None,
) -> list[Any]:
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
            connection=connection,
            direction=direction,
            reason=reason,
            older_than=parse_duration(older_than),
            newer_than=parse_duration(newer_than),
            limit=limit,
        )
    )


@dlq.command("list")
@_filters
@click.option(
    "--limit", "-n", type=int, default=100, show_default=True, help="at most this many (newest first)"
)
@click.option("--json", "as_json", is_flag=True, help="machine-readable output")
def dlq_list(
    connection: str | None,
    direction: str | None,
    reason: str | None,
    older_than: str | None,
    newer_than: str | None,
    limit: int,
    as_json: bool,
) -> None:
    """List dead letters, newest first."""
    store = _dead_letters()
    records = _select(store, (), connection, direction, reason, older_than, newer_than, limit)
    if as_json:
        _print_json([r.summary() for r in records])
        return
    if not records:
        click.echo("no dead letters")
        return
    now = time.time()
    rows = [{**r.summary(), "age": _age(now - r.dead_lettered_at)} for r in records]
    _table(
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
        _print_json(data)
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
    from connector.contract import DESTINATION, SOURCE

    try:
        from connector.config import load_settings

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
    connection: str | None,
    direction: str | None,
    reason: str | None,
    older_than: str | None,
    newer_than: str | None,
    everything: bool,
    remap: bool,
    dry_run: bool,
    as_json: bool,
    progress: bool | None,
) -> None:
    """Put dead letters back on their queue, with the same idempotency keys."""
    from connector.publish import celery_publish

    _require_selection(ids, everything, connection, direction, reason, older_than, newer_than)
    store = _dead_letters()
    records = _select(store, ids, connection, direction, reason, older_than, newer_than)
    if dry_run:
        replayed = [r.id for r in records]
    else:
        queue_for = _current_queues()
        replayed = []
        show = _show_progress(progress) and len(records) > 1
        try:
            with click.progressbar(
                records, label="replaying", file=sys.stderr, hidden=not show, show_pos=True
            ) as bar:
                for record in bar:
                    replayed += store.replay([record], celery_publish, remap=remap, queue_for=queue_for)
        except Exception as exc:
            raise click.ClickException(
                f"replay stopped after {len(replayed)} of {len(records)}: {type(exc).__name__}: {exc}"
            ) from None
    if as_json:
        _print_json({"replayed": replayed, "dry_run": dry_run})
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
    ids: tuple[str, ...],
    connection: str | None,
    direction: str | None,
    reason: str | None,
    older_than: str | None,
    newer_than: str | None,
    everything: bool,
    yes: bool,
    dry_run: bool,
    as_json: bool,
) -> None:
    """Delete dead letters for good."""
    _require_selection(ids, everything, connection, direction, reason, older_than, newer_than)
    store = _dead_letters()
    records = _select(store, ids, connection, direction, reason, older_than, newer_than)
    if not dry_run and records and not yes:
        click.confirm(f"purge {len(records)} dead letter(s)?", abort=True)
    purged = len(records) if dry_run else store.purge(records)
    if as_json:
        _print_json(
            {
                "purged": [r.id for r in records] if not dry_run or records else [],
                "count": purged,
                "dry_run": dry_run,
            }
        )
    else:
        verb = "would purge" if dry_run else "purged"
        click.echo(f"{verb} {purged} dead letter(s)")


def _show_progress(flag: bool | None) -> bool:
    return sys.stderr.isatty() if flag is None else flag


# ---------------------------------------------------------------------------------------------
# scheduler


@main.command()
@click.option(
    "--interval", type=float, default=None, help="seconds between idle ticks (CONNECTOR_SCHEDULER_INTERVAL)"
)
def scheduler(interval: float | None) -> None:
    """Move due parked work back onto Celery queues and sweep Segment outboxes (runs forever)."""
    from connector import multiprocess

    # Before connector.metrics is imported (by the scheduler module): shared metrics directory.
    multiprocess.setup("scheduler")

    from connector.config import ConfigError, exit_on_config_error, load_settings
    from connector.keys import Keys
    from connector.logs import configure_logging
    from connector.publish import celery_publish
    from workers.delivery.scheduler import Scheduler, SchedulerConfig, connection_queues

    configure_logging("scheduler")
    # The scheduler publishes work to the connections' queues: with a configuration the web and
    # the workers would refuse, it must not start either (and never say "started").
    try:
        settings = load_settings()
    except ConfigError as exc:
        exit_on_config_error(exc, "scheduler")
    url = settings.redis_url
    config = SchedulerConfig.from_env()
    if interval is not None:
        config.interval = interval
    client = redisconn.client(
        url, _tls_verify(), socket_connect_timeout=2, socket_timeout=10, health_check_interval=10
    )
    click.echo(f"scheduler: redis {redact_url(url)}, prefix {Keys.from_env().prefix!r}", err=True)
    runner = Scheduler(
        client, Keys.from_env(), celery_publish, config, connections=connection_queues(settings)
    )
    runner.install_signal_handlers()
    runner.run()


# ---------------------------------------------------------------------------------------------
# check, send-test, stats (ops/check.py does the work)


@main.command()
@click.option("--json", "as_json", is_flag=True, help="machine-readable output")
@click.option(
    "--offline", is_flag=True, help="do not call Voucherify or Segment (configuration and Redis only)"
)
@click.option("--strict", is_flag=True, help="exit non-zero on warnings too")
@click.option("--timeout", type=float, default=10.0, show_default=True, help="seconds per HTTP call")
def check(as_json: bool, offline: bool, strict: bool, timeout: float) -> None:
    """Check the configuration, Redis (persistence, eviction) and every connection's credentials.

    \b
    Voucherify: GET /v1/customers?limit=1 (rest) or GET /segmentio/test-authentication
    (segmentio) with the connection's keys.  Segment: POST /v1/batch {"batch": []} with the
    write key; Segment's public API answers 200 even for an unknown write key, so against the
    real Segment this proves reachability, not the key (the fake Segment does check it).
    Exits 1 when anything is an error (2 with --strict and only warnings).
    """
    from ops import check as ops

    findings = ops.run_checks(offline=offline, timeout=timeout)
    if as_json:
        _print_json([f.as_dict() for f in findings])
    else:
        marks = {"ok": "ok  ", "warning": "WARN", "error": "FAIL"}
        for finding in findings:
            colour = {"ok": "green", "warning": "yellow", "error": "red"}[finding.level]
            mark = (
                click.style(marks[finding.level], fg=colour) if sys.stdout.isatty() else marks[finding.level]
            )
            click.echo(f"{mark}  {finding.subject}: {finding.message}")
        errors = sum(f.level == "error" for f in findings)
        warnings = sum(f.level == "warning" for f in findings)
        click.echo(f"\n{errors} error(s), {warnings} warning(s)")
    if any(f.level == "error" for f in findings):
        sys.exit(1)
    if strict and any(f.level == "warning" for f in findings):
        sys.exit(2)


@main.command("send-test")
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
    from ops import check as ops

    settings = ops.settings_or_exit()
    connection = ops.pick_connection(settings, connection_id)
    sent = ops.enqueue_sample(settings, connection, user_id=user_id, event_name=event_name)
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
    result = ops.wait_for_delivery(settings, connection, sent, timeout=timeout)
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


@main.command()
@click.option("--json", "as_json", is_flag=True, help="machine-readable output")
def stats(as_json: bool) -> None:
    """Queue depths, retry backlog, dead letters and rate-limit state per connection."""
    from connector import depths
    from ops import check as ops

    settings = ops.settings_or_exit()
    try:
        snap = depths.snapshot(_redis(), settings, rate_limits=True)
    except redis.RedisError as exc:
        raise click.ClickException(f"Redis: {type(exc).__name__}: {exc}") from None
    if as_json:
        _print_json(snap.as_dict())
        return
    click.echo("QUEUES")
    _table(
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
        rows.append(
            {
                "id": state.id,
                "backlog": f"{state.backlog}/{state.backlog_limit}",
                "dead": state.dead_letters,
                "limits": "; ".join(limits),
            }
        )
    _table(
        rows,
        [
            ("id", "CONNECTION", 30),
            ("backlog", "BACKLOG", 16),
            ("dead", "DEAD LETTERS", 12),
            ("limits", "RATE LIMITS", 90),
        ],
    )
    for connection_id, count in snap.dead_letters_unconfigured.items():
        click.echo(f"(dead letters of a connection no longer configured: {connection_id}: {count})")


# ---------------------------------------------------------------------------------------------
# map (ops/mapcmd.py does the work)


@main.command("map")
@click.option("--connection", "-c", "connection_id", help="connection id (default: the only one)")
@click.option(
    "--event",
    "event_file",
    required=True,
    type=click.File("rb"),
    help="a Segment event (or batch) or a Voucherify webhook body, as JSON; - reads stdin",
)
@click.option("--send", is_flag=True, help="perform the requests and show the answers")
@click.option("--json", "as_json", is_flag=True, help="machine-readable output")
def map_command(connection_id: str | None, event_file: Any, send: bool, as_json: bool) -> None:
    """What an event would do on a connection: subscriptions and the exact requests.

    \b
    Auto-detects a Segment event (one call, {"batch": [...]} or an array) or a Voucherify
    webhook body (any envelope version).  Shows the ingest's verdict, every subscription
    (matched, not matched and why, replaced, failed), and each request in the connection's
    mode with credentials redacted.  Nothing is sent unless --send: then each request goes
    through the workers' transport, within the connection's rate-limit budget (no queue,
    no retries, no idempotency ledger), and the answer is shown.
    """
    from ops import check as ops
    from ops import mapcmd

    settings = ops.settings_or_exit()
    connection = ops.pick_connection(settings, connection_id)
    try:
        report = mapcmd.dry_run(connection, mapcmd.load(event_file.read()))
    except mapcmd.MapInputError as exc:
        raise click.ClickException(f"{event_file.name}: {exc}") from None
    if send:
        mapcmd.send(report, settings, connection)
    if as_json:
        _print_json(report.as_dict())
    else:
        for line in mapcmd.render(report):
            click.echo(line)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
