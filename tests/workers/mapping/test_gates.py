"""Segment's gates (SPEC 14), table-driven: the ``integrations`` object and consent, as pure
rules, and as the skips ``map_event`` raises before any subscription."""

from __future__ import annotations

from typing import Any

import pytest

from connector.config import DestinationSettings
from connector.connections import DEFAULT_INTEGRATION_NAMES
from connector.errors import SkipEvent
from tests.workers.mapping.test_destination_mapping import build_connection
from workers.mapping.destination import map_event
from workers.mapping.destination.gates import consent_verdict, integrations_verdict

V, VA = DEFAULT_INTEGRATION_NAMES

# (integrations object, sent to a connection with the default names?)
INTEGRATIONS_TABLE: list[tuple[Any, bool]] = [
    (None, True),
    ({}, True),
    ({"All": True}, True),
    ({"All": False}, False),
    ({"All": False, V: True}, True),
    ({"All": False, VA: True}, True),
    ({"All": False, V: {"someOption": 1}}, True),  # Segment's per-destination options enable it
    ({"All": False, "voucherify": True}, False),  # names are case-sensitive
    ({"All": False, "VOUCHERIFY": True}, False),
    ({"All": False, "Mixpanel": True}, False),
    ({V: False}, False),
    ({VA: False}, False),
    ({"All": True, V: False}, False),
    ({"voucherify": False}, True),  # not our name: says nothing about us
    ({"Mixpanel": False}, True),
    ({V: False, VA: True}, False),  # ours disagree: false wins (privacy first)
    ({"All": False, V: None}, False),
    ({"All": False, V: "true"}, False),  # only the boolean true (or options) enables
    ({V: "false"}, True),  # only the boolean false disables
    ({V: 0}, True),
    ({"All": "false"}, True),
    ({"all": False}, True),  # "All" is case-sensitive too
]


@pytest.mark.parametrize(
    ("integrations", "sent"), INTEGRATIONS_TABLE, ids=[repr(i) for i, _ in INTEGRATIONS_TABLE]
)
def test_integrations_rules(integrations: Any, sent: bool) -> None:
    event: dict[str, Any] = {"type": "track", "event": "X", "userId": "u"}
    if integrations is not None:
        event["integrations"] = integrations
    verdict = integrations_verdict(event, DEFAULT_INTEGRATION_NAMES)
    assert (verdict is None) == sent, verdict


@pytest.mark.parametrize(
    ("names", "integrations", "sent"),
    [
        (("Voucherify EU",), {"All": False, "Voucherify EU": True}, True),
        (("Voucherify EU",), {"All": False, V: True}, False),  # the defaults are replaced
        (("Voucherify EU",), {V: False}, True),
        (("Voucherify EU", V), {V: False}, False),
    ],
)
def test_configured_integration_names_replace_the_defaults(
    names: tuple[str, ...], integrations: dict[str, Any], sent: bool
) -> None:
    assert (integrations_verdict({"integrations": integrations}, names) is None) == sent


def _consent(preferences: Any) -> dict[str, Any]:
    return {"context": {"consent": {"categoryPreferences": preferences}}}


# (event, categories the connection needs, sent?)
CONSENT_TABLE: list[tuple[dict[str, Any], tuple[str, ...], bool]] = [
    ({}, ("Analytics",), True),  # no preferences: Segment's default is to flow
    ({"context": {}}, ("Analytics",), True),
    ({"context": {"consent": {}}}, ("Analytics",), True),
    (_consent(None), ("Analytics",), True),
    (_consent({"Analytics": True}), ("Analytics",), True),
    (_consent({"Analytics": False}), ("Analytics",), False),
    (_consent({}), ("Analytics",), False),  # preferences present, the category not consented
    (_consent({"Advertising": True}), ("Analytics",), False),
    (_consent({"analytics": True}), ("Analytics",), False),  # category names are exact
    (_consent({"Analytics": "true"}), ("Analytics",), False),  # only true consents
    (_consent({"Analytics": 1}), ("Analytics",), False),
    (_consent({"Analytics": True, "Advertising": False}), ("Analytics",), True),
    (_consent({"Analytics": True, "Advertising": False}), ("Analytics", "Advertising"), False),
    (_consent({"Analytics": True, "Advertising": True}), ("Analytics", "Advertising"), True),
    (_consent(["Analytics"]), ("Analytics",), False),  # not an object: consents to nothing
    (_consent({"Analytics": False}), (), True),  # no categories configured: no check
]


@pytest.mark.parametrize(("event", "categories", "sent"), CONSENT_TABLE)
def test_consent_rules(event: dict[str, Any], categories: tuple[str, ...], sent: bool) -> None:
    verdict = consent_verdict(event, categories)
    assert (verdict is None) == sent, verdict


def test_verdicts_name_what_kept_the_event_out() -> None:
    assert integrations_verdict({"integrations": {VA: False}}, DEFAULT_INTEGRATION_NAMES) == (
        "integrations['Voucherify (Actions)'] is false"
    )
    assert consent_verdict(_consent({"Analytics": True}), ("Analytics", "Ads")) == (
        "context.consent.categoryPreferences does not consent to 'Ads'"
    )


@pytest.mark.parametrize("event_type", ["identify", "track", "page", "screen", "group", "alias"])
def test_map_event_skips_by_the_gates_before_anything_else(event_type: str) -> None:
    """Every call type, an alias too, is skipped with the gate's own reason: Segment never hands
    such an event to the destination."""
    connection = build_connection({"mode": "rest", "destination": {"consent_categories": ("Analytics",)}})
    event = {"type": event_type, "userId": "u1", "messageId": "m1", "groupId": "g", "event": "E"}
    with pytest.raises(SkipEvent) as caught:
        map_event({**event, "integrations": {"All": False}}, connection)
    assert caught.value.reason == "integrations"
    with pytest.raises(SkipEvent) as caught:
        map_event({**event, **_consent({"Analytics": False})}, connection)
    assert caught.value.reason == "consent"
    # Both gates: integrations is decided first.
    with pytest.raises(SkipEvent) as caught:
        map_event({**event, "integrations": {V: False}, **_consent({"Analytics": False})}, connection)
    assert caught.value.reason == "integrations"


def test_the_defaults_answer_to_both_catalog_names_and_need_no_consent() -> None:
    dest = DestinationSettings()
    assert dest.integration_names == ("Voucherify", "Voucherify (Actions)")
    assert dest.consent_categories == ()
    connection = build_connection({"mode": "rest"})
    event = {
        "type": "track",
        "event": "E",
        "userId": "u1",
        "messageId": "m1",
        **_consent({"Analytics": False}),
    }
    assert len(map_event({**event, "integrations": {"All": False, VA: True}}, connection)) == 1
