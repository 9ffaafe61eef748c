"""Voucherify request-body schemas (JSON Schema 2020-12) and cached validators.

The bundle ``schemas/voucherify_requests.json`` is generated from Voucherify's OpenAPI files by
``sandbox/extract_schemas.py``; nothing here reads anything outside the project.

Null clearing: the connector sends ``null`` to clear a customer attribute (SPEC 3.5). Voucherify's
schema types those attributes as plain strings, so with ``allow_null_clearing=True`` (the default)
the validators accept ``null`` for the customer attributes listed in ``CLEARABLE_ATTRIBUTES`` and
for every field of ``address``.
"""

from __future__ import annotations

import copy
import functools
import json
from pathlib import Path
from typing import Any

from jsonschema import Draft202012Validator
from jsonschema.protocols import Validator

BUNDLE_PATH = Path(__file__).with_name("schemas") / "voucherify_requests.json"
NAMES = ("CustomersCreateRequestBody", "EventsCreateRequestBody", "CustomersBulkAsyncRequestBody")
CLEARABLE_ATTRIBUTES = (
    "name",
    "description",
    "email",
    "phone",
    "birthday",
    "birthdate",
    "address",
    "metadata",
)
# Keeps a 400 answer readable when a large body is wrong everywhere.
MAX_ERRORS = 50
MAX_ERROR_CHARS = 300


def make_nullable(schema: dict[str, Any]) -> dict[str, Any]:
    """Return ``schema`` widened to also accept ``null`` (OpenAPI 3.0 ``nullable: true``)."""
    schema = dict(schema)
    if "enum" in schema and None not in schema["enum"]:
        schema["enum"] = [*schema["enum"], None]
    if "type" in schema:
        types = schema["type"] if isinstance(schema["type"], list) else [schema["type"]]
        if "null" not in types:
            schema["type"] = [*types, "null"]
        return schema
    # No "type" to widen (e.g. a bare allOf): null is an alternative to the whole schema.
    return {"anyOf": [schema, {"type": "null"}]}


@functools.cache
def load_bundle() -> dict[str, Any]:
    bundle: dict[str, Any] = json.loads(BUNDLE_PATH.read_text(encoding="utf-8"))
    return bundle


@functools.cache
def _bundle(allow_null_clearing: bool) -> dict[str, Any]:
    bundle = load_bundle()
    if not allow_null_clearing:
        return bundle
    bundle = copy.deepcopy(bundle)
    # Customer (and the customer embedded in events) all go through CustomerBase.
    props = bundle["$defs"]["CustomerBase"]["properties"]
    for attr in CLEARABLE_ATTRIBUTES:
        props[attr] = make_nullable(props[attr])
    address_props = props["address"].get("properties", {})
    for field in address_props:
        address_props[field] = make_nullable(address_props[field])
    return bundle


@functools.cache
def request_validator(name: str, allow_null_clearing: bool = True) -> Validator:
    """A validator for one request body: one of ``NAMES``. Cached per (name, option)."""
    if name not in NAMES:
        raise KeyError(f"unknown request schema {name!r}; known: {', '.join(NAMES)}")
    bundle = _bundle(allow_null_clearing)
    root = {
        "$schema": bundle["$schema"],
        "$id": bundle["$id"],
        "$ref": f"#/$defs/{name}",
        "$defs": bundle["$defs"],
    }
    validator: Validator = Draft202012Validator(root, format_checker=Draft202012Validator.FORMAT_CHECKER)
    return validator


def validation_errors(name: str, body: Any, allow_null_clearing: bool = True) -> list[str]:
    """Human-readable errors (``"<json path>: <message>"``), empty when ``body`` is valid."""
    validator = request_validator(name, allow_null_clearing)
    errors = sorted(validator.iter_errors(body), key=lambda e: (list(map(str, e.absolute_path)), e.message))
    out: list[str] = []
    for error in errors[:MAX_ERRORS]:
        text = f"{error.json_path}: {error.message}"
        out.append(text if len(text) <= MAX_ERROR_CHARS else text[: MAX_ERROR_CHARS - 3] + "...")
    if len(errors) > MAX_ERRORS:
        out.append(f"... and {len(errors) - MAX_ERRORS} more errors")
    return out
