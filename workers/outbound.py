"""The description of one outbound HTTP call, produced by the pure mappings.

A mapping never performs I/O: it returns :class:`OutboundRequest` values (or raises
``SkipEvent`` / ``MappingError``).  The delivery machinery adds credentials, sends, classifies.
Descriptions never hold secrets, so they can be stored in retry and dead-letter records.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from connector import CHANNEL, USER_AGENT

# The header sets nearly every request carries, stored by name (with "+k": and its own
# Idempotency-Key): a request is stored per event in held lists, queues and parked work, and
# these ~190 bytes were a quarter of a held upsert (SPEC 16: per-event records near the event's
# own size).  Read back, a name is the set this version sends.
_STANDARD_HEADERS: dict[str, dict[str, str]] = {
    "v": {"Content-Type": "application/json", "User-Agent": USER_AGENT, "X-Voucherify-Channel": CHANNEL},
    "s": {"Content-Type": "application/json", "User-Agent": USER_AGENT},
}


def pack_headers(headers: dict[str, str], idempotency_key: str) -> dict[str, str] | str:
    rest = dict(headers)
    keyed = rest.get("Idempotency-Key") == idempotency_key
    if keyed:
        del rest["Idempotency-Key"]
    for name, standard in _STANDARD_HEADERS.items():
        if rest == standard:
            return name + ("+k" if keyed else "")
    return dict(headers)


def unpack_headers(value: Any, idempotency_key: str) -> dict[str, str]:
    if isinstance(value, str):
        name, _, keyed = value.partition("+")
        headers = dict(_STANDARD_HEADERS.get(name, {}))
        if keyed == "k":
            headers["Idempotency-Key"] = idempotency_key
        return headers
    return dict(value or {})


@dataclass(frozen=True)
class OutboundRequest:
    method: str
    path: str  # relative to the target's base URL, e.g. "/v1/customers"
    body: Any  # JSON-serializable
    idempotency_key: str
    action: str  # upsert_customer | add_custom_event | assign_group | segment_track ...
    headers: dict[str, str] = field(default_factory=dict)  # non-secret headers to add
    # Customer the call concerns (Voucherify source_id / Segment userId): orders and coalesces work.
    customer: str | None = None
    # Event time (ISO 8601) used by stale-update protection of customer upserts.
    event_time: str | None = None
    message_id: str | None = None
    # A coalesced request (workers.targets.voucherify_coalesce): the original requests it stands for, each
    # {idempotency_key, action, customer, event_time, message_id, body}.  None for a plain one.
    parts: tuple[dict[str, Any], ...] | None = None

    def to_dict(self) -> dict[str, Any]:
        data: dict[str, Any] = {
            "method": self.method,
            "path": self.path,
            "body": self.body,
            "idempotency_key": self.idempotency_key,
            "action": self.action,
            "headers": pack_headers(self.headers, self.idempotency_key),
            "customer": self.customer,
            "event_time": self.event_time,
            "message_id": self.message_id,
        }
        if self.parts:
            data["parts"] = [dict(p) for p in self.parts]
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> OutboundRequest:
        return cls(
            method=data["method"],
            path=data["path"],
            body=data["body"],
            idempotency_key=data["idempotency_key"],
            action=data["action"],
            headers=unpack_headers(data.get("headers"), data["idempotency_key"]),
            customer=data.get("customer"),
            event_time=data.get("event_time"),
            message_id=data.get("message_id"),
            parts=tuple(data["parts"]) if data.get("parts") else None,
        )
