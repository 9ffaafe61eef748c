"""``connector map``: what one event would do on a connection, without sending it (SPEC 12).

The operator's Event Tester.  Given a Segment event (one call, a ``{"batch": [...]}`` body or a
JSON array, as the Tracking API and the Webhooks destination accept) or a Voucherify webhook
body (any envelope version), auto-detected, it reports:

- what the ingest would do with it (Segment: each event validated and normalized exactly as the
  web process does; Voucherify: the envelope parsed and the age check);
- for Segment events, every subscription of the connection: which matched, which did not and
  why (its trigger is false, it cannot match this type, a custom subscription replaces the
  default), which matched but failed to map; for webhooks, which catalog rule names the track;
- the exact requests in the connection's mode: method, URL, headers with every credential
  replaced by ``<redacted>``, body (the Voucherify call, or the Segment ``/v1/batch`` the
  outbox would send).

``--send`` performs those requests (:mod:`ops.mapsend`, the only part that reaches Redis or the
network) through the workers' own transport and credentials and shows each answer.

Self-contained on purpose (the CLI only wires it): everything comes from the mapping and
delivery modules the workers use, so the dry run cannot drift from what they do.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from typing import Any

import click
import orjson

from app.errors import ApiError
from app.ingest import ingest_body
from connector.config import Connection
from connector.errors import MappingError, SkipEvent
from connector.tuning import Tuning
from ops.common import pick_connection, print_json, settings_or_exit
from ops.mapreport import SEGMENT_KIND, WEBHOOK_KIND, EventReport, MapReport, Request, render
from ops.mapsend import send_requests, wire_headers
from workers.delivery.attempts import new_item
from workers.mapping.destination import map_event_detailed
from workers.mapping.destination.subscriptions import parse_subscription, preset_subscriptions
from workers.mapping.source import (
    event_age_seconds,
    event_allowed,
    is_catalog_type,
    map_webhook,
    parse_webhook,
    segment_event_name,
    to_outbound,
)
from workers.targets import segment, voucherify

SEGMENT_TYPES = ("identify", "track", "page", "screen", "group", "alias")
REDACTED = "<redacted>"


class MapInputError(Exception):
    """The file is not something the connector ingests; the message says what was expected."""


# ---------------------------------------------------------------------------------------------
# Input


def load(raw: bytes) -> Any:
    try:
        return orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        raise MapInputError(f"not JSON: {exc}") from None


def detect(body: Any) -> str:
    """``segment`` or ``voucherify_webhook``; :class:`MapInputError` when it is neither."""
    if isinstance(body, list) or (isinstance(body, dict) and isinstance(body.get("batch"), list)):
        return SEGMENT_KIND
    if isinstance(body, dict):
        kind = body.get("type")
        if kind in SEGMENT_TYPES:
            return SEGMENT_KIND
        if "data" in body and isinstance(kind, str):
            return WEBHOOK_KIND
    raise MapInputError(
        "neither a Segment event (an object with type "
        + " | ".join(SEGMENT_TYPES)
        + ', a {"batch": [...]} body or an array of events) nor a Voucherify webhook body '
        "(an object with type and data, e.g. customer.redemption.succeeded)"
    )


# ---------------------------------------------------------------------------------------------
# Headers: exactly what the workers send (ops.mapsend.wire_headers), credentials shown redacted


def _redacted(headers: Mapping[str, str], auth: Mapping[str, str]) -> dict[str, str]:
    shown = dict(headers)
    for name, value in auth.items():
        scheme = value.split(" ", 1)[0] if " " in value else ""
        shown[name] = f"{scheme} {REDACTED}" if scheme else REDACTED
    return shown


# ---------------------------------------------------------------------------------------------
# Segment -> Voucherify


def _segment_events(body: Any) -> tuple[list[dict[str, Any]], list[tuple[int, str, str]]]:
    """Accepted (normalized) events and rejections ``(index, code, message)``, as the ingest does."""
    if isinstance(body, list):
        body = {"batch": body}
    path_type = "batch" if "batch" in body else str(body.get("type"))
    try:
        result = ingest_body(body, path_type)
    except ApiError as exc:
        raise MapInputError(f"the ingest would refuse the whole request: {exc.code}: {exc.message}") from None
    rejected = [(r.index, r.code, r.message) for r in result.rejected]
    return result.accepted, rejected


def _summary(event: Mapping[str, Any]) -> str:
    parts = [str(event.get("type") or "(no type)")]
    for key in ("event", "name", "userId", "anonymousId", "groupId"):
        if event.get(key) not in (None, ""):
            parts.append(f"{key}={event[key]!r}")
    return " ".join(parts)


def _subscriptions(event: Mapping[str, Any], connection: Connection) -> list[dict[str, Any]]:
    """Every subscription of the connection and what it makes of ``event``."""
    event_type = event.get("type")
    customs = [
        (parse_subscription(raw, index), str(raw.get("trigger")))
        for index, raw in enumerate(connection.destination.mappings)
    ]
    out: list[dict[str, Any]] = []
    covering = [sub.label for sub, _ in customs if event_type in sub.types]
    for preset in preset_subscriptions():
        if preset.types[0] != event_type:
            continue
        entry = {"name": preset.label, "kind": "default", "action": preset.action.key}
        if covering:
            entry |= {
                "status": "replaced",
                "why": f"custom subscription(s) {', '.join(covering)} cover {event_type}",
            }
        else:
            entry |= {"status": "matched", "why": f"the default subscription for {event_type} calls"}
        out.append(entry)
    for sub, trigger in customs:
        entry = {
            "name": sub.label,
            "kind": f"custom #{sub.index}",
            "action": sub.action.key,
            "trigger": trigger,
        }
        if event_type not in sub.types:
            entry |= {
                "status": "no_match",
                "why": f"its trigger can only match {', '.join(sub.types)} calls, not {event_type}",
            }
        elif sub.trigger is not None and not sub.trigger.predicate()(event):
            entry |= {"status": "no_match", "why": "its trigger is false for this event"}
        else:
            entry |= {"status": "matched", "why": "its trigger holds"}
        out.append(entry)
    return out


def _skipped_subscriptions(
    event: Mapping[str, Any], connection: Connection, reason: str
) -> list[dict[str, Any]]:
    """Every subscription, for an event the worker skips: why it matched nothing.

    ``no_subscription``: each one's own non-match reason.  Any other skip (the integrations
    object, consent, a disabled call type, loop prevention...) is decided before the
    subscriptions: each is shown as not reached, with what it would have made of the event."""
    entries = _subscriptions(event, connection)
    if reason == "no_subscription":
        return entries
    for entry in entries:
        entry |= {
            "status": "not_reached",
            "why": f"the event is skipped ({reason}) before any subscription; otherwise: {entry['why']}",
        }
    return entries


def _map_segment(
    connection: Connection, body: Any, auth: Mapping[str, str], notes: list[str]
) -> list[EventReport]:
    vf = connection.voucherify
    accepted, rejected = _segment_events(body)
    reports: list[EventReport] = []
    raw_events = _raw_events(body)
    for index, code, message in rejected:
        raw = raw_events[index] if index < len(raw_events) else None
        summary = _summary(raw) if isinstance(raw, dict) else f"not an event object ({type(raw).__name__})"
        reports.append(EventReport(index, summary, rejected={"code": code, "message": message}))
    rejected_at = {index for index, _, _ in rejected}
    positions = [i for i in range(len(accepted) + len(rejected)) if i not in rejected_at]
    for index, event in zip(positions, accepted, strict=True):
        report = EventReport(index, _summary(event), message_id=str(event.get("messageId")))
        reports.append(report)
        try:
            result = map_event_detailed(event, connection)
        except SkipEvent as exc:
            report.skipped = {"reason": exc.reason, "message": str(exc)}
            report.subscriptions = _skipped_subscriptions(event, connection, exc.reason)
            continue
        except MappingError as exc:  # pragma: no cover - map_event_detailed reports failures
            report.skipped = {"reason": "mapping_error", "message": exc.message}
            continue
        report.subscriptions = _subscriptions(event, connection)
        failed = dict(result.failures)
        for entry in report.subscriptions:
            error = failed.get(entry["name"])
            if error is not None and entry["status"] == "matched":
                entry |= {"status": "mapping_failed", "why": error.message}
        for request in result.requests:
            headers = wire_headers(request.headers, auth)
            report.requests.append(
                Request(
                    method=request.method,
                    url=vf.base_url + request.path,
                    headers=_redacted(headers, auth),
                    body=request.body,
                    action=request.action,
                    idempotency_key=request.idempotency_key,
                    request_headers=dict(request.headers),
                )
            )
        if result.failures and not result.requests:
            report.warnings.append("no request: the worker dead-letters this event (mapping_error)")
    if len(accepted) > 1 and vf.mode == "rest":
        notes.append(
            "events of one batch are mapped one by one here; a worker may merge upserts of one "
            "customer (coalescing) into fewer calls with the same effect"
        )
    reports.sort(key=lambda report: report.index)
    if any(isinstance(e, dict) and not e.get("messageId") for e in raw_events):
        notes.append(
            "an event without messageId gets a random one at ingest: its idempotency key changes per run"
        )
    return reports


def _raw_events(body: Any) -> list[Any]:
    if isinstance(body, list):
        return body
    if isinstance(body, dict) and isinstance(body.get("batch"), list):
        return list(body["batch"])
    return [body]


# ---------------------------------------------------------------------------------------------
# Voucherify -> Segment


def _map_webhook(
    connection: Connection, body: dict[str, Any], auth: Mapping[str, str], now: float, tuning: Tuning
) -> list[EventReport]:
    try:
        event = parse_webhook(body)
    except MappingError as exc:
        raise MapInputError(f"not a Voucherify webhook the connector reads: {exc.message}") from None
    report = EventReport(
        0,
        f"{event.type} (envelope {event.envelope_version}, event id {event.event_id})",
        message_id=event.event_id,
    )
    age = event_age_seconds(event, now)
    limit = connection.voucherify.max_event_age_seconds
    if age is not None and age > limit:
        report.rejected = {
            "code": "event_too_old",
            "message": f"created {age / 3600:.1f} h ago; the ingest refuses webhooks older than "
            f"{limit // 3600} h (give created_at a recent time to send it)",
        }
    if connection.voucherify.webhook_secret is None:
        report.warnings.append(
            "the connection has no voucherify.webhook_secret: the ingest refuses webhooks (401)"
        )
    name = segment_event_name(event.type)
    if name is not None:
        if is_catalog_type(event.type):
            rule = "an event of Segment's Voucherify catalog"
        else:
            rule = "a customer event beyond the catalog, named by the catalog's rule"
        allowed = event_allowed(event.type, connection)
        report.naming = f"{event.type} -> {name!r}: {rule}" + (
            "" if allowed else " (not in the connection's segment.events allow-list)"
        )
    try:
        track = map_webhook(event, connection)
    except SkipEvent as exc:
        report.skipped = {"reason": exc.reason, "message": str(exc)}
        return [report]
    except MappingError as exc:
        report.skipped = {"reason": "mapping_error", "message": exc.message}
        report.warnings.append("the worker dead-letters this event (mapping_error)")
        return [report]
    assert connection.segment is not None
    request = to_outbound(track, connection)
    item = new_item(request, body, now, 1)
    batch = segment.build_batch(
        [orjson.dumps(item)],
        max_events=tuning.segment_max_events,
        max_bytes=tuning.segment_max_bytes,
        max_event_bytes=tuning.segment_max_event_bytes,
    )
    if batch.oversized_head is not None:
        report.warnings.append(
            "the track call is over Segment's 32 KB: the worker dead-letters it (too_large)"
        )
        return [report]
    headers = wire_headers({}, auth)
    report.requests.append(
        Request(
            method="POST",
            url=connection.segment.base_url + request.path,
            headers=_redacted(headers, auth),
            body=orjson.loads(batch.body),
            action=request.action,
            idempotency_key=request.idempotency_key,
        )
    )
    return [report]


# ---------------------------------------------------------------------------------------------
# Entry point


def dry_run(
    connection: Connection, body: Any, *, now: float | None = None, tuning: Tuning | None = None
) -> MapReport:
    """The report for ``body`` on ``connection``; nothing is sent, Redis is not read."""
    kind = detect(body)
    now = time.time() if now is None else now
    notes: list[str] = []
    if kind == SEGMENT_KIND:
        target = connection.voucherify.base_url
        events = _map_segment(connection, body, voucherify.auth_headers(connection.voucherify), notes)
    else:
        if connection.segment is None:
            report = EventReport(0, "Voucherify webhook")
            report.skipped = {
                "reason": "segment_not_configured",
                "message": f"connection {connection.id!r} has no [connection.segment]: the ingest answers 409",
            }
            return MapReport(connection.id, connection.voucherify.mode, kind, "", [report])
        target = connection.segment.base_url
        events = _map_webhook(
            connection, body, segment.auth_headers(connection.segment), now, tuning or Tuning()
        )
    return MapReport(connection.id, connection.voucherify.mode, kind, target, events, notes=notes)


@click.command("map")
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
    settings = settings_or_exit()
    connection = pick_connection(settings, connection_id)
    try:
        report = dry_run(connection, load(event_file.read()), tuning=settings.tuning)
    except MapInputError as exc:
        raise click.ClickException(f"{event_file.name}: {exc}") from None
    if send:
        send_requests(report, settings, connection)
    if as_json:
        print_json(report.as_dict())
    else:
        for line in render(report):
            click.echo(line)
