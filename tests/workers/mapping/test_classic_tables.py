"""`defaults = "classic"`, `identify_mapping` / `track_mapping`, `metadata_schema`: configuration.

What they map is in the data cases (``tests/mapping_cases/destination/*-classic-*.json``); here:
what the configuration accepts and refuses at start-up, and the table-merging rules.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from connector.config import ConfigError
from workers.mapping.destination import map_event
from workers.mapping.destination.classic import CLASSIC_IDENTIFY, merged_table
from workers.settings import load_settings

BASE = '[[connection]]\nid = "acme"\nwrite_keys = ["wk"]\n[connection.voucherify]\napp_id = "a"\nsecret_key = "s"\nregion = "eu"\n'


def _load(tmp_path: Path, destination: str) -> object:
    path = tmp_path / "connections.toml"
    path.write_text(BASE + "[connection.destination]\n" + destination, encoding="utf-8")
    return load_settings({"CONNECTIONS_FILE": str(path)})


def test_tables_in_toml_quoted_or_dotted(tmp_path: Path) -> None:
    settings = _load(
        tmp_path,
        'defaults = "classic"\nmetadata_schema = "defined"\n'
        '[connection.destination.identify_mapping]\n"traits.plan" = "customer.metadata.plan"\n'
        'traits.crm.id = "customer.source_id"\n'  # unquoted: TOML nests it; joined back with dots
        '[connection.destination.track_mapping]\n"properties.order_id" = "metadata.order_id"\n',
    )
    dest = settings.connections[0].destination  # type: ignore[attr-defined]
    assert dest.defaults == "classic" and dest.metadata_schema == "defined"
    assert dest.identify_mapping == (
        ("traits.plan", "customer.metadata.plan"),
        ("traits.crm.id", "customer.source_id"),
    )
    assert dest.track_mapping == (("properties.order_id", "metadata.order_id"),)
    [request] = map_event(
        {
            "type": "identify",
            "userId": "u",
            "messageId": "m",
            "traits": {"plan": "pro", "crm": {"id": "c-1"}},
        },
        settings.connections[0],  # type: ignore[attr-defined]
    )
    assert request.body == {"source_id": "c-1", "metadata": {"plan": "pro"}}


@pytest.mark.parametrize(
    ("destination", "message"),
    [
        ('defaults = "modern"', "destination.defaults: must be one of actions, classic, not 'modern'"),
        ('metadata_schema = "some"', 'destination.metadata_schema: must be "all" or "defined"'),
        ("identify_mapping = 5", 'destination.identify_mapping: must be a table of "src.path" = "dest.path"'),
        (
            '[connection.destination.identify_mapping]\n"traits.x" = "customer.nickname"',
            "identify_mapping: traits.x: unknown destination 'customer.nickname' (known: ",
        ),
        (
            '[connection.destination.identify_mapping]\n"traits.x" = "event"',
            "identify_mapping: traits.x: unknown destination 'event'",  # event names are track's
        ),
        (
            '[connection.destination.track_mapping]\n"properties.x" = 3',
            "track_mapping: properties.x: the destination must be a string path",
        ),
        (
            '[connection.destination.track_mapping]\n"properties x" = "event"',
            "track_mapping: properties x: not a path into the event",
        ),
        (
            '[connection.destination.track_mapping]\n"properties.x" = "metadata.a.b"',
            "unknown destination 'metadata.a.b'",
        ),
    ],
)
def test_bad_settings_are_configuration_errors(tmp_path: Path, destination: str, message: str) -> None:
    with pytest.raises(ConfigError) as caught:
        _load(tmp_path, destination)
    text = str(caught.value)
    assert "connection 'acme'" in text and message in text, text


def test_user_entries_come_first_and_replace_by_destination() -> None:
    user = (
        ("traits.fullName", "customer.name"),
        ("traits.phone", ""),
        ("traits.plan", "customer.metadata.plan"),
    )
    table = merged_table(CLASSIC_IDENTIFY, user)
    assert table[:2] == (("traits.fullName", "customer.name"), ("traits.plan", "customer.metadata.plan"))
    assert ("traits.name", "customer.name") not in table  # replaced (same destination)
    assert all(src != "traits.phone" for src, _ in table)  # removed by ""
    assert ("traits.email", "customer.email") in table  # kept
