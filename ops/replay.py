"""``connector replay``: a shop's history into Voucherify -- Segment archives and customer CSVs
(SPEC 15; the engine is :mod:`ops.replay_run`, the readers :mod:`ops.replay_read`).

Exit codes: 0 done; 1 a file was refused as a whole (a CSV without ``userId``); 2 a file or the
connection does not exist, or an option is wrong (nothing was sent); 130 interrupted (Ctrl-C:
``--resume`` continues).
"""

from __future__ import annotations

import sys
import time
from datetime import datetime
from pathlib import Path
from typing import Any

import click

from app.enqueue import Enqueuer
from app.schemas import parse_utc
from connector import redisconn
from connector.celery_app import create_celery
from connector.config import ConfigError, Connection, Settings
from connector.keys import Keys
from connector.memory import MemoryGuard
from ops import replay_forecast as fc
from ops.common import print_json, show_progress
from ops.replay_read import FileRejected
from ops.replay_run import Options, Replay, Tally, counter_text
from ops.replay_source import Source
from workers.settings import load_settings

PLAIN_EVERY_SECONDS = 5.0


def _fail(message: str) -> None:
    click.echo(f"Error: {message}", err=True)
    raise click.exceptions.Exit(2)


def _when(value: str | None, name: str) -> datetime | None:
    if value is None:
        return None
    at = parse_utc(value)
    if at is None:
        _fail(f"{name} {value!r} is not an ISO 8601 date-time (e.g. 2026-01-31 or 2026-01-31T12:00:00Z)")
    return at


def _connection(settings: Settings, connection_id: str | None) -> Connection:
    if connection_id:
        found = settings.connection(connection_id)
        if found is None:
            known = ", ".join(c.id for c in settings.connections) or "none"
            _fail(f"no connection {connection_id!r} (configured: {known})")
        assert found is not None
        return found
    if len(settings.connections) != 1:
        _fail("several connections are configured: choose one with --connection")
    return settings.connections[0]


class Progress:
    """A tqdm bar on a terminal (bytes of the file, with the counts); plain lines otherwise."""

    def __init__(self, bar: bool, replay: Replay | None = None) -> None:
        self.bar_wanted = bar
        self.replay = replay
        self.bar: Any = None
        self.file: str | None = None
        self.last_line = 0.0
        self.started = time.monotonic()

    def __call__(self, name: str, tally: Tally, position: int, size: int | None, note: str) -> None:
        text = (
            f"read {tally.lines:,} accepted {tally.accepted:,} rejected {tally.rejected_total:,} "
            f"skipped {sum(tally.skipped.values()):,}"
        )
        if self.replay is not None:
            # Accepted and not finished yet, live work included: what delivery still has to do.
            text += f" queued {self.replay.backlog_seen:,}"
        if self.bar_wanted:
            if self.bar is None or self.file != name:
                self.close()
                from tqdm import tqdm

                self.bar = tqdm(
                    total=size, unit="B", unit_scale=True, desc=Path(name).name, file=sys.stderr, leave=True
                )
                self.file = name
            self.bar.n = position
            self.bar.set_postfix_str(text + self._eta(tally, position, size), refresh=True)
            return
        now = time.monotonic()
        if note or now - self.last_line >= PLAIN_EVERY_SECONDS:
            self.last_line = now
            rate = tally.lines / max(1e-6, now - self.started)
            where = f" {position * 100 // size}%" if size else ""
            click.echo(
                f"replay {name}{where}: {text}, {rate:,.0f} lines/s{self._eta(tally, position, size)}",
                err=True,
            )

    def _eta(self, tally: Tally, position: int, size: int | None) -> str:
        """What the quota allows for the whole file, projected from the part read."""
        if self.replay is None or not size or not position:
            return ""
        scale = size / position
        connection = self.replay.c
        calls = fc.calls_for(
            int(self.replay.distinct_customers() * scale),
            int(tally.custom_events * scale),
            connection.voucherify.quota,
            connection.voucherify.mode,
            int(upserts_of([tally]) * scale),
        )
        seconds = fc.seconds_for(calls, connection.voucherify.quota)
        return "" if seconds is None else f", quota time for the file ~{fc.human(seconds)}"

    def say(self, text: str) -> None:
        if self.bar is not None:
            self.bar.write(text, file=sys.stderr)
        else:
            click.echo(text, err=True)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None


def _summary(name: str, tally: Tally, dry_run: bool) -> list[str]:
    verb = "would enqueue" if dry_run else "accepted"
    return [
        f"{name}: {tally.lines:,} lines; {verb} {tally.accepted:,} ({counter_text(tally.kinds)})"
        + (f", {tally.forced:,} forced again" if tally.forced else ""),
        f"  skipped: {counter_text(tally.skipped)}",
        f"  rejected {tally.rejected_total:,}: {counter_text(tally.rejected)}",
    ]


@click.command("replay")
@click.argument("files", nargs=-1, required=True)
@click.option("--connection", "-c", "connection_id", help="connection id (needed when several)")
@click.option("--from", "start", help="only events at or after this time (ISO 8601, the event's timestamp)")
@click.option("--to", "end", help="only events before this time")
@click.option("--dry-run", is_flag=True, help="send nothing: counts and the quota forecast")
@click.option("--resume", is_flag=True, help="continue from the checkpoint of an interrupted run")
@click.option("--force", is_flag=True, help="send again events the ledger says were delivered")
@click.option(
    "--format",
    "fmt",
    type=click.Choice(["auto", "jsonl", "csv"]),
    default="auto",
    show_default=True,
    help="auto: CSV for *.csv and *.csv.gz, else newline-delimited JSON (gzip or plain)",
)
@click.option(
    "--report", type=click.Path(dir_okay=False), help="rejected lines (JSONL) [replay-rejected-ID.jsonl]"
)
@click.option(
    "--pace",
    type=click.FloatRange(0.05, 0.9),
    default=0.5,
    show_default=True,
    help="wait while the backlog is above this share of its bound",
)
@click.option("--json", "as_json", is_flag=True, help="machine-readable summary")
@click.option("--progress/--no-progress", default=None, help="progress bar (default: on a terminal)")
def replay(
    files: tuple[str, ...],
    connection_id: str | None,
    start: str | None,
    end: str | None,
    dry_run: bool,
    resume: bool,
    force: bool,
    fmt: str,
    report: str | None,
    pace: float,
    as_json: bool,
    progress: bool | None,
) -> None:
    """Replay Segment archives (JSONL, gzip or plain, '-' for stdin) or backfill customer CSVs
    into a connection, through the same rules and lanes as live events."""
    window = (_when(start, "--from"), _when(end, "--to"))
    if files.count("-") > 1:
        _fail("stdin ('-') can be read once")
    sources: list[Source] = []
    for name in files:
        try:
            sources.append(Source(name, sys.stdin.buffer if name == "-" else None))
        except (FileNotFoundError, PermissionError, IsADirectoryError):
            _fail(f"no such file: {name}")
    try:
        settings = load_settings()
    except ConfigError as exc:
        _fail(str(exc))
    connection = _connection(settings, connection_id)
    report_path = None if dry_run else Path(report or f"replay-rejected-{connection.id}.jsonl")
    if report_path is not None and not resume:
        report_path.write_bytes(b"")
    options = Options(
        connection,
        window[0],
        window[1],
        dry_run=dry_run,
        resume=resume,
        force=force,
        csv=None if fmt == "auto" else fmt == "csv",
        pace=pace,
        report=report_path,
    )
    client = redisconn.client(
        settings.redis, settings.redis_tls_verify, socket_connect_timeout=3, socket_timeout=10
    )
    keys = Keys(settings.key_prefix)
    celery = create_celery(settings.redis, settings.redis_tls_verify, settings.broker, settings.key_prefix)
    enqueuer = Enqueuer(celery, client, keys, MemoryGuard(client, settings.memory_high_water))
    engine = Replay(options, client, keys, enqueuer)
    bar = Progress(show_progress(progress), engine)
    engine.progress = bar
    engine.say = bar.say
    results: list[tuple[str, Tally]] = []
    refused = False
    current = ""
    try:
        for source in sources:
            current = source.name
            earlier = engine.load(source) if not dry_run else None
            if resume and earlier is None:
                click.echo(f"{source.name}: no checkpoint of an earlier run: from the beginning", err=True)
            elif not resume and earlier is not None and not earlier["tally"].get("done"):
                click.echo(
                    f"{source.name}: an earlier run stopped at line {earlier['position'][0]:,}; "
                    "starting over (--resume continues it)",
                    err=True,
                )
            try:
                results.append((source.name, engine.run(source)))
            except FileRejected as exc:
                click.echo(f"Error: {source.name}: {exc.message}", err=True)
                refused = True
    except KeyboardInterrupt:
        bar.close()
        click.echo(f"\ninterrupted in {current}: run again with --resume to continue", err=True)
        raise click.exceptions.Exit(130) from None
    finally:
        bar.close()
    _report(results, engine, options, as_json)
    if refused:
        raise click.exceptions.Exit(1)


def upserts_of(tallies: list[Tally]) -> int:
    """The upsert events (identify, group) accepted: what a replay's bulks carry."""
    return sum(t.kinds.get("identify", 0) + t.kinds.get("group", 0) for t in tallies)


def _report(results: list[tuple[str, Tally]], engine: Replay, options: Options, as_json: bool) -> None:
    customers = engine.distinct_customers()
    custom = sum(t.custom_events for _, t in results)
    upserts = upserts_of([t for _, t in results])
    quota = options.connection.voucherify.quota
    calls = fc.calls_for(customers, custom, quota, options.connection.voucherify.mode, upserts)
    if as_json:
        print_json(
            {
                "connection": options.connection.id,
                "dry_run": options.dry_run,
                "files": [{"file": name, **tally.as_dict()} for name, tally in results],
                "report": str(options.report) if options.report else None,
                "forecast": {
                    "customers": customers,
                    "custom_events": custom,
                    "calls": calls.total,
                    "bulk_calls": calls.bulk,
                    "seconds": fc.seconds_for(calls, quota),
                },
            }
        )
        return
    for name, tally in results:
        for line in _summary(name, tally, options.dry_run):
            click.echo(line)
    if options.report is not None and any(t.rejected for _, t in results):
        click.echo(f"rejected lines (with their line numbers): {options.report}")
    if options.dry_run:
        for line in fc.describe(customers, custom, options.connection, upserts):
            click.echo(line)
