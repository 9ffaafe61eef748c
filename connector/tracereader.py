"""Reading event traces (``connector trace ID``, the status page): what :mod:`connector.trace`
wrote, found by id across connections, summarised and rendered for a person."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import orjson
import redis

from connector import overview
from connector.keys import Keys
from connector.trace import as_text, clean_id


def read(client: redis.Redis, keys: Keys, connection: str, event_id: str) -> list[dict[str, Any]]:
    """The records of ``event_id`` on ``connection``, oldest first (empty: unknown, expired, or
    sampled out)."""
    return find(client, keys, event_id, connection).get(connection, [])


def find(
    client: redis.Redis, keys: Keys, event_id: str, connection: str | None = None
) -> dict[str, list[dict[str, Any]]]:
    """Every connection's trace of ``event_id`` (only ``connection``'s when given), each oldest
    first; connections without records are left out."""
    clean = clean_id(event_id) or ""
    if connection is not None:
        connections = [connection]
    else:
        connections = sorted(as_text(c) for c in client.smembers(keys.trace_index(clean)))
    if not connections:
        return {}
    pipe = client.pipeline(transaction=False)
    for cid in connections:
        pipe.lrange(keys.trace_head(cid, clean), 0, -1)
        pipe.lrange(keys.trace_steps(cid, clean), 0, -1)
    results = pipe.execute()
    found: dict[str, list[dict[str, Any]]] = {}
    for index, cid in enumerate(connections):
        records = [orjson.loads(raw) for raw in [*results[2 * index], *results[2 * index + 1]]]
        if records:
            records.sort(key=lambda r: float(stamp(r) or 0))
            found[cid] = records
    return found


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


def stamp(record: dict[str, Any]) -> Any:
    """When a record's step happened.  A worker writes the "received" record when it takes the
    event (later than the web accepted it, by the queue's wait): its step is the acceptance
    (``at``), so the trace reads in order; when the worker took it is the mapping line's time.
    Never after the record's own time (the web's clock may run ahead of the worker's)."""
    t = record.get("t")
    if record.get("kind") == "received" and isinstance(record.get("at"), int | float):
        return min(record["at"], t) if isinstance(t, int | float) else record["at"]
    return t


def when(t: Any) -> str:
    try:
        return datetime.fromtimestamp(float(t), UTC).isoformat(timespec="milliseconds")[:-6] + "Z"
    except (TypeError, ValueError, OverflowError, OSError):
        return "?"


def describe(record: dict[str, Any], retry_at: Any = None) -> str:
    """One record as a line of text (the CLI's and the status page's); ``retry_at``: when a
    failed outcome is tried again (its wait, see :func:`rows`)."""
    kind = record.get("kind")
    if kind == "received":
        text = (
            f"via {record.get('door')} on connection {record.get('connection')} ({record.get('direction')})"
        )
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
        if record.get("reason") == "held":
            until = when(record.get("until"))
            return f"held until {until} (the hold window: this customer's upserts go as one call)"
        return f"{record.get('reason')} until {when(record.get('until'))}"
    if kind == "outcome":
        text = str(record.get("outcome"))
        if text == overview.FAILED:  # never final: the attempt is retried
            text += f" (will retry at {when(retry_at)})" if retry_at else " (will be retried)"
        for key in ("reason", "status", "error"):
            if record.get(key) is not None:
                text += f"; {key}: {record[key]}"
        return text
    return orjson.dumps(record).decode()


def _retry_at(records: list[dict[str, Any]], index: int) -> Any:
    """The ``until`` of the retry wait that follows a failed outcome (before the next attempt)."""
    for later in records[index + 1 :]:
        if later.get("kind") == "wait" and later.get("reason") == "retry":
            return later.get("until")
        if later.get("kind") in ("attempt", "outcome"):
            return None
    return None


def rows(records: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The trace's lines: ``when`` (ISO 8601, UTC), ``kind`` and ``text``."""
    return [
        {"when": when(stamp(r)), "kind": r.get("kind"), "text": describe(r, _retry_at(records, i))}
        for i, r in enumerate(records)
    ]


def render(event_id: str, records: list[dict[str, Any]]) -> str:
    if not records:
        return f"no trace for {event_id!r} (unknown id, older than the retention, or a delivered event sampled out)\n"
    info = summary(event_id, records)
    lines = [f"trace {event_id}: {info['outcome']}" + (f" ({info['reason']})" if info["reason"] else "")]
    for row in rows(records):
        lines.append(f"  {row['when']}  {row['kind']!s:<9} {row['text']}")
    return "\n".join(lines) + "\n"
