"""Voucherify -> Segment: envelopes, event names, the track call, skips, allow-list, size bound.

The data-driven part runs every file of ``tests/mapping_cases/source/``: one fixture of
``tests/fixtures/voucherify_webhooks/`` (Voucherify's own OpenAPI examples) wrapped in each
envelope version it lists, and the Segment call (or skip reason) it must give -- written by hand
from the fixture by the rules of ``tests/mapping_cases/source/README.md``, every property compared.
The ``messageId`` is computed here from the documented formula, not by the product's function.
"""

from __future__ import annotations

import copy
import json
import re
from collections.abc import Iterator, Mapping
from typing import Any

import pytest

from connector import __version__
from connector import envelope as env
from connector.config import Connection, SegmentSettings, VoucherifySettings
from connector.errors import MappingError, SkipEvent
from connector.secrets import Secret
from tests.support import TESTS_DIR
from tests.support.webhooks import (
    ACTIVITY,
    V2018,
    V2024,
    VERSIONS,
    documented_message_id,
    fixture_names,
    load_example,
    wrap,
)
from workers.mapping.source.flatten import (
    SEGMENT_MAX_EVENT_BYTES,
    TRACK_BYTES_BUDGET,
    fit_track,
    flatten_object,
    flatten_properties,
    serialized_size,
)
from workers.mapping.source.mapping import (
    CATALOG,
    event_allowed,
    is_catalog_type,
    map_webhook,
    message_id_for,
    segment_event_name,
    to_outbound,
)

CASES_DIR = TESTS_DIR / "mapping_cases" / "source"
CREATED_AT = "2024-03-13T17:35:58.600Z"
CREATED_EPOCH = 1710351358.6

# SPEC 4.2, verbatim.
SPEC_CATALOG = {
    "Customer Redemption Succeeded": "customer.redemption.succeeded",
    "Customer Redemption Failed": "customer.redemption.failed",
    "Customer Redemption Rollback Succeeded": "customer.redemption.rollback.succeeded",
    "Customer Redemption Rollback Failed": "customer.redemption.rollback.failed",
    "Customer Reward Redemptions Created": "customer.reward_redemptions.created",
    "Customer Reward Redemptions Completed": "customer.reward_redemptions.completed",
    "Customer Rewarded": "customer.rewarded",
    "Customer Rewarded Loyalty Points": "customer.rewarded.loyalty_points",
    "Customer Validation Succeeded": "customer.validation.succeeded",
    "Customer Validation Failed": "customer.validation.failed",
    "Customer Publication Succeeded": "customer.publication.succeeded",
    "Customer Publication Failed": "customer.publication.failed",
}


def make_connection(
    connection_id: str = "acme-eu", extra_events: tuple[str, ...] | None = None
) -> Connection:
    return Connection(
        id=connection_id,
        write_keys=(Secret("wk_test"),),
        voucherify=VoucherifySettings(
            app_id=Secret("app"),
            secret_key=Secret("key"),
            region="eu",
            api_url=None,
            mode="rest",
            base_url="https://api.voucherify.io",
            queue="voucherify.eu",
            webhook_secret=Secret("whsec"),
        ),
        segment=SegmentSettings(
            write_key=Secret("seg_wk"),
            region="us",
            api_url=None,
            base_url="https://api.segment.io",
            queue="segment.us",
            extra_events=extra_events,
        ),
    )


CONNECTION = make_connection()


def track_for(
    vf_type: str, version: str = V2024, event_id: str = "evcus_test", **kwargs: Any
) -> dict[str, Any]:
    body = wrap(load_example(vf_type), vf_type, version, event_id, CREATED_AT)
    return map_webhook(env.parse_webhook(body), kwargs.get("connection", CONNECTION))


# --------------------------------------------------------------------------------------------
# Data-driven cases


def _cases() -> Iterator[Any]:
    for path in sorted(CASES_DIR.glob("*.json")):
        case = json.loads(path.read_text(encoding="utf-8"))
        for envelope in case["envelopes"]:
            yield pytest.param(case, envelope, id=f"{path.stem}-{envelope['version']}")


RULES_README = CASES_DIR / "README.md"
CONTEXT = {
    "integration": {"name": "voucherify"},
    "library": {"name": "segment-voucherify-connector", "version": __version__},
}


@pytest.mark.parametrize(("case", "envelope"), list(_cases()))
def test_mapping_case(case: dict[str, Any], envelope: dict[str, str]) -> None:
    body = wrap(
        load_example(case["fixture"]),
        envelope["type"],
        envelope["version"],
        case["event_id"],
        case["created_at"],
    )
    event = env.parse_webhook(body)
    assert event.event_id == case["event_id"]
    assert event.envelope_version == envelope["version"]
    connection = make_connection(case["connection_id"])

    if "expected_skip" in case:
        with pytest.raises(SkipEvent) as skipped:
            map_webhook(event, connection)
        assert skipped.value.reason == case["expected_skip"]
        return

    track = map_webhook(event, connection)
    expected = case["expected"]
    assert list(track) == ["type", "event", "userId", "messageId", "timestamp", "properties", "context"]
    assert track["type"] == "track"
    for field in ("event", "userId", "timestamp"):
        assert track[field] == expected[field], field
    # R-messageId: the documented formula, computed by the test.
    assert track["messageId"] == documented_message_id(case["connection_id"], case["event_id"])
    assert track["properties"] == expected["properties"]
    assert track["context"] == CONTEXT
    assert serialized_size(track) <= TRACK_BYTES_BUDGET


def documented_rules() -> set[str]:
    return set(re.findall(r"^\| (R-[A-Za-z-]+) \|", RULES_README.read_text(encoding="utf-8"), flags=re.M))


def test_every_fixture_has_a_case_and_every_case_names_documented_rules() -> None:
    cases = {p.stem: json.loads(p.read_text(encoding="utf-8")) for p in CASES_DIR.glob("*.json")}
    assert set(cases) == set(fixture_names())
    rules = documented_rules()
    assert {"R-messageId", "R-timestamp", "R-context", "R-user", "R-name", "R-fold", "R-copy"} <= rules
    for vf_type in SPEC_CATALOG.values():
        assert vf_type in cases, f"no fixture for catalog event {vf_type}"
    for name, case in cases.items():
        assert ("expected" in case) != ("expected_skip" in case), name
        if "expected" in case:
            assert set(case["expected"]) == {"event", "userId", "timestamp", "properties"}, name
        named = {re.match(r"R-[A-Za-z-]+", check).group(0) for check in case["checks"]}  # type: ignore[union-attr]
        assert named and named <= rules, (name, named - rules)
        versions = [e["version"] for e in case["envelopes"]]
        assert versions[:2] == [V2024, V2018], name
        if name.startswith("customer."):
            assert ACTIVITY in versions, name


def test_fixtures_cover_every_customer_webhook_of_the_openapi_file() -> None:
    # The EVENTS.CUSTOMER.* / EVENTS.REDEMPTION.* / EVENTS.PUBLICATION.SUCCEEDED webhooks documented
    # in Voucherify's OpenAPIWebhooks.json (v2024-01-01), plus the catalog events it lacks.
    documented = {
        "customer.created", "customer.updated", "customer.deleted", "customer.redemption.succeeded",
        "customer.redemption.rollback.succeeded", "customer.rewarded", "customer.rewarded.loyalty_points",
        "customer.reward_redemptions.created", "customer.reward_redemptions.pending",
        "customer.reward_redemptions.completed", "customer.voucher.loyalty_card.pending_points.activated",
        "customer.voucher.loyalty_card.pending_points.added", "customer.voucher.loyalty_card.pending_points.canceled",
        "customer.voucher.loyalty_card.pending_points.updated", "customer.voucher.loyalty_card.points_added",
        "customer.voucher.loyalty_card.points_expired", "customer.voucher.gift.balance_added",
        "customer.segment.entered", "customer.segment.left", "customer.loyalty.tier.joined",
        "customer.loyalty.tier.upgraded", "customer.loyalty.tier.downgraded", "customer.loyalty.tier.prolonged",
        "customer.loyalty.tier.left", "customer.holder.assignment.created", "customer.holder.assignment.deleted",
        "customer.order.created", "customer.order.paid", "customer.order.updated", "customer.order.canceled",
        "customer.publication.succeeded", "customer.custom_event", "publication.succeeded",
        "redemption.succeeded", "redemption.failed", "redemption.rollback.succeeded", "redemption.rollback.failed",
    }  # fmt: skip
    assert documented | set(SPEC_CATALOG.values()) <= set(fixture_names())


# --------------------------------------------------------------------------------------------
# Event names


def test_catalog_names_are_the_specs() -> None:
    assert {name: vf_type for vf_type, name in CATALOG.items()} == SPEC_CATALOG
    for name, vf_type in SPEC_CATALOG.items():
        assert segment_event_name(vf_type) == name
        assert segment_event_name("EVENTS." + vf_type.upper()) == name


@pytest.mark.parametrize(
    ("vf_type", "name"),
    [
        ("redemption.succeeded", "Customer Redemption Succeeded"),
        ("EVENTS.REDEMPTION.SUCCEEDED", "Customer Redemption Succeeded"),
        ("redemption.failed", "Customer Redemption Failed"),
        ("redemption.rollback.succeeded", "Customer Redemption Rollback Succeeded"),
        ("redemption.rollback.failed", "Customer Redemption Rollback Failed"),
        ("publication.succeeded", "Customer Publication Succeeded"),
        ("EVENTS.CUSTOMER.REWARDED.MAIN", "Customer Rewarded"),
        ("EVENTS.CUSTOMER.REWARDED", "Customer Rewarded"),
        ("customer.rewarded.main", "Customer Rewarded"),
        ("EVENTS.CUSTOMER.REWARDED.LOYALTY_POINTS", "Customer Rewarded Loyalty Points"),
        ("customer.loyalty.tier.joined", "Customer Loyalty Tier Joined"),
        ("customer.order.paid", "Customer Order Paid"),
        ("customer.segment.entered", "Customer Segment Entered"),
        ("customer.voucher.loyalty_card.points_expired", "Customer Voucher Loyalty Card Points Expired"),
        (
            "customer.voucher.loyalty_card.pending_points.activated",
            "Customer Voucher Loyalty Card Pending Points Activated",
        ),
        ("customer.reward_redemptions.pending", "Customer Reward Redemptions Pending"),
        ("customer.custom_event", "Customer Custom Event"),
        ("customer.created", "Customer Created"),
        ("EVENTS.CUSTOMER.HOLDER.ASSIGNMENT.CREATED", "Customer Holder Assignment Created"),
    ],
)
def test_event_names(vf_type: str, name: str) -> None:
    assert segment_event_name(vf_type) == name


@pytest.mark.parametrize(
    "vf_type",
    [
        "voucher.published",
        "voucher.created",
        "campaign.created",
        "EVENTS.BUS_VAL_RULE.CREATED",
        "customer",
        "customer.",
        "order.paid",
        "",
    ],
)
def test_non_customer_types_have_no_name(vf_type: str) -> None:
    assert segment_event_name(vf_type) is None


# --------------------------------------------------------------------------------------------
# Envelopes


def test_2024_envelope() -> None:
    body = wrap(
        load_example("customer.rewarded"),
        "customer.rewarded",
        V2024,
        "evcus_0e2907cc6c",
        CREATED_AT,
        sendout_id="whs_1",
    )
    event = env.parse_webhook(body)
    assert event.event_id == "evcus_0e2907cc6c"  # event.id, not the sendout id
    assert event.sendout_id == "whs_1"
    assert event.type == "customer.rewarded"
    assert event.envelope_version == "2024-01-01"
    assert event.project_id == "proj_T3stPr0j3ct"
    assert event.created_at == CREATED_AT
    assert event.created_at_epoch == pytest.approx(CREATED_EPOCH)
    assert event.data["customer"]["source_id"] == "jck-wbhk"


def test_2018_envelope() -> None:
    body = wrap(load_example("customer.rewarded"), "customer.rewarded", V2018, "evcus_0e2907cc6c", CREATED_AT)
    event = env.parse_webhook(body)
    assert (event.event_id, event.type, event.envelope_version) == (
        "evcus_0e2907cc6c",
        "customer.rewarded",
        "2018-08-01",
    )
    assert event.sendout_id == "wh_T3stW3bh00kC0nn3ct0r"
    assert event.project_id == "proj_T3stPr0j3ct"


@pytest.mark.parametrize(
    "internal", ["EVENTS.CUSTOMER.REWARDED.MAIN", "EVENTS.CUSTOMER.REWARDED", "customer.rewarded"]
)
def test_activity_objects_and_internal_names(internal: str) -> None:
    event = env.parse_webhook(
        wrap(load_example("customer.rewarded"), internal, ACTIVITY, "evcus_1", CREATED_AT)
    )
    assert event.type == "customer.rewarded"
    assert event.raw_type == internal
    assert event.envelope_version == "activity"
    assert event.project_id is None


def test_activity_as_the_api_lists_it_nests_the_objects() -> None:
    data = load_example("customer.redemption.succeeded")
    body = {"id": "evcus_2", "type": "customer.redemption.succeeded", "created_at": CREATED_AT, "group_id": "v-1",
            "data": {"data": data, "event_source": {"channel": "API"}}}  # fmt: skip
    event = env.parse_webhook(body)
    assert event.data["customer"]["source_id"] == "jck-wbhk"
    assert map_webhook(event, CONNECTION) == track_for("customer.redemption.succeeded", event_id="evcus_2")


def test_2024_distribution_type_comes_from_the_event() -> None:
    # A distribution's `type` is the "Event name" its author typed; event.type is the real type.
    body = wrap(
        load_example("customer.order.paid"),
        "customer.order.paid",
        V2024,
        "evcus_3",
        CREATED_AT,
        source_object="distribution",
    )
    body["type"] = "My Order Paid Notification"
    event = env.parse_webhook(body)
    assert event.type == "customer.order.paid"
    # For project-settings webhooks `type` names the event.
    body = wrap(load_example("redemption.succeeded"), "redemption.succeeded", V2024, "evred_1", CREATED_AT)
    body["event"]["type"] = "customer.redemption.succeeded"
    assert env.parse_webhook(body).type == "redemption.succeeded"


def test_2024_event_time_is_event_created_at() -> None:
    body = wrap(load_example("customer.order.paid"), "customer.order.paid", V2024, "evcus_3", CREATED_AT)
    body["created_at"] = "2024-03-13T17:36:30.000Z"  # the sendout, a little later
    assert env.parse_webhook(body).created_at == CREATED_AT
    del body["event"]["created_at"]
    assert env.parse_webhook(body).created_at == "2024-03-13T17:36:30.000Z"


def test_legacy_object_related_object_data_is_understood() -> None:
    redemption = load_example("customer.redemption.succeeded")["redemption"]
    body = {"id": "evred_9", "object": "event", "webhook_id": "wh_1", "created_at": CREATED_AT, "type": "redemption.succeeded",
            "data": {"object": redemption, "related_object": None}, "metadata": {"source": "API"}}  # fmt: skip
    track = map_webhook(env.parse_webhook(body), CONNECTION)
    assert track["event"] == "Customer Redemption Succeeded"
    assert track["userId"] == "jck-wbhk"
    assert track["properties"]["redemption"]["id"] == "r_0e6ff48b91cfa02e97"


@pytest.mark.parametrize(
    ("body", "fragment"),
    [
        ([], "JSON array"),
        ("x", "JSON string"),
        (None, "JSON null"),
        ({}, "expected a Voucherify webhook"),
        ({"foo": "bar"}, "expected a Voucherify webhook"),
        (
            {
                "id": "whs_1",
                "type": "customer.rewarded",
                "data": {},
                "event": {"type": "customer.rewarded", "created_at": CREATED_AT},
            },
            "event.id",
        ),
        (
            {
                "id": "whs_1",
                "type": "customer.rewarded",
                "data": {},
                "event": {"id": "", "created_at": CREATED_AT},
            },
            "event.id",
        ),
        ({"id": "whs_1", "data": {}, "created_at": CREATED_AT, "event": {"id": "evcus_1"}}, "type"),
        ({"id": "evcus_1", "object": "event", "type": "customer.rewarded", "data": {}}, "created_at"),
        (
            {"id": "evcus_1", "object": "event", "type": "customer.rewarded", "created_at": CREATED_AT},
            "data must be an object",
        ),
        (
            {
                "id": "evcus_1",
                "object": "event",
                "type": "customer.rewarded",
                "created_at": CREATED_AT,
                "data": [1],
            },
            "data must be an object",
        ),
        ({"object": "event", "type": "customer.rewarded", "created_at": CREATED_AT, "data": {}}, "id"),
        ({"id": 12.5, "type": "customer.rewarded", "created_at": CREATED_AT, "data": {}}, "id"),
        ({"id": "evcus_1", "type": 5, "created_at": CREATED_AT, "data": {}}, "type"),
        (
            {"id": "evcus_1", "type": "customer." + "x" * 300, "created_at": CREATED_AT, "data": {}},
            "longer than",
        ),
        ({"id": "e" * 300, "type": "customer.rewarded", "created_at": CREATED_AT, "data": {}}, "longer than"),
    ],
)
def test_unrecognisable_bodies(body: Any, fragment: str) -> None:
    with pytest.raises(MappingError) as error:
        env.parse_webhook(body)
    assert fragment in error.value.message


def test_event_age() -> None:
    event = env.parse_webhook(wrap({}, "customer.created", V2018, "evcus_1", CREATED_AT))
    assert env.event_age_seconds(event, CREATED_EPOCH + 3600) == pytest.approx(3600)
    assert env.event_age_seconds(event, CREATED_EPOCH - 10) == pytest.approx(-10)
    offset = env.parse_webhook(
        wrap({}, "customer.created", V2018, "evcus_1", "2024-03-13T19:35:58.600+02:00")
    )
    assert offset.created_at_epoch == pytest.approx(CREATED_EPOCH)
    naive = env.parse_webhook(wrap({}, "customer.created", V2018, "evcus_1", "2024-03-13T17:35:58.600"))
    assert naive.created_at_epoch == pytest.approx(CREATED_EPOCH)
    garbled = env.parse_webhook(wrap({}, "customer.created", V2018, "evcus_1", "2024-05-13T12: 26: 06.250Z"))
    assert garbled.created_at_epoch is None
    assert env.event_age_seconds(garbled, CREATED_EPOCH) is None


# --------------------------------------------------------------------------------------------
# The track call


def test_same_event_in_every_envelope_gives_the_same_call() -> None:
    calls = [track_for("customer.redemption.succeeded", version, "evcus_same") for version in VERSIONS]
    assert calls[0] == calls[1] == calls[2]
    assert calls[0]["messageId"] == message_id_for("acme-eu", "evcus_same")


def test_message_id_is_stable_and_distinct_per_event_and_connection() -> None:
    base = message_id_for("acme-eu", "evcus_1")
    # docs/choices.md's formula, computed by the test (changing it would re-send redeliveries).
    assert base == documented_message_id("acme-eu", "evcus_1") == "vf-586b6f4d-2df2-5f52-b3f4-f09bd2591c9e"
    assert message_id_for("acme-eu", "evcus_1") == base
    assert message_id_for("acme-us", "evcus_1") != base
    assert message_id_for("acme-eu", "evcus_2") != base
    assert len(base) <= 100
    # A resend of the same event (new sendout id) keeps the messageId.
    example = load_example("customer.order.paid")
    first = env.parse_webhook(
        wrap(example, "customer.order.paid", V2024, "evcus_1", CREATED_AT, sendout_id="whs_a")
    )
    second = env.parse_webhook(
        wrap(example, "customer.order.paid", V2024, "evcus_1", CREATED_AT, sendout_id="whs_b")
    )
    assert map_webhook(first, CONNECTION) == map_webhook(second, CONNECTION)
    other = map_webhook(first, make_connection("acme-us"))
    assert other["messageId"] == message_id_for("acme-us", "evcus_1") != base


def test_track_call_shape() -> None:
    track = track_for("customer.redemption.succeeded")
    assert list(track) == ["type", "event", "userId", "messageId", "timestamp", "properties", "context"]
    assert track["context"] == {
        "integration": {"name": "voucherify"},
        "library": {"name": "segment-voucherify-connector", "version": __version__},
    }
    assert track["properties"]["customer"] == {
        "id": "cust_IdgAFZxYwwHctOk9pPuMu308",
        "source_id": "jck-wbhk",
        "name": "Jack Webhook",
    }
    assert track["properties"]["campaign"] == {
        "id": "camp_iRMdcq07g9W4dOSRXuTovupi",
        "name": "Spring Discounts",
        "created_at": "2024-02-21T10:01:24.102Z",
        "type": "AUTO_UPDATE",
        "active": True,
        "campaign_type": "DISCOUNT_COUPONS",
    }
    # Never more than two levels below properties.
    for value in track["properties"].values():
        if isinstance(value, dict):
            assert all(not isinstance(v, dict) for v in value.values())
            assert all(
                not isinstance(x, dict | list) for v in value.values() if isinstance(v, list) for x in v
            )


def test_email_property_comes_from_the_customer() -> None:
    properties = track_for("redemption.succeeded", event_id="evred_1")["properties"]
    assert properties["email"] == "jane@jane.io" == properties["customer"]["email"]
    assert "email" not in track_for("customer.rewarded")["properties"]  # email null: left out


def test_unreadable_timestamp_is_left_out() -> None:
    body = wrap(load_example("customer.order.paid"), "customer.order.paid", V2018, "evcus_1", "yesterday")
    track = map_webhook(env.parse_webhook(body), CONNECTION)
    assert "timestamp" not in track


def test_customer_fields_merged_from_other_copies_of_the_same_customer() -> None:
    # data.customer of this example has neither name nor email; redemption.customer has the name.
    properties = track_for("customer.redemption.rollback.failed")["properties"]
    assert properties["customer"] == {
        "id": "cust_IdgAFZxYwwHctOk9pPuMu308",
        "source_id": "jck-wbhk",
        "name": "Jack Webhook",
    }


def test_customer_found_through_the_redemption_or_holder() -> None:
    example = load_example("customer.redemption.succeeded")
    example["customer"] = None
    event = env.parse_webhook(wrap(example, "customer.redemption.succeeded", V2024, "evcus_1", CREATED_AT))
    assert map_webhook(event, CONNECTION)["userId"] == "jck-wbhk"

    example = load_example("customer.reward_redemptions.created")
    del example["customer"]
    event = env.parse_webhook(
        wrap(example, "customer.reward_redemptions.created", V2024, "evcus_1", CREATED_AT)
    )
    assert map_webhook(event, CONNECTION)["userId"] == "130524-01"  # the holder


def test_deleted_customer_keeps_its_original_user_id() -> None:
    # Voucherify renames a deleted customer's source_id to "<source_id>_deleted<date-time>".
    track = track_for("customer.deleted")
    assert track["userId"] == "lionel-johnson"
    assert track["properties"]["customer"]["source_id"] == "lionel-johnson"


# --------------------------------------------------------------------------------------------
# Skips


def _without_customer(example: dict[str, Any]) -> dict[str, Any]:
    example = copy.deepcopy(example)
    for key in ("customer", "holder"):
        example.pop(key, None)
    for value in example.values():
        if isinstance(value, dict):
            value.pop("customer", None)
    return example


@pytest.mark.parametrize(
    "vf_type",
    ["customer.redemption.succeeded", "redemption.succeeded", "customer.rewarded", "publication.succeeded"],
)
def test_events_without_a_customer_are_skipped(vf_type: str) -> None:
    body = wrap(_without_customer(load_example(vf_type)), vf_type, V2024, "evcus_1", CREATED_AT)
    with pytest.raises(SkipEvent) as skipped:
        map_webhook(env.parse_webhook(body), CONNECTION)
    assert skipped.value.reason == "no_customer"


def test_customer_without_source_id_is_skipped() -> None:
    # The documented holder-assignment example: customer {id, source_id: null}.
    with pytest.raises(SkipEvent) as skipped:
        track_for("customer.holder.assignment.created")
    assert skipped.value.reason == "no_customer_source_id"
    example = load_example("customer.order.paid")
    example["customer"]["source_id"] = "   "
    with pytest.raises(SkipEvent) as skipped:
        map_webhook(
            env.parse_webhook(wrap(example, "customer.order.paid", V2024, "evcus_1", CREATED_AT)), CONNECTION
        )
    assert skipped.value.reason == "no_customer_source_id"


@pytest.mark.parametrize("vf_type", ["voucher.published", "voucher.created"])
def test_non_customer_events_are_skipped_even_with_a_customer(vf_type: str) -> None:
    with pytest.raises(SkipEvent) as skipped:
        track_for(vf_type, event_id="evvou_1")
    assert skipped.value.reason == "not_customer_event"


def test_connection_without_segment_is_skipped() -> None:
    connection = Connection(id="vf-only", write_keys=(), voucherify=CONNECTION.voucherify, segment=None)
    with pytest.raises(SkipEvent) as skipped:
        track_for("customer.rewarded", connection=connection)
    assert skipped.value.reason == "segment_not_configured"


# --------------------------------------------------------------------------------------------
# Allow-list (segment.events)


@pytest.mark.parametrize(
    ("allow", "joined", "order_paid"),
    [
        (None, True, True),
        ((), False, False),
        (("Customer Loyalty Tier Joined",), True, False),
        (("customer loyalty tier joined",), True, False),
        (("customer.loyalty.tier.joined",), True, False),
        (("EVENTS.CUSTOMER.LOYALTY.TIER.JOINED",), True, False),
        (("customer.loyalty.*",), True, False),
        (("customer.*",), True, True),
        (("Customer Order Paid", "customer.loyalty.tier.joined"), True, True),
        (("Customer Loyalty",), False, False),
    ],
)
def test_allow_list(allow: tuple[str, ...] | None, joined: bool, order_paid: bool) -> None:
    connection = make_connection(extra_events=allow)
    for vf_type, expected in (("customer.loyalty.tier.joined", joined), ("customer.order.paid", order_paid)):
        assert event_allowed(vf_type, connection) is expected
        if expected:
            assert track_for(vf_type, connection=connection)["userId"]
        else:
            with pytest.raises(SkipEvent) as skipped:
                track_for(vf_type, connection=connection)
            assert skipped.value.reason == "not_allowed"
    # The catalog is never limited by the list.
    for vf_type in ("customer.rewarded", "redemption.succeeded"):
        assert is_catalog_type(vf_type) and event_allowed(vf_type, connection)
        assert track_for(vf_type, connection=connection)["event"] in SPEC_CATALOG


# --------------------------------------------------------------------------------------------
# Flattening


def test_flatten_folds_nested_objects_and_summarises_arrays() -> None:
    flat = flatten_object(
        {
            "id": "ord_1",
            "amount": 100,
            "paid": True,
            "note": None,
            "customer": {"id": "cust_nested", "address": {"city": "Nottingham", "line_2": None}},
            "metadata": {"card": ["Other"], "deep": {"a": {"b": {"c": {"v": 1, "d": {"e": 1}}}}}},
            "items": [{"id": "ordli_1", "price": 1}, {"id": "ordli_2"}, {"sku": "x"}],
            "lines": [{"price": 1}],
            "mixed": [1, {"id": "m_1"}],
            "tags": ["a", None, 3],
            "config": {"points": {"from": 1, "to": 2}},
        }
    )
    assert flat == {
        "id": "ord_1",
        "amount": 100,
        "paid": True,
        "items_count": 3,
        "items_ids": ["ordli_1", "ordli_2"],
        "lines_count": 1,
        "mixed_count": 2,
        "mixed_ids": ["m_1"],
        "tags": ["a", None, 3],
        "customer_id": "cust_nested",
        "customer_address_city": "Nottingham",
        "metadata_card": ["Other"],
        "metadata_deep_a_b_c_v": 1,  # folding stops at MAX_FOLD_DEPTH: d.e is not sent
        "config_points_from": 1,
        "config_points_to": 2,
    }


def test_flatten_exact_output() -> None:
    flat = flatten_object(
        {
            "id": "ord_1",
            "customer_id": "cust_direct",
            "customer": {"id": "cust_nested", "name": "N"},
            "metadata": {"card": ["Other"], "region": "US", "empty": {}},
            "items": [{"id": "ordli_1"}, {"sku": "x"}],
            "none": [],
            "redemptions": {"r_0e2905d4e6985a04b5": {"date": "2024-01-18"}},
            "order_details": {"gift": {"wrap": True}},
        }
    )
    assert flat == {
        "id": "ord_1",
        "customer_id": "cust_direct",
        "items_count": 2,
        "items_ids": ["ordli_1"],
        "customer_name": "N",
        "metadata_card": ["Other"],
        "metadata_region": "US",
        "redemptions_count": 1,
        "redemptions_ids": ["r_0e2905d4e6985a04b5"],
        "order_details_gift_wrap": True,  # an ordinary key, not an id-keyed collection
    }


def test_flatten_reduces_copies_of_objects_sent_in_full() -> None:
    objects = [
        ("order", {"id": "ord_1", "amount": 5}),
        (
            "redemption",
            {"id": "r_1", "order": {"id": "ord_1", "amount": 5}, "customer": {"id": "cust_1", "name": "X"}},
        ),
        ("reward", {"id": "rew_1", "voucher": {"id": "v_other", "code": "C"}}),
        ("vouchers", [{"id": "v_1"}, {"id": "v_2"}]),
        ("points", 70),
        ("nothing", None),
        ("empty", {}),
    ]
    known = {
        "order": "ord_1",
        "redemption": "r_1",
        "reward": "rew_1",
        "voucher": "v_mine",
        "customer": "cust_1",
    }
    assert flatten_properties(objects, known) == {
        "order": {"id": "ord_1", "amount": 5},
        "redemption": {"id": "r_1", "order_id": "ord_1", "customer_id": "cust_1"},
        "reward": {"id": "rew_1", "voucher_id": "v_other", "voucher_code": "C"},  # another voucher: kept
        "vouchers_count": 2,
        "vouchers_ids": ["v_1", "v_2"],
        "points": 70,
    }


# --------------------------------------------------------------------------------------------
# Size


def _huge_example() -> dict[str, Any]:
    example = load_example("customer.redemption.succeeded")
    example["customer"]["name"] = "Jack " + "W" * 1000
    example["order"]["items"] = [
        {"id": f"ordli_{i:06d}", "product": {"name": "x" * 200}} for i in range(5000)
    ]
    example["order"]["metadata"] = {f"key_{i:04d}": "ü" * 120 for i in range(1500)}
    example["campaign"]["description"] = "d" * 100_000
    example["voucher"]["metadata"] = {"notes": "n" * 20_000, "codes": [f"CODE-{i}" for i in range(3000)]}
    example["redemption"]["metadata"] = {"blob": {"nested": "b" * 50_000}}
    return example


def test_huge_payload_stays_under_32_kb() -> None:
    body = wrap(_huge_example(), "customer.redemption.succeeded", V2024, "evcus_big", CREATED_AT)
    assert len(json.dumps(body)) > 500_000
    track = map_webhook(env.parse_webhook(body), CONNECTION)
    size = serialized_size(track)
    assert size <= TRACK_BYTES_BUDGET < SEGMENT_MAX_EVENT_BYTES
    assert len(json.dumps(track, separators=(",", ":"), ensure_ascii=False).encode()) <= size
    # Identity and protected fields survive; strings were shortened; fields dropped are reported.
    assert track["userId"] == "jck-wbhk"
    assert track["messageId"] == message_id_for("acme-eu", "evcus_big")
    assert track["properties"]["customer"]["name"] == ("Jack " + "W" * 1000)[:256]
    assert track["properties"]["campaign"]["id"] == "camp_iRMdcq07g9W4dOSRXuTovupi"
    assert track["properties"]["voucherify_event_type"] == "customer.redemption.succeeded"
    note = track["context"]["truncation"]
    assert note["strings_shortened"] > 0 and note["lists_shortened"] > 0 and note["fields_dropped"] > 0
    assert track["properties"]["order"]["items_count"] == 5000
    # Deterministic: the same input gives the same call.
    again = map_webhook(env.parse_webhook(copy.deepcopy(body)), CONNECTION)
    assert again == track


def test_slightly_large_payload_only_shortens_strings() -> None:
    example = load_example("customer.redemption.succeeded")
    example["voucher"]["metadata"] = {"long": "L" * 40_000}
    track = map_webhook(
        env.parse_webhook(wrap(example, "customer.redemption.succeeded", V2024, "evcus_1", CREATED_AT)),
        CONNECTION,
    )
    assert track["properties"]["voucher"]["metadata_long"] == "L" * 256
    assert track["context"]["truncation"] == {"strings_shortened": 1, "lists_shortened": 0}
    assert serialized_size(track) <= TRACK_BYTES_BUDGET


def test_small_calls_are_untouched() -> None:
    for name in fixture_names():
        try:
            track = track_for(name, event_id="evcus_1")
        except SkipEvent:
            continue
        assert "truncation" not in track["context"], name


def test_fit_track_drops_largest_first_and_never_protected() -> None:
    track: dict[str, Any] = {
        "type": "track",
        "userId": "u",
        "properties": {
            "customer": {"id": "c", "name": "n" * 200},
            "a": {"big": "x" * 200, "small": "y"},
            "b": ["z" * 200] * 50,
            "c": 1,
        },
        "context": {},
    }
    fitted = fit_track(track, budget=1800, protected=frozenset({("customer",)}))
    assert fitted is not track and track["properties"]["a"]["big"] == "x" * 200  # input untouched
    assert fitted["properties"]["customer"] == {"id": "c", "name": "n" * 200}
    assert "b" not in fitted["properties"]  # the largest field went first
    assert fitted["properties"]["a"] == {"big": "x" * 200, "small": "y"}
    assert fitted["context"]["truncation"]["dropped"] == ["b"]
    assert serialized_size(fitted) <= 1800
    with pytest.raises(MappingError):
        fit_track({"userId": "u" * 5000, "properties": {}, "context": {}}, budget=1000)


# --------------------------------------------------------------------------------------------
# Outbound item


def test_to_outbound() -> None:
    track = track_for("customer.rewarded", event_id="evcus_out")
    item = to_outbound(track, CONNECTION)
    assert item.method == "POST"
    assert item.path == "/v1/batch"
    assert item.action == "segment_track"
    assert (
        item.idempotency_key
        == item.message_id
        == track["messageId"]
        == message_id_for("acme-eu", "evcus_out")
    )
    assert item.customer == "jck-wbhk"
    assert item.event_time == CREATED_AT
    assert item.body == track
    assert json.loads(json.dumps(item.to_dict()))["body"] == track  # JSON-safe for the retry store


def _all_tracks() -> Iterator[Mapping[str, Any]]:
    for name in fixture_names():
        for version in VERSIONS:
            try:
                track = track_for(name, version, "evcus_any")
            except SkipEvent:
                continue
            yield track


def test_no_call_ever_has_an_anonymous_id_or_exceeds_limits() -> None:
    tracks = list(_all_tracks())
    assert len(tracks) > 100
    for track in tracks:
        assert "anonymousId" not in track
        assert track["userId"]
        assert len(track["messageId"]) <= 100
        assert serialized_size(track) <= TRACK_BYTES_BUDGET
