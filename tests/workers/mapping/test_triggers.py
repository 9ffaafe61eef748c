"""The trigger language, table-driven: ``tests/mapping_cases/triggers/*.json``.

Each row is a trigger and an event.  The expected verdict is the reference's (Segment's own
matcher, ``@segment/destination-subscriptions`` of actions-core 3.170.0, recorded by
``tools/reference/generate.js``), except on rows that name a deliberate difference (``ours`` and
``why``; the reference's verdict must then really differ) or that have no Segment spelling
(``connector_only``).  ``invalid`` rows are configuration errors that name the subscription.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from connector.config import ConfigError
from tests.support import TESTS_DIR
from workers.mapping.destination.subscriptions import validate_subscription
from workers.mapping.destination.triggers import covered_types, parse_trigger
from workers.settings import load_settings

TABLES = sorted((TESTS_DIR / "mapping_cases" / "triggers").glob("*.json"))
ROWS = [row for path in TABLES for row in json.loads(path.read_text(encoding="utf-8"))["rows"]]
MATCH_ROWS = [r for r in ROWS if not r.get("invalid")]
INVALID_ROWS = [r for r in ROWS if r.get("invalid")]


def _id(row: dict[str, Any]) -> str:
    return row["trigger"][:70] or "<empty>"


def test_the_table_has_every_operator() -> None:
    text = " ".join(r["trigger"] for r in MATCH_ROWS)
    for op in (" = ", " != ", " < ", " <= ", " > ", " >= ", "contains(", "!contains(", "match(", "!match("):
        assert op in text, op
    for word in (" exists", " and ", " or ", "!(", "= null", "!= null", "= true", "= false"):
        assert word in text, word
    assert len(INVALID_ROWS) >= 15
    for path in TABLES:
        provenance = json.loads(path.read_text(encoding="utf-8"))["provenance"]
        assert provenance.startswith("reference @segment/destination-subscriptions "), path.name


@pytest.mark.parametrize("row", MATCH_ROWS, ids=[_id(r) for r in MATCH_ROWS])
def test_trigger_verdict(row: dict[str, Any]) -> None:
    reference = row.get("reference")
    if row.get("connector_only"):
        assert reference is None and "ours" in row and row.get("why")
        expected = row["ours"]
    else:
        assert reference is not None, "run `make reference-cases` to ask the reference"
        if "ours" in row:
            assert row.get("why"), "a difference from the reference says why"
            expected = row["ours"]
            # A real difference: the reference refuses the trigger, or decides otherwise.
            assert "parse_error" in reference or reference["matches"] != expected, "no difference"
        else:
            assert "parse_error" not in reference, reference
            expected = reference["matches"]
    assert parse_trigger(row["trigger"]).predicate()(row["event"]) is expected


@pytest.mark.parametrize("row", INVALID_ROWS, ids=[_id(r) for r in INVALID_ROWS])
def test_invalid_trigger(row: dict[str, Any]) -> None:
    errors = validate_subscription(
        {"name": "Orders", "trigger": row["trigger"], "action": "add_custom_event"}
    )
    assert any(e.startswith("trigger: ") and row["error"] in e for e in errors), errors


def test_an_invalid_trigger_is_a_configuration_error_naming_the_subscription(tmp_path: Path) -> None:
    path = tmp_path / "connections.toml"
    path.write_text(
        '[[connection]]\nid = "acme"\nwrite_keys = ["wk"]\n'
        '[connection.voucherify]\napp_id = "a"\nsecret_key = "s"\nregion = "eu"\n'
        '[[connection.destination.mapping]]\nname = "Good"\ntrigger = \'type = "track"\'\naction = "add_custom_event"\n'
        '[[connection.destination.mapping]]\nname = "Big orders"\n'
        'trigger = \'properties.total > "100"\'\naction = "add_custom_event"\n',
        encoding="utf-8",
    )
    with pytest.raises(ConfigError) as caught:
        load_settings({"CONNECTIONS_FILE": str(path)})
    text = str(caught.value)
    assert "connection 'acme'" in text and "mapping[1] ('Big orders')" in text
    assert "compares numbers" in text and "Good" not in text


@pytest.mark.parametrize(
    ("trigger", "types"),
    [
        ('!(type = "track")', ("identify", "page", "screen", "group")),
        ('!(type = "track" or type = "page")', ("identify", "screen", "group")),
        ('!(event = "x")', ("identify", "track", "page", "screen", "group")),
        ('type = "track" and !(event = "x")', ("track",)),
        ('!contains(event, "x")', ("track",)),  # needs an event, which only track calls carry
        ('!(contains(event, "x"))', ("identify", "track", "page", "screen", "group")),
        ('match(name, "Home*")', ("page", "screen")),
        ("!(name exists)", ("identify", "track", "page", "screen", "group")),
        ('!(!(type = "group"))', ("group",)),
        ("properties.total > 10", ("identify", "track", "page", "screen", "group")),
    ],
)
def test_coverage_stays_right_under_negation(trigger: str, types: tuple[str, ...]) -> None:
    assert covered_types(parse_trigger(trigger)) == types
