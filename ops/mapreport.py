"""What ``connector map`` reports (:mod:`ops.mapcmd` fills it): the report's shape, as JSON
and as lines for a person."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import orjson

SEGMENT_KIND = "segment"
WEBHOOK_KIND = "voucherify_webhook"


@dataclass
class Request:
    method: str
    url: str
    headers: dict[str, str]  # credentials redacted
    body: Any
    action: str
    idempotency_key: str
    answer: dict[str, Any] | None = None  # with --send: status, verdict, latency_ms, headers, body
    # The mapping's own (non-secret) headers, e.g. Idempotency-Key: what --send adds to the
    # credentials; kept out of the report.
    request_headers: dict[str, str] = field(default_factory=dict, repr=False)

    def as_dict(self) -> dict[str, Any]:
        data: dict[str, Any] = {
            "method": self.method,
            "url": self.url,
            "headers": self.headers,
            "body": self.body,
            "action": self.action,
            "idempotency_key": self.idempotency_key,
        }
        if self.answer is not None:
            data["answer"] = self.answer
        return data


@dataclass
class EventReport:
    index: int
    summary: str  # one line: type, ids, name
    message_id: str | None = None
    rejected: dict[str, str] | None = None  # {"code", "message"}: the ingest would refuse it
    skipped: dict[str, str] | None = None  # {"reason", "message"}: the worker would skip it
    warnings: list[str] = field(default_factory=list)
    subscriptions: list[dict[str, Any]] = field(default_factory=list)
    requests: list[Request] = field(default_factory=list)
    # Voucherify events, for the chosen Segment name: how it was named.
    naming: str | None = None

    def as_dict(self) -> dict[str, Any]:
        return {
            "index": self.index,
            "summary": self.summary,
            "message_id": self.message_id,
            "rejected": self.rejected,
            "skipped": self.skipped,
            "warnings": self.warnings,
            "subscriptions": self.subscriptions,
            "naming": self.naming,
            "requests": [r.as_dict() for r in self.requests],
        }


@dataclass
class MapReport:
    connection: str
    mode: str
    kind: str  # segment | voucherify_webhook
    target: str  # base URL requests go to
    events: list[EventReport]
    sent: bool = False
    notes: list[str] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        return {
            "connection": self.connection,
            "mode": self.mode,
            "kind": self.kind,
            "target": self.target,
            "sent": self.sent,
            "notes": self.notes,
            "events": [e.as_dict() for e in self.events],
        }


_MARKS = {
    "matched": "MATCHED",
    "no_match": "no match",
    "replaced": "replaced",
    "mapping_failed": "FAILED",
    "not_reached": "skipped",
}


def _pretty(value: Any) -> list[str]:
    return orjson.dumps(value, option=orjson.OPT_INDENT_2).decode().splitlines()


def render(report: MapReport) -> list[str]:
    direction = "Segment -> Voucherify" if report.kind == SEGMENT_KIND else "Voucherify -> Segment"
    lines = [f"connection {report.connection!r} ({direction}, mode {report.mode}) -> {report.target or '-'}"]
    for event in report.events:
        lines += ["", f"event #{event.index}: {event.summary}"]
        if event.rejected:
            lines.append(f"  the ingest REFUSES it: {event.rejected['code']}: {event.rejected['message']}")
        if event.naming:
            lines.append(f"  name: {event.naming}")
        if event.skipped:  # first: the verdict, then each subscription's part in it
            lines.append(f"  SKIPPED ({event.skipped['reason']}): {event.skipped['message']}")
        for sub in event.subscriptions:
            label = f"{sub['name']} [{sub['kind']}, {sub['action']}]"
            trigger = f" trigger `{sub['trigger']}`" if sub.get("trigger") else ""
            lines.append(f"  {_MARKS.get(sub['status'], sub['status']):<9} {label}:{trigger} {sub['why']}")
        for warning in event.warnings:
            lines.append(f"  note: {warning}")
        for number, request in enumerate(event.requests, 1):
            lines += [
                "",
                f"  request {number} of {len(event.requests)}: {request.action} "
                f"(idempotency key {request.idempotency_key})",
                f"    {request.method} {request.url}",
                *(f"    {name}: {value}" for name, value in request.headers.items()),
                *(f"    {line}" for line in _pretty(request.body)),
            ]
            answer = request.answer
            if answer is None:
                continue
            if not answer.get("sent"):
                lines.append(f"  NOT SENT: {answer['error']}")
            elif answer.get("status") is None:
                lines.append(
                    f"  answer: no HTTP answer after {answer['latency_ms']} ms ({answer['verdict']}): {answer['error']}"
                )
            else:
                lines.append(
                    f"  answer: HTTP {answer['status']} in {answer['latency_ms']} ms ({answer['verdict']})"
                )
                lines += [f"    {line}" for line in _pretty(answer.get("body"))]
    lines.append("")
    lines += [f"note: {note}" for note in report.notes]
    if not report.sent:
        total = sum(len(e.requests) for e in report.events)
        lines.append(f"dry run: nothing was sent ({total} request(s) above); --send performs them")
    return lines
