"""One place that reports an event's outcome: a JSON log line and the metrics (SPEC 7).

Log lines go to the stdlib logger ``connector.outcome`` with the fields as ``extra`` (the JSON
formatter of :mod:`connector.logs` turns them into keys): connection, direction, message_id,
action, status, attempt, latency_ms, outcome, reason -- those that apply (absent ones are left
out).  Never a payload, never a header.

Outcomes: ``delivered``, ``skipped`` (reason: duplicate, stale, a mapping skip...), ``retry``
(parked after a failed attempt), ``throttled`` / ``busy`` / ``deferred`` (parked without an
attempt; logged at DEBUG, they can be many), ``dead_letter``, ``dropped``.
"""

from __future__ import annotations

import logging
from typing import Any

from connector import metrics

log = logging.getLogger("connector.outcome")

_QUIET = {"throttled", "busy", "deferred", "stopping"}


def report(
    *,
    connection: str,
    direction: str,
    outcome: str,
    reason: str | None = None,
    message_id: str | None = None,
    action: str | None = None,
    status: int | None = None,
    attempt: int | None = None,
    latency_ms: int | None = None,
    error: str | None = None,
) -> None:
    fields: dict[str, Any] = {
        "connection": connection,
        "direction": direction,
        "message_id": message_id,
        "action": action,
        "status": status,
        "attempt": attempt,
        "latency_ms": latency_ms,
        "outcome": outcome,
        "reason": reason,
    }
    # A field that does not apply (no attempt for a skip, no status without an answer) is left
    # out, not written as null/None: lines stay short and a missing key means "not applicable".
    fields = {key: value for key, value in fields.items() if value is not None}
    if error:
        fields["error"] = error[:300]
    level = logging.DEBUG if outcome in _QUIET else logging.INFO
    if outcome == "dead_letter":
        level = logging.WARNING
    if log.isEnabledFor(level):
        log.log(level, "event %s", outcome, extra=fields)


def skipped(
    connection: str, direction: str, reason: str, *, message_id: str | None = None, action: str | None = None
) -> None:
    metrics.EVENTS_SKIPPED.labels(connection, direction, reason).inc()
    report(
        connection=connection,
        direction=direction,
        outcome="skipped",
        reason=reason,
        message_id=message_id,
        action=action,
    )


def dropped(connection: str, kind: str, count: int) -> None:
    """Work for a connection that is no longer configured: nothing to send it with."""
    metrics.DROPPED.labels(connection, kind).inc(count)
    log.warning(
        "dropping work of an unconfigured connection",
        extra={
            "connection": connection,
            "outcome": "dropped",
            "reason": "connection_removed",
            "kind": kind,
            "count": count,
        },
    )


def status_label(status: int | None) -> str:
    return str(status) if status is not None else "none"
