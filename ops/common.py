"""What the operator commands share: the settings, a Redis client, a connection picked, output."""

from __future__ import annotations

import re
import sys
from typing import Any

import click
import orjson
import redis

from connector import redisconn, redisenv
from connector.config import ConfigError, Connection, Settings
from workers.settings import load_settings

_UNITS = {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}


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


def redis_client() -> redis.Redis:
    """``REDIS_URL`` (or ``REDIS_SENTINELS``) with ``REDIS_TLS_VERIFY``: the commands that need
    Redis without the connections."""
    try:
        target = redisenv.redis_target()
    except ConfigError as exc:
        raise click.ClickException(str(exc)) from None
    return redisconn.client(target, tls_verify(), socket_connect_timeout=3, socket_timeout=10)


def tls_verify() -> str:
    try:
        return redisenv.redis_tls_verify()
    except ConfigError as exc:
        raise click.ClickException(str(exc)) from None


def print_json(data: Any) -> None:
    click.echo(orjson.dumps(data, option=orjson.OPT_INDENT_2, default=str).decode())


def age(seconds_ago: float) -> str:
    s = max(0, int(seconds_ago))
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if s >= size:
            return f"{s // size}{unit}"
    return f"{s}s"


def table(rows: list[dict[str, Any]], columns: list[tuple[str, str, int]]) -> None:
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


def settings_or_exit() -> Settings:
    try:
        return load_settings()
    except ConfigError as exc:
        raise click.ClickException(str(exc)) from None


def pick_connection(settings: Settings, connection_id: str | None) -> Connection:
    if connection_id:
        connection = settings.connection(connection_id)
        if connection is None:
            known = ", ".join(c.id for c in settings.connections)
            raise click.ClickException(f"no connection {connection_id!r} (configured: {known})")
        return connection
    if len(settings.connections) != 1:
        raise click.ClickException("several connections are configured: choose one with --connection")
    return settings.connections[0]


def show_progress(flag: bool | None) -> bool:
    return sys.stderr.isatty() if flag is None else flag
