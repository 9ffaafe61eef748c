"""The ingest's fast path accepts only what the marshmallow schemas accept (app/schemas.py)."""

from __future__ import annotations

import itertools
from typing import Any

import pytest

from app.schemas import CALL_TYPES, SCHEMAS, surely_valid

VALUES: list[Any] = [
    None,
    "",
    "x",
    "x" * 101,
    "y" * 1025,
    0,
    1.5,
    True,
    {},
    {"a": 1},
    [],
    "2024-05-01T10:00:00.000Z",
    "2024-05-01",
    "not a date",
]
FIELDS = [
    "type",
    "userId",
    "anonymousId",
    "messageId",
    "timestamp",
    "sentAt",
    "context",
    "integrations",
    "traits",
    "event",
    "properties",
    "name",
    "category",
    "groupId",
    "previousId",
]
MISSING = object()


def cases() -> list[dict[str, Any]]:
    base = {"userId": "u1", "event": "E", "groupId": "g", "previousId": "p"}
    out = [dict(base)]
    for field, value in itertools.product(FIELDS, [*VALUES, MISSING]):
        event = dict(base)
        if value is MISSING:
            event.pop(field, None)
        else:
            event[field] = value
        out.append(event)
    return out


@pytest.mark.parametrize("call_type", CALL_TYPES)
def test_fast_path_never_accepts_what_marshmallow_rejects(call_type: str) -> None:
    accepted = 0
    for event in cases():
        if surely_valid(event, call_type):
            accepted += 1
            assert SCHEMAS[call_type].validate(event) == {}, event
    assert accepted > 10  # and it does take the common valid cases


def test_fast_path_takes_typical_events() -> None:
    from bench.payloads import group, identify, page, track

    for event in (track("u", 1), identify("u", 1), page("u", 1), group("u", 1)):
        assert surely_valid(event, event["type"]), event
