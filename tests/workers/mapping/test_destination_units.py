"""Unit tests of the destination mapping that data files cannot express: subscription validation
(start-up errors), the trigger language, the framework's directives, the per-connection cache,
credentials, partial failures, and a throughput smoke test."""

from __future__ import annotations

import time
import tomllib
from pathlib import Path
from typing import Any

import pytest

from connector.config import ConfigError
from connector.errors import MappingError
from tests.workers.mapping.test_destination_mapping import build_connection
from workers.mapping.destination import map_event, map_event_detailed
from workers.mapping.destination.mapping import MISSING, compile_mapping, get_path, js_string
from workers.mapping.destination.routing import compiled_for
from workers.mapping.destination.subscriptions import validate_subscription
from workers.mapping.destination.triggers import covered_types, parse_trigger
from workers.settings import load_settings
from workers.targets.voucherify import auth_headers

BRIEF_EXAMPLE = """
[[connection.destination.mapping]]
name = "Orders"
trigger = 'type = "track" and event = "Order Completed"'
action = "add_custom_event"
[connection.destination.mapping.fields]
event = "order_completed"
metadata = { "@path" = "$.properties" }
customer = { source_id = { "@path" = "$.userId" }, email = { "@if" = { exists = { "@path" = "$.properties.email" }, then = { "@path" = "$.properties.email" }, else = { "@path" = "$.context.traits.email" } } } }
"""


def _sub(**kw: Any) -> dict[str, Any]:
    raw: dict[str, Any] = {"trigger": 'type = "track"', "action": "add_custom_event"}
    raw.update(kw)
    return {k: v for k, v in raw.items() if v is not None}


# ---------------------------------------------------------------------------------------------
# Subscription validation (configuration errors at start-up)


def test_the_documented_toml_example_is_valid() -> None:
    raw = tomllib.loads(BRIEF_EXAMPLE)["connection"]["destination"]["mapping"][0]
    assert validate_subscription(raw) == []


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        (_sub(action="send_email"), "action: unknown action 'send_email'"),
        (_sub(action=None), "action: is required"),
        (_sub(trigger=None), "trigger: is required"),
        (_sub(trigger='type = "track" and'), "trigger: expected a field"),
        (_sub(trigger="type ="), "trigger: expected a value"),
        (_sub(trigger='type "track"'), "trigger: expected an operator"),
        (_sub(trigger='(type = "track"'), "trigger: expected ')'"),
        (_sub(trigger='type = "track")'), "trigger: unexpected ')'"),
        (_sub(trigger='type = "track'), "trigger: unexpected character"),
        (_sub(trigger='foo = "x"'), "trigger: unknown field 'foo'"),
        (_sub(trigger='event.name = "x"'), "trigger: 'event' has no sub-fields"),
        (_sub(trigger='type = "alias"'), "trigger: can match none of the event types"),
        (_sub(trigger='type = "Track"'), "trigger: can match none of the event types"),
        (_sub(trigger=""), "trigger: is empty"),
        (_sub(fields={"event": {"@foo": "$.x"}}), "fields.event: unknown directive @foo"),
        (_sub(fields={"event": {"@path": "$.a", "x": 1}}), "cannot be mixed with other keys"),
        (_sub(fields={"event": {"@path": "$.a", "@template": "x"}}), "exactly one @-key"),
        (_sub(fields={"event": {"@path": 5}}), "@path must be a string"),
        (_sub(fields={"event": {"@path": "properties.x"}}), None),  # mapping-kit allows omitting $.
        (_sub(fields={"event": {"@path": "#x"}}), "must start with"),
        (_sub(fields={"event": {"@template": ["x"]}}), "@template must be a string"),
        (_sub(fields={"event": {"@if": {"then": "x"}}}), "@if requires an `exists` or a `blank`"),
        (_sub(fields={"event": {"@if": {"exists": {"@path": "$.a"}}}}), "@if requires a `then` or an `else`"),
        (
            _sub(fields={"event": {"@if": {"exists": "$.a", "than": 1, "then": 2}}}),
            "@if has unknown keys than",
        ),
        (
            _sub(fields={"group_id": {"@path": "$.groupId"}}),
            "fields.group_id: unknown field for add_custom_event",
        ),
        (
            _sub(fields={"customer": {"source_id": {"@path": "$.userId"}, "phone": "1"}}),
            "fields.customer.phone",
        ),
        (_sub(fields={"customer": {"email": {"@path": "$.email"}}}), "required property 'source_id'"),
        (_sub(fields={"metadata": "vip"}), "fields.metadata: must be a table"),
        (_sub(fields={"event": {"a": 1}}), "fields.event: must be a string"),
        (_sub(fields="event"), "fields: must be a table"),
        (_sub(filter="x"), "filter: unknown key"),
        (_sub(name=""), "name: must be a non-empty string"),
    ],
)
def test_invalid_subscriptions_are_reported(raw: dict[str, Any], expected: str | None) -> None:
    errors = validate_subscription(raw)
    if expected is None:
        assert errors == []
    else:
        assert any(expected in e for e in errors), errors


def test_validation_reports_every_problem_at_once() -> None:
    errors = validate_subscription({"trigger": "type =", "action": "nope", "fields": {"x": 1}, "extra": 1})
    assert len(errors) == 3  # extra key, trigger, action (fields cannot be checked without an action)


@pytest.mark.parametrize(
    "alias", ["upsert_customer", "upsertCustomer", "assign_customer_to_group", "assignCustomerToGroup"]
)
def test_action_aliases(alias: str) -> None:
    assert validate_subscription(_sub(action=alias, trigger='type = "identify"')) == []


def _write_connections(tmp_path: Path, mapping_toml: str) -> dict[str, str]:
    path = tmp_path / "connections.toml"
    path.write_text(
        '[[connection]]\nid = "acme"\nwrite_keys = ["wk"]\n'
        '[connection.voucherify]\napp_id = "a"\nsecret_key = "s"\nregion = "eu"\n' + mapping_toml,
        encoding="utf-8",
    )
    return {"CONNECTIONS_FILE": str(path)}


def test_load_settings_accepts_subscriptions(tmp_path: Path) -> None:
    settings = load_settings(_write_connections(tmp_path, BRIEF_EXAMPLE))
    conn = settings.connections[0]
    [request] = map_event(
        {"type": "track", "event": "Order Completed", "userId": "u1", "messageId": "m", "timestamp": "t"},
        conn,
    )
    assert request.body["event"] == "order_completed"
    assert request.idempotency_key == "acme:v:m:add_custom_event:orders"


def test_load_settings_rejects_bad_subscriptions_at_start(tmp_path: Path) -> None:
    toml = (
        '[[connection.destination.mapping]]\ntrigger = "type = "\naction = "add_custom_event"\n'
        '[[connection.destination.mapping]]\ntrigger = \'type = "group"\'\naction = "assign_to_group"\n'
    )
    with pytest.raises(ConfigError) as caught:
        load_settings(_write_connections(tmp_path, toml))
    text = str(caught.value)
    assert "connection 'acme'" in text
    assert "mapping[0]" in text and "trigger: expected a value" in text
    assert "mapping[1]" in text and "unknown action 'assign_to_group'" in text


# ---------------------------------------------------------------------------------------------
# Trigger language


@pytest.mark.parametrize(
    ("trigger", "types"),
    [
        ('type = "track"', ("track",)),
        ('type = "track" or type = "page" or type = "screen"', ("track", "page", "screen")),
        ('type != "identify"', ("track", "page", "screen", "group")),
        ('event = "Order Completed"', ("track",)),
        ('name = "Home"', ("page", "screen")),
        ("event exists or name exists", ("track", "page", "screen")),
        ('event != "x"', ("identify", "track", "page", "screen", "group")),
        ("userId exists", ("identify", "track", "page", "screen", "group")),
        ('(type = "identify" or type = "group") and traits.plan = "pro"', ("identify", "group")),
        ('type contains "e"', ("identify", "page", "screen")),
        ('type = "track" and type = "page"', ()),
    ],
)
def test_covered_types(trigger: str, types: tuple[str, ...]) -> None:
    assert covered_types(parse_trigger(trigger)) == types


@pytest.mark.parametrize(
    ("trigger", "event", "result"),
    [
        ("properties.total = 10", {"properties": {"total": 10.0}}, True),
        ("properties.total = 10", {"properties": {"total": "10"}}, False),
        ("properties.flag = 1", {"properties": {"flag": True}}, False),
        ("properties.flag = true", {"properties": {"flag": True}}, True),
        ("properties.flag = true", {"properties": {"flag": 1}}, False),
        ("properties.x = null", {"properties": {"x": None}}, True),
        ("properties.x = null", {"properties": {}}, True),  # Segment's `= null`: missing or null
        ('properties.x != "a"', {"properties": {}}, True),
        ("properties.x exists", {"properties": {"x": None}}, False),
        ("properties.x exists", {"properties": {"x": 0}}, True),
        ('properties.tags contains "b"', {"properties": {"tags": ["a", "b"]}}, True),
        ("properties.ids contains 2", {"properties": {"ids": [1, 2.0]}}, True),
        ('properties.name contains "ell"', {"properties": {"name": "Hello"}}, True),
        ('properties.n contains "1"', {"properties": {"n": 123}}, False),
        ('context.page.path = "/a"', {"context": {"page": {"path": "/a"}}}, True),
        ('traits."first name" = "A"', {"traits": {"first name": "A"}}, True),
        ("properties.items.0.sku = 'x'", {"properties": {"items": [{"sku": "x"}]}}, True),
        ('type = "track" AND (event = "a" OR event = "b")', {"type": "track", "event": "b"}, True),
        ('type = "track" and event = "a" or event = "b"', {"type": "page", "event": "b"}, True),
        ('type == "track"', {"type": "track"}, True),
        ("properties.n = -1.5e2", {"properties": {"n": -150}}, True),
        (r'properties.q = "say \"hi\""', {"properties": {"q": 'say "hi"'}}, True),
    ],
)
def test_trigger_semantics(trigger: str, event: dict[str, Any], result: bool) -> None:
    assert parse_trigger(trigger).predicate()(event) is result


# ---------------------------------------------------------------------------------------------
# Framework


@pytest.mark.parametrize(
    ("mapping", "event", "expected"),
    [
        ({"@path": "$.products[1].sku"}, {"products": [{"sku": "a"}, {"sku": "b"}]}, "b"),
        ({"@path": "$.products.5.sku"}, {"products": []}, MISSING),
        ({"@path": "$.traits.name"}, {"traits": None}, MISSING),  # documented deviation
        ({"@path": "$"}, {"a": 1}, {"a": 1}),
        (
            {"@template": "{{n}}|{{l}}|{{o}}|{{b}}|{{z}}"},
            {"n": 2.0, "l": ["a", None, 1], "o": {"k": 1}, "b": False},
            # Objects and arrays render as "" (the reference's "[object Object]" / "a,,1": docs/choices.md).
            "2|||false|",
        ),
        (
            {"@template": "<{{{h}}}> <{{ h }}>"},
            {"h": "<a href='x'>"},
            "<<a href='x'>> <<a href='x'>>",  # no HTML escaping (actions-core 3.170.0)
        ),
        ({"@template": "no placeholders"}, {}, "no placeholders"),
        ({"@literal": {"@path": "$.a"}}, {"a": 1}, 1),
        ({"@if": {"blank": {"@path": "$.a"}, "then": "yes", "else": "no"}}, {"a": ""}, "no"),
        ({"@if": {"exists": {"@path": "$.a"}, "then": "yes", "else": "no"}}, {"a": ""}, "yes"),
        ({"@if": {"exists": {"@path": "$.a"}, "then": "yes", "else": 0}}, {}, MISSING),  # falsy else ignored
        ({"@if": {"exists": {"@path": "$.a"}, "then": False}}, {"a": 1}, False),
        ({"x": {"@path": "$.missing"}, "y": [{"@path": "$.missing"}, 1]}, {}, {"y": [1]}),
    ],
)
def test_directives(mapping: Any, event: dict[str, Any], expected: Any) -> None:
    errors: list[str] = []
    resolve = compile_mapping(mapping, "m", errors)
    assert errors == []
    assert resolve(event) == expected if expected is not MISSING else resolve(event) is MISSING


@pytest.mark.parametrize(
    ("value", "text"),
    [
        (1, "1"),
        (1.0, "1"),
        (1.5, "1.5"),
        (-0.25, "-0.25"),
        (True, "true"),
        (None, "null"),
        ([1, [2, 3]], "1,2,3"),
    ],
)
def test_js_string(value: Any, text: str) -> None:
    assert js_string(value) == text


def test_get_path_helper() -> None:
    assert get_path({"a": {"b": [0, {"c": 3}]}}, "$.a.b[1].c") == 3


# ---------------------------------------------------------------------------------------------
# Compiled form, cache, credentials, partial failures


def test_compiled_once_per_connection() -> None:
    conn = build_connection({"mode": "rest", "id": "cache-a"})
    first = compiled_for(conn)
    assert compiled_for(conn) is first
    # The same settings in a new object (a settings reload that changed nothing): reused.
    same = build_connection({"mode": "rest", "id": "cache-a"})
    assert compiled_for(same) is first
    # Other settings under the same id: compiled anew.
    other = build_connection({"mode": "rest", "id": "cache-a", "destination": {"track_disabled": True}})
    assert compiled_for(other) is not first
    segmentio = build_connection(
        {"mode": "segmentio", "id": "cache-a", "destination": {"track_disabled": True}}
    )
    assert compiled_for(segmentio) is not compiled_for(other)


def test_auth_headers_rest_are_raw_and_not_in_requests() -> None:
    conn = build_connection({"mode": "rest", "app_id": "app-1", "secret_key": "sk-1"})
    assert auth_headers(conn.voucherify) == {"X-App-Id": "app-1", "X-App-Token": "sk-1"}
    [request] = map_event({"type": "identify", "userId": "u", "messageId": "m", "timestamp": "t"}, conn)
    assert "X-App-Token" not in request.headers and "sk-1" not in repr(request)


def test_detailed_result_reports_the_failing_subscription() -> None:
    ok = {"name": "Ok", "trigger": 'type = "track"', "action": "add_custom_event"}
    bad = {"name": "Bad", "trigger": 'type = "track"', "action": "assign_customer_to_group"}  # no groupId
    conn = build_connection({"mode": "rest", "destination": {"mappings": [ok, bad]}})
    event = {"type": "track", "event": "E", "userId": "u", "messageId": "m", "timestamp": "t"}
    result = map_event_detailed(event, conn)
    assert [r.idempotency_key for r in result.requests] == ["test:v:m:add_custom_event:ok"]
    assert [(name, str(exc)) for name, exc in result.failures] == [
        ("Bad", "The root value is missing the required field 'group_id'.")
    ]
    # Both failing: the messages are combined, each with its subscription.
    conn2 = build_connection({"mode": "rest", "destination": {"mappings": [bad, {**bad, "name": "Bad 2"}]}})
    with pytest.raises(MappingError, match=r"^\[Bad\] The root value .* \[Bad 2\] The root value"):
        map_event(event, conn2)


def test_idempotency_suffix_falls_back_to_index_when_names_collide() -> None:
    subs = [
        {"name": "Same", "trigger": 'type = "track"', "action": "add_custom_event"},
        {"name": "same!", "trigger": 'type = "track"', "action": "add_custom_event"},
        {"trigger": 'type = "track"', "action": "add_custom_event"},
    ]
    conn = build_connection({"mode": "segmentio", "destination": {"mappings": subs}})
    keys = [
        r.idempotency_key
        for r in map_event({"type": "track", "event": "E", "userId": "u", "messageId": "m"}, conn)
    ]
    assert keys == [
        "test:v:m:add_custom_event:m0",
        "test:v:m:add_custom_event:m1",
        "test:v:m:add_custom_event:m2",
    ]


def test_missing_message_id_gets_a_deterministic_key() -> None:
    conn = build_connection({"mode": "rest"})
    event = {"type": "identify", "userId": "u"}
    [a] = map_event(event, conn)
    [b] = map_event(dict(event), conn)
    assert a.idempotency_key == b.idempotency_key and a.message_id and a.message_id.startswith("sha1-")


def test_throughput_smoke() -> None:
    """The benchmarks need ~20k events/s per process; a generous floor catches regressions such as
    compiling per event."""
    orders = {
        "name": "Orders",
        "trigger": 'type = "track" and event = "Order Completed"',
        "action": "add_custom_event",
    }
    conn = build_connection({"mode": "rest", "destination": {"mappings": [orders]}})
    events = [
        {
            "type": "identify",
            "userId": "u1",
            "messageId": "m1",
            "timestamp": "t",
            "traits": {"email": "a@b.io", "first_name": "A"},
        },
        {
            "type": "track",
            "event": "Order Completed",
            "userId": "u1",
            "messageId": "m2",
            "timestamp": "t",
            "properties": {"total": 1},
        },
        {"type": "page", "name": "Home", "userId": "u1", "messageId": "m3", "timestamp": "t"},
    ]
    n = 6000
    start = time.perf_counter()
    for i in range(n):
        map_event(events[i % 3], conn)
    elapsed = time.perf_counter() - start
    assert n / elapsed > 5000, f"{n / elapsed:.0f} events/s"
