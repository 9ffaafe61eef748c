"""Reading event traces (``connector trace ID``, the status page): what :mod:`connector.trace`
wrote, found by id across connections, summarised and rendered for a person."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import orjson
import redis

from connector import overview, tracestore
from connector.keys import Keys
from connector.trace import clean_id


def read(client: redis.Redis, keys: Keys, connection: str, event_id: str) -> list[dict[str, Any]]:
    """The records of ``event_id`` on ``connection``, oldest first (empty: unknown, expired, or
    sampled out)."""
    return find(client, keys, event_id, connection).get(connection, [])


def find(
    client: redis.Redis, keys: Keys, event_id: str, connection: str | None = None
) -> dict[str, list[dict[str, Any]]]:
    """Every connection's trace of ``event_id`` (only ``connection``'s when given), each oldest
    first; connections without records are left out."""
    found = tracestore.find(client, keys, clean_id(event_id) or "", connection)
    for records in found.values():
        records.sort(key=lambda r: float(r.get("t") or 0))
    return dict(sorted(found.items()))


def summary(event_id: str, records: list[dict[str, Any]]) -> dict[str, Any]:
    """The trace as ``connector trace --json`` prints it."""
    received = next((r for r in records if r.get("kind") == "received"), {})
    outcomes = [r for r in records if r.get("kind") == "outcome" and r.get("outcome") != overview.FAILED]
    final = outcomes[-1] if outcomes else None
    outcome = "rejected" if received.get("rejected") else (final or {}).get("outcome") or "in progress"
    return {
        "id": event_id,
        "found": bool(records),
        "connection": received.get("connection"),
        "direction": received.get("direction"),
        "outcome": outcome if records else None,
        "reason": received.get("rejected") or (final or {}).get("reason"),
        "records": records,
    }


def when(t: Any) -> str:
    try:
        return datetime.fromtimestamp(float(t), UTC).isoformat(timespec="milliseconds")[:-6] + "Z"
    except (TypeError, ValueError, OverflowError, OSError):
        return "?"


def describe(record: dict[str, Any]) -> str:
    """One record as a line of text (the CLI's and the status page's)."""
    kind = record.get("kind")
    if kind == "received":
        text = (
            f"via {record.get('door')} on connection {record.get('connection')} ({record.get('direction')})"
        )
        if record.get("at"):
            text += f", accepted at {when(record['at'])}"
        if record.get("rejected"):
            text += f"; REJECTED at ingest: {record['rejected']}"
        return text
    if kind == "mapping":
        parts = []
        for key, label in (("matched", "matched"), ("not_matched", "not matched"), ("failed", "failed")):
            value = record.get(key)
            if value:
                shown = (
                    ", ".join(f"{k} ({v})" for k, v in value.items())
                    if isinstance(value, dict)
                    else ", ".join(map(str, value))
                )
                parts.append(f"{label}: {shown}")
        if record.get("requests"):
            parts.append("requests: " + ", ".join(map(str, record["requests"])))
        if record.get("skip"):
            why = f" ({record['why']})" if record.get("why") else ""
            parts.append(f"skipped: {record['skip']}{why}")
        return "; ".join(parts) or "-"
    if kind == "attempt":
        status = record.get("status") if record.get("status") is not None else "no answer"
        text = f"{record.get('method')} {record.get('path')} -> {status} in {record.get('latency_ms')} ms"
        if record.get("error"):
            text += f"; error: {record['error']}"
        if record.get("answer"):
            text += f"; answer: {record['answer']}"
        return text
    if kind == "wait":
        return f"{record.get('reason')} until {when(record.get('until'))}"
    if kind == "outcome":
        text = str(record.get("outcome"))
        for key in ("reason", "status", "error"):
            if record.get(key) is not None:
                text += f"; {key}: {record[key]}"
        return text
    return orjson.dumps(record).decode()


def render(event_id: str, records: list[dict[str, Any]]) -> str:
    if not records:
        return f"no trace for {event_id!r} (unknown id, older than the retention, or a delivered event sampled out)\n"
    info = summary(event_id, records)
    lines = [f"trace {event_id}: {info['outcome']}" + (f" ({info['reason']})" if info["reason"] else "")]
    for record in records:
        lines.append(f"  {when(record.get('t'))}  {record.get('kind')!s:<9} {describe(record)}")
    return "\n".join(lines) + "\n"
