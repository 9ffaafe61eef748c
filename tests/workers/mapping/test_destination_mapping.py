"""Every data file in ``tests/mapping_cases/destination/`` through ``map_event``.

A data file holds one case::

    {
      "description": "...",
      "connection": {"mode": "segmentio" | "rest", "destination": {...DestinationSettings...},
                     "id"?, "app_id"?, "secret_key"?, "region"?, "api_url"?},
      "event": {...a Segment event...},
      "expected": [{"method", "path", "headers", "body", and optionally "idempotency_key", "action",
                    "customer", "event_time", "message_id"}]
        | "expected_error": "MappingError message" | "expected_skip": "SkipEvent reason",
      "expected_auth_headers"?: {...}, "expected_base_url"?: "..."
    }

Every case says where its expected side comes from (``provenance``):

* ``"source": "reference"`` cases (all in ``segmentio`` mode) have their expected side written by
  ``tools/reference/generate.js``, which runs Segment's published Voucherify (Actions) destination
  on the case's event and settings (``make reference-cases``; not run by CI).  Their bodies must
  come out byte for byte (same keys, same order).  ``actions-*.json`` are Segment's own example
  inputs, regenerated that way.
* every other case is written by hand from the SPEC and Voucherify's OpenAPI (``rest`` mode, the
  classic settings, the reference's accidents that are not reproduced); its provenance names
  the rule it checks (``"hand: SPEC 3.3 ..."``).

Header values ``$USER_AGENT`` and ``$CHANNEL`` stand for the connector's own (they change with
the version).
"""

from __future__ import annotations

import copy
import dataclasses
import json
from pathlib import Path
from typing import Any

import pytest

from connector import CHANNEL, USER_AGENT, regions
from connector.config import Connection, DestinationSettings, VoucherifySettings
from connector.errors import MappingError, SkipEvent
from connector.secrets import Secret
from tests.support import TESTS_DIR
from workers.mapping.destination import map_event
from workers.mapping.destination.metadata import CustomerMetadataSchema, filter_request
from workers.mapping.destination.routing import compiled_for
from workers.mapping.destination.subscriptions import PRESET_NAMES, validate_subscription
from workers.outbound import OutboundRequest
from workers.targets.voucherify import auth_headers

CASES_DIR = TESTS_DIR / "mapping_cases" / "destination"
CASE_FILES = sorted(CASES_DIR.glob("*.json"))
DEFAULT_TIMESTAMP = "2024-05-01T12:00:00.000Z"
PLACEHOLDERS = {"$USER_AGENT": USER_AGENT, "$CHANNEL": CHANNEL}
_DESTINATION_FIELDS = {f.name for f in dataclasses.fields(DestinationSettings)}


def load_case(path: Path) -> dict[str, Any]:
    case: dict[str, Any] = json.loads(path.read_text(encoding="utf-8"))
    return case


def build_connection(spec: dict[str, Any]) -> Connection:
    """A Connection from a case's small dict (defaults: the reference's settings, region us1)."""
    mode = spec.get("mode", "rest")
    region = spec.get("region", "us1") if not spec.get("api_url") else None
    api_url = spec.get("api_url")
    vf = VoucherifySettings(
        app_id=Secret(spec.get("app_id", "voucherifyApiKey")),
        secret_key=Secret(spec.get("secret_key", "voucherifySecretKey")),
        region=region,
        api_url=api_url,
        mode=mode,
        base_url=regions.voucherify_base_url(region, mode, api_url),
        queue=regions.voucherify_queue(region, api_url),
    )
    dest_spec = dict(spec.get("destination", {}))
    mappings = tuple(dest_spec.pop("mappings", ()))
    for raw in mappings:
        assert validate_subscription(raw) == [], f"invalid subscription in the case: {raw}"
    for names in ("track_events_filter", "integration_names", "consent_categories"):
        if names in dest_spec:
            dest_spec[names] = tuple(dest_spec[names])
    for table in ("identify_mapping", "track_mapping"):
        if table in dest_spec:  # written as a JSON object, in order
            dest_spec[table] = tuple(dest_spec[table].items())
    unknown = set(dest_spec) - _DESTINATION_FIELDS
    assert not unknown, f"unknown destination settings {sorted(unknown)}"
    dest = DestinationSettings(**dest_spec, mappings=mappings)
    return Connection(id=spec.get("id", "test"), write_keys=(), voucherify=vf, destination=dest)


def normalize(event: dict[str, Any], case_id: str) -> dict[str, Any]:
    """What the ingest guarantees (messageId, timestamp, receivedAt), for copied reference inputs."""
    out = dict(event)
    out.setdefault("messageId", f"msg-{case_id}")
    out.setdefault("timestamp", DEFAULT_TIMESTAMP)
    out.setdefault("receivedAt", DEFAULT_TIMESTAMP)
    return out


def run_case(path: Path) -> tuple[dict[str, Any], list[OutboundRequest]]:
    """Map the case's event; returns (case, requests). Errors and skips propagate."""
    case = load_case(path)
    connection = build_connection(case["connection"])
    event = normalize(case["event"], path.stem)
    return case, map_event(event, connection)


def _expand(headers: dict[str, str]) -> dict[str, str]:
    return {k: PLACEHOLDERS.get(v, v) for k, v in headers.items()}


@pytest.mark.parametrize("path", CASE_FILES, ids=[p.name for p in CASE_FILES])
def test_destination_case(path: Path) -> None:
    case = load_case(path)
    connection = build_connection(case["connection"])
    event = normalize(case["event"], path.stem)
    before = copy.deepcopy(event)
    outcomes = [k for k in ("expected", "expected_error", "expected_skip") if k in case]
    assert len(outcomes) == 1, "a case has exactly one of expected / expected_error / expected_skip"
    if case.get("source") == "reference":
        _check_reference_settings(case, connection)

    if "expected_auth_headers" in case:
        assert auth_headers(connection.voucherify) == case["expected_auth_headers"]
    if "expected_base_url" in case:
        assert connection.voucherify.base_url == case["expected_base_url"]

    if "expected_error" in case:
        with pytest.raises(MappingError) as caught:
            map_event(event, connection)
        assert str(caught.value) == case["expected_error"]
    elif "expected_skip" in case:
        with pytest.raises(SkipEvent) as skipped:
            map_event(event, connection)
        assert skipped.value.reason == case["expected_skip"]
    else:
        requests = map_event(event, connection)
        requests = _keep_to_metadata_schema(case, connection, requests)
        expected = case["expected"]
        assert len(requests) == len(expected), [r.to_dict() for r in requests]
        for got, want in zip(requests, expected, strict=True):
            assert got.method == want["method"]
            assert got.path == want["path"]
            assert got.headers == _expand(want["headers"])
            assert got.body == want["body"]
            if connection.voucherify.mode == "segmentio":
                # "Exactly what the Actions destination sends": same keys in the same order.
                assert json.dumps(got.body) == json.dumps(want["body"])
            for key in ("idempotency_key", "action", "customer", "event_time", "message_id"):
                if key in want:
                    assert getattr(got, key) == want[key], key
            # Descriptions are stored in retry/dead-letter records: no credential may be in them.
            text = json.dumps(got.to_dict())
            for secret in (connection.voucherify.app_id.reveal(), connection.voucherify.secret_key.reveal()):
                assert secret not in text
            assert OutboundRequest.from_dict(json.loads(text)) == got
            assert got.idempotency_key.startswith(f"{connection.id}:v:{event['messageId']}:{got.action}")
            if got.headers.get("Idempotency-Key") is not None:
                assert got.headers["Idempotency-Key"] == got.idempotency_key
        keys = [r.idempotency_key for r in requests]
        assert len(set(keys)) == len(keys), "two requests of one event share an idempotency key"

    assert event == before, "map_event must not modify the event"


def _keep_to_metadata_schema(
    case: dict[str, Any], connection: Connection, requests: list[OutboundRequest]
) -> list[OutboundRequest]:
    """With ``metadata_schema = "defined"``, what the worker sends: the requests kept to the
    schema the case gives (as Voucherify lists it), the dropped keys as the case expects."""
    listing = case.get("metadata_schema")
    if listing is None or connection.destination.metadata_schema != "defined":
        assert "expected_dropped" not in case
        return requests
    schema = CustomerMetadataSchema.from_listing(listing)
    kept, dropped = [], []
    for request in requests:
        filtered, lost = filter_request(request, schema)
        kept.append(filtered)
        dropped.extend(list(pair) for pair in lost)
    assert dropped == case.get("expected_dropped", [])
    return kept


def _check_reference_settings(case: dict[str, Any], connection: Connection) -> None:
    """The reference ran the subscriptions this connection has for the event's type."""
    assert case["provenance"].startswith("reference @segment/actions-core "), case["provenance"]
    assert connection.voucherify.mode == "segmentio"
    event_type = case["event"].get("type")
    routes = [r.name for r in compiled_for(connection).routes.get(event_type, ())]
    ran = {s["name"] for s in case["reference"]["subscriptions"]}
    for name in routes:
        assert name in ran, f"our subscription {name!r} did not run on the reference"
    if event_type in PRESET_NAMES:
        # The preset of this type is on in the reference exactly when it is ours too.
        assert (PRESET_NAMES[event_type] in ran) == (routes == [PRESET_NAMES[event_type]])


def test_every_case_says_where_its_expected_side_comes_from() -> None:
    for path in CASE_FILES:
        case = load_case(path)
        provenance = case.get("provenance", "")
        if case.get("source") == "reference":
            assert provenance.startswith("reference @segment/actions-core "), path.name
            assert "reference" in case, path.name
        else:
            assert provenance.startswith("hand: SPEC "), f"{path.name}: {provenance!r}"  # names its rule


def test_each_accident_not_reproduced_differs_from_the_reference() -> None:
    """Hand cases marked ``deviation`` carry what the reference does (written by the generator):
    the connector's expected side must really differ from it, or the case claims nothing."""
    deviations = [load_case(p) for p in CASE_FILES if "deviation" in load_case(p)]
    assert len(deviations) >= 9
    for case in deviations:
        reference = case["reference"]
        theirs = reference.get("bodies", reference.get("error"))
        assert theirs is not None, case["description"]
        ours = [r["body"] for r in case["expected"]] if "expected" in case else case.get("expected_error")
        assert ours != theirs, case["description"]


def test_every_reference_pair_is_a_case() -> None:
    """The 11 pairs of Segment's reference are all present (actions-*.json)."""
    ids = {load_case(p).get("reference_id") for p in CASE_FILES if p.stem.startswith("actions-")}
    assert ids == {
        "identify-full",
        "identify-email-only",
        "identify-coercion-null-empty",
        "identify-anonymous-only",
        "track-referral-metadata",
        "track-context-email",
        "page-template",
        "screen-loyalty",
        "group-traits",
        "group-missing-group-id",
        "custom-mapping-customer-object",
    }


def test_every_rule_is_covered_in_both_modes() -> None:
    modes_by_rule: dict[str, set[str]] = {}
    for path in CASE_FILES:
        case = load_case(path)
        modes_by_rule.setdefault(case.get("rule", ""), set()).add(case["connection"].get("mode", "rest"))
    for rule, modes in modes_by_rule.items():
        if rule in ("reference", "rest shape", "group", "metadata schema"):
            # segmentio-only by nature (the reference), or rest-only by nature (Voucherify's
            # segmentio endpoint keeps to the metadata schema by itself: seed 003).
            continue
        assert modes == {"rest", "segmentio"}, f"rule {rule!r} is only covered in {modes}"
