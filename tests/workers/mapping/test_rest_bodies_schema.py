"""Every REST body the destination data files produce validates against Voucherify's OpenAPI
request schemas (``CustomersCreateRequestBody``, ``EventsCreateRequestBody``), allowing only the
``null`` values that clear a customer attribute (SPEC 3.5).

The schemas do not forbid unknown keys, so the bodies' top-level keys are also checked against
the properties Voucherify documents (no ``first_name``, ``last_name`` or ``type`` may leak).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from sandbox.schemas import validation_errors
from tests.workers.mapping.test_destination_mapping import CASE_FILES, load_case, run_case

SCHEMA_BY_PATH = {"/v1/customers": "CustomersCreateRequestBody", "/v1/events": "EventsCreateRequestBody"}
DOCUMENTED_KEYS = {
    "CustomersCreateRequestBody": {
        "source_id",
        "name",
        "description",
        "email",
        "phone",
        "birthdate",
        "address",
        "metadata",
    },
    "EventsCreateRequestBody": {"event", "customer", "referral", "loyalty", "metadata"},
}
ADDRESS_KEYS = {"city", "state", "line_1", "line_2", "country", "postal_code"}

REST_CASES = [
    p
    for p in CASE_FILES
    if load_case(p)["connection"].get("mode", "rest") == "rest" and "expected" in load_case(p)
]


def _bodies(path: Path) -> list[tuple[str, Any]]:
    _, requests = run_case(path)
    assert requests, "a rest case with `expected` produces requests"
    return [(SCHEMA_BY_PATH[r.path], r.body) for r in requests]


@pytest.mark.parametrize("path", REST_CASES, ids=[p.name for p in REST_CASES])
def test_rest_body_validates(path: Path) -> None:
    for schema, body in _bodies(path):
        assert validation_errors(schema, body, allow_null_clearing=True) == []
        assert set(body) <= DOCUMENTED_KEYS[schema], sorted(set(body) - DOCUMENTED_KEYS[schema])
        if schema == "CustomersCreateRequestBody":
            assert set(body.get("address") or {}) <= ADDRESS_KEYS
            for key in ("address", "metadata"):
                assert body.get(key, None) != {}, f"empty {key} must be left out"
        else:
            # The event's customer is Voucherify's `Customer` (ids + CustomerBase): the classic
            # track tables send the customer's attributes with the event.
            customer = body["customer"]
            assert set(customer) <= DOCUMENTED_KEYS["CustomersCreateRequestBody"], sorted(customer)
            assert set(customer.get("address") or {}) <= ADDRESS_KEYS
            for key in ("address", "metadata"):
                assert customer.get(key, None) != {}, f"empty customer {key} must be left out"
            for key in ("referral", "loyalty", "metadata"):
                assert body.get(key, None) != {}, f"empty {key} must be left out"


def test_there_are_rest_cases_for_both_endpoints() -> None:
    schemas = {schema for path in REST_CASES for schema, _ in _bodies(path)}
    assert schemas == set(SCHEMA_BY_PATH.values())


def test_null_clearing_is_the_only_exception() -> None:
    """The bodies that clear attributes with null are refused by the strict schema: the
    exception is real, and limited to nulls."""
    strict_failures = 0
    for path in REST_CASES:
        for schema, body in _bodies(path):
            errors = validation_errors(schema, body, allow_null_clearing=False)
            if errors:
                strict_failures += 1
                assert all("None is not of type" in e for e in errors), errors
    assert strict_failures > 0
