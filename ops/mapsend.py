"""``connector map --send``: the report's requests performed for real (SPEC 12).

The dry run (:mod:`ops.mapcmd`) decides what would be sent and touches nothing; this module is
the only part of ``connector map`` that reaches Redis or the network.  Each request goes
through the workers' own transport and credentials after a grant from the connection's shared
rate-limit budget (a manual call spends the same Voucherify quota as the workers), and nothing
else is touched: no queue, no retry, no idempotency ledger, no dead letter.

It also owns :func:`wire_headers`, the headers exactly as the workers compose them, so the
headers the dry run shows (redacted) and the ones sent here cannot differ.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import orjson
import redis

from connector import USER_AGENT
from connector.config import Connection, Settings
from connector.contract import DESTINATION, SOURCE
from connector.errors import TransportFailure
from ops.mapreport import SEGMENT_KIND, MapReport, Request
from workers.delivery.classify import classify
from workers.delivery.transport import HTTPResult
from workers.runtime import build_runtime, context_for


def wire_headers(request_headers: Mapping[str, str], auth: Mapping[str, str]) -> dict[str, str]:
    # As workers.delivery.engine._send and the Segment outbox compose them.
    return {"Content-Type": "application/json", "User-Agent": USER_AGENT, **request_headers, **auth}


def send_requests(report: MapReport, settings: Settings, connection: Connection) -> None:
    """Perform the report's requests with the workers' transport; each answer goes in its request."""
    direction = DESTINATION if report.kind == SEGMENT_KIND else SOURCE
    ctx = context_for(build_runtime(settings), connection, direction)
    for event in report.events:
        for shown in event.requests:
            if event.rejected:
                # What the connector would never send (the ingest refuses it) is not sent here either.
                shown.answer = {
                    "sent": False,
                    "error": f"the ingest refuses this event ({event.rejected['code']})",
                }
            else:
                shown.answer = _send_one(ctx, shown)
    report.sent = True


def _send_one(ctx: Any, shown: Request) -> dict[str, Any]:
    try:
        budgets = ctx.target.budgets_for(None)
        grant = ctx.budgets.acquire(budgets, parks=False)  # nothing parks here
    except redis.RedisError as exc:
        return {"sent": False, "error": f"Redis (rate-limit budget): {type(exc).__name__}: {exc}"}
    if not grant.granted:
        return {
            "sent": False,
            "error": f"the connection's {ctx.target.name} budget is spent: next call in {grant.wait:.1f}s",
        }
    try:
        result: HTTPResult | TransportFailure = ctx.transport.send(
            shown.method,
            shown.url,
            wire_headers(shown.request_headers, ctx.target.auth_headers()),
            orjson.dumps(shown.body),
            (ctx.tuning.connect_timeout, ctx.tuning.read_timeout),
        )
    except TransportFailure as exc:
        result = exc
    ctx.budgets.answered(budgets, grant)  # answered late: counted again (it may have arrived late)
    if isinstance(result, TransportFailure):
        return {
            "sent": True,
            "status": None,
            "verdict": classify(result).value,
            "error": result.message,
            "latency_ms": int(result.latency * 1000),
        }
    return {
        "sent": True,
        "status": result.status,
        "verdict": classify(result).value,
        "latency_ms": int(result.latency * 1000),
        "headers": result.headers,
        "body": _maybe_json(result.body),
    }


def _maybe_json(text: str) -> Any:
    try:
        return orjson.loads(text)
    except orjson.JSONDecodeError:
        return text
