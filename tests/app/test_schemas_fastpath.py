"""The ingest's fast path accepts only what the marshmallow schemas accept (app/schemas.py)."""

from __future__ import annotations

import itertools
from typing import Any

import pytest

from app.schemas import CALL_TYPES, SCHEMAS, surely_valid, validate_event

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


ACCEPTED = [
    ("track", {"userId": "u"}),  # no event: named by `name`, or by the call type
    ("track", {"userId": "u", "event": None, "name": "N"}),
    ("track", {"userId": "u", "event": 404}),
    ("track", {"userId": "u", "event": 0}),
    ("track", {"userId": "u", "event": 1.5}),
    ("track", {"userId": "u", "event": True}),
    ("track", {"userId": 404, "event": "E"}),
    ("page", {"userId": "u", "name": 0}),
    ("page", {"userId": "u", "name": 42, "category": 7}),
    ("page", {"userId": "u", "name": None}),
    ("screen", {"userId": "u", "name": 3.5}),
    ("screen", {"anonymousId": 77, "name": False}),
    ("identify", {"anonymousId": 77}),
    ("group", {"userId": 1, "groupId": 2}),
]
REFUSED = [
    ("track", {"userId": "u", "event": {"a": 1}}),
    ("track", {"userId": "u", "event": ["E"]}),
    ("page", {"userId": "u", "name": {"a": 1}}),
    ("screen", {"userId": "u", "name": ["a", "b"]}),
    ("page", {"userId": "u", "category": []}),
    ("track", {"userId": True, "event": "E"}),
]


@pytest.mark.parametrize(("call_type", "event"), ACCEPTED)
def test_shapes_segment_accepts_are_accepted_on_the_fast_path(call_type: str, event: dict[str, Any]) -> None:
    """What Segment's Tracking API accepts and the destination maps (SPEC 3.4c): accepted by the
    schema, and by the fast path (not sent the slow way for being unusual)."""
    assert SCHEMAS[call_type].validate(event) == {}
    assert surely_valid(event, call_type)


@pytest.mark.parametrize(("call_type", "event"), REFUSED)
def test_what_can_never_be_mapped_is_refused(call_type: str, event: dict[str, Any]) -> None:
    assert not surely_valid(event, call_type)
    assert validate_event(event, call_type) is not None
    assert validate_event(event, call_type)[0] == "invalid_field"  # type: ignore[index]
