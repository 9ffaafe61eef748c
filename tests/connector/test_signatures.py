"""Webhook signatures: Voucherify (HMAC-SHA256, raw or compact JSON) and Segment (HMAC-SHA1, raw)."""

from __future__ import annotations

import json

import pytest

from connector.secrets import Secret
from connector.signatures import (
    _js_number,
    segment_signature,
    segment_signature_valid,
    voucherify_signature,
    voucherify_signature_valid,
)
from tests.support.webhooks import dumps, load_example, sign, sign_segment, signed_request, wrap

SECRET = "secretKey"

# SPEC 4.1 vectors.
VECTOR_JSON = (b'{"a":1}', "a17d2ac229d1ebbb5f10e839c7985c4818e5986eab297f7e5979196d4d7d3ed2")
VECTOR_TEXT = (b"  message  ", "53ff92957e1427ce23ad5bda9d0c5f2f4ff384d0806b83eeacb510c842d3a358")
# The same inputs under HMAC-SHA1 (Segment Webhooks destination), computed independently.
SEGMENT_VECTOR_JSON = (b'{"a":1}', "26db5a00adea7dbd9e2b0706e17ee9136b694a2b")
SEGMENT_VECTOR_TEXT = (b"  message  ", "2e19d6e40cef7baadf679f31a18d0e8e9edb3eb5")


# --------------------------------------------------------------------------------------------
# Voucherify


@pytest.mark.parametrize(("raw", "digest"), [VECTOR_JSON, VECTOR_TEXT])
def test_spec_vectors(raw: bytes, digest: str) -> None:
    assert voucherify_signature_valid(raw, digest, SECRET)
    assert voucherify_signature(raw, SECRET) == digest
    assert sign(raw, SECRET) == digest


def test_header_is_case_and_whitespace_tolerant() -> None:
    raw, digest = VECTOR_JSON
    assert voucherify_signature_valid(raw, digest.upper(), SECRET)
    assert voucherify_signature_valid(raw, f"  {digest}\t", SECRET)


def test_secret_object_is_accepted() -> None:
    raw, digest = VECTOR_JSON
    assert voucherify_signature_valid(raw, digest, Secret(SECRET))


@pytest.mark.parametrize("header", [None, "", "   "])
def test_missing_header_is_invalid(header: str | None) -> None:
    assert not voucherify_signature_valid(VECTOR_JSON[0], header, SECRET)


def test_wrong_secret_is_invalid() -> None:
    raw, digest = VECTOR_JSON
    assert not voucherify_signature_valid(raw, digest, "secretKey2")
    assert not voucherify_signature_valid(raw, digest, "")


@pytest.mark.parametrize(
    "tampered", [b'{"a":2}', b'{"a":1,"b":1}', b'{"a":1.5}', b'{"a":"1"}', b'{"A":1}', b"[1]", b""]
)
def test_tampered_body_is_invalid(tampered: bytes) -> None:
    assert not voucherify_signature_valid(tampered, VECTOR_JSON[1], SECRET)


@pytest.mark.parametrize(
    "header",
    [
        "not-a-signature",
        VECTOR_JSON[1][:-1],
        VECTOR_JSON[1] + "0",
        "sha256=" + VECTOR_JSON[1],
        "é" * 64,  # non-ASCII must not make compare_digest raise
        "a" * 10_000,
        VECTOR_TEXT[1],  # a valid signature of another body
    ],
)
def test_malformed_or_foreign_headers_are_invalid(header: str) -> None:
    assert not voucherify_signature_valid(VECTOR_JSON[0], header, SECRET)


def test_whitespace_outside_strings_does_not_matter() -> None:
    # By design (SPEC 4.1): re-indenting a signed body keeps it valid...
    assert voucherify_signature_valid(b' {\n "a" : 1 }\n', VECTOR_JSON[1], SECRET)
    # ...and so does the spelling of an equal number (JSON.stringify writes 1.0 as 1)...
    assert voucherify_signature_valid(b'{"a": 1.0}', VECTOR_JSON[1], SECRET)
    # ...but whitespace inside a string is content.
    digest = sign(b'{"a":"x y"}', SECRET)
    assert not voucherify_signature_valid(b'{"a":"x  y"}', digest, SECRET)


def test_pretty_printed_body_signed_over_its_compact_form_is_accepted() -> None:
    body = wrap(
        load_example("customer.redemption.succeeded"),
        "customer.redemption.succeeded",
        "2024-01-01",
        "evcus_1",
        "2024-03-13T17:35:58.600Z",
    )
    raw, headers = signed_request(body, SECRET, pretty=True)
    assert b"\n  " in raw  # really re-indented
    header = headers["x-voucherify-signature"]
    assert voucherify_signature_valid(raw, header, SECRET)
    # The web passes the body it already parsed; the result must be the same.
    assert voucherify_signature_valid(raw, header, SECRET, json.loads(raw))
    assert not voucherify_signature_valid(raw, header, "other-secret")


def test_compact_form_keeps_key_order() -> None:
    raw = b'{\n  "b": 1,\n  "a": 2\n}'
    assert voucherify_signature_valid(raw, sign(b'{"b":1,"a":2}', SECRET), SECRET)
    assert not voucherify_signature_valid(raw, sign(b'{"a":2,"b":1}', SECRET), SECRET)


def test_compact_form_of_a_tampered_body_is_invalid() -> None:
    original = {"customer": {"source_id": "jck-wbhk"}, "amount": 100}
    digest = sign(dumps(original), SECRET)
    tampered = json.dumps({"customer": {"source_id": "jck-wbhk"}, "amount": 1}, indent=2).encode()
    assert not voucherify_signature_valid(tampered, digest, SECRET)


def test_non_ascii_raw_body() -> None:
    body = {"customer": {"name": "Zażółć gęślą jaźń", "city": "東京", "emoji": "🎉"}}
    raw = dumps(body)
    assert voucherify_signature_valid(raw, sign(raw, SECRET), SECRET)


def test_non_ascii_escaped_in_transit_is_accepted_over_the_unescaped_compact_form() -> None:
    body = {"customer": {"name": "Zażółć gęślą jaźń", "city": "東京", "emoji": "🎉"}}
    digest = sign(dumps(body), SECRET)  # what Voucherify signs: UTF-8, unescaped
    escaped = json.dumps(body, indent=1, ensure_ascii=True).encode()
    assert b"\\u" in escaped
    assert voucherify_signature_valid(escaped, digest, SECRET)


def test_signature_over_an_escaped_compact_form_is_not_the_spec_form() -> None:
    # Only the unescaped compact form is accepted besides the raw bytes.
    body = {"name": "東京"}
    digest = sign(json.dumps(body, separators=(",", ":"), ensure_ascii=True).encode(), SECRET)
    pretty = json.dumps(body, indent=2, ensure_ascii=False).encode()
    assert not voucherify_signature_valid(pretty, digest, SECRET)


def test_floats_compared_in_javascript_form() -> None:
    # Voucherify signs JSON.stringify(payload): 1e-7 and 0.000001, not Python's 1e-07 and 1e-06.
    js_compact = b'{"a":1e-7,"b":0.000001,"c":1.5,"d":1e+21,"e":100}'
    pretty = b'{\n  "a": 1e-07,\n  "b": 1e-06,\n  "c": 1.5,\n  "d": 1e+21,\n  "e": 100\n}'
    assert voucherify_signature_valid(pretty, sign(js_compact, SECRET), SECRET)


@pytest.mark.parametrize(
    ("value", "js"),
    [
        (1e-7, "1e-7"),
        (0.000001, "0.000001"),
        (1.5, "1.5"),
        (1e21, "1e+21"),
        (1e20, "100000000000000000000"),
        (123456789012345680000.0, "123456789012345680000"),
        (-0.0, "0"),
        (1.5e300, "1.5e+300"),
        (5e-324, "5e-324"),
        (100.0, "100"),
        (0.1, "0.1"),
        (2.5e-7, "2.5e-7"),
        (-1234.5678, "-1234.5678"),
    ],
)
def test_javascript_number_format(value: float, js: str) -> None:
    # Expected values are Node's JSON.stringify output.
    assert _js_number(value) == js


def test_body_that_is_not_json_is_checked_raw_only() -> None:
    raw = b"{not json"
    assert voucherify_signature_valid(raw, sign(raw, SECRET), SECRET)
    assert not voucherify_signature_valid(raw, sign(b"{not json}", SECRET), SECRET)


def test_absurdly_deep_body_never_raises() -> None:
    raw = b"[" * 5000 + b"]" * 5000
    assert voucherify_signature_valid(raw, sign(raw, SECRET), SECRET)
    assert not voucherify_signature_valid(raw, sign(b"[]", SECRET), SECRET)
    deep: list[object] = []
    node = deep
    for _ in range(5000):
        child: list[object] = []
        node.append(child)
        node = child
    assert not voucherify_signature_valid(b"[]", sign(b"[[]]", SECRET), SECRET, deep)


# --------------------------------------------------------------------------------------------
# Segment


@pytest.mark.parametrize(("raw", "digest"), [SEGMENT_VECTOR_JSON, SEGMENT_VECTOR_TEXT])
def test_segment_vectors(raw: bytes, digest: str) -> None:
    assert segment_signature_valid(raw, digest, SECRET)
    assert segment_signature_valid(raw, digest.upper(), Secret(SECRET))
    assert segment_signature(raw, SECRET) == digest
    assert sign_segment(raw, SECRET) == digest


def test_segment_rejects_wrong_secret_tampering_and_missing_header() -> None:
    raw, digest = SEGMENT_VECTOR_JSON
    assert not segment_signature_valid(raw, digest, "other")
    assert not segment_signature_valid(raw, digest, "")
    assert not segment_signature_valid(b'{"a":2}', digest, SECRET)
    assert not segment_signature_valid(raw, None, SECRET)
    assert not segment_signature_valid(raw, "", SECRET)
    assert not segment_signature_valid(raw, "zz" * 20, SECRET)
    # A SHA-256 signature is not a SHA-1 one.
    assert not segment_signature_valid(raw, VECTOR_JSON[1], SECRET)


def test_segment_signs_raw_bytes_only() -> None:
    body = {"type": "track", "event": "Order Completed", "userId": "u1"}
    pretty = json.dumps(body, indent=2).encode()
    assert not segment_signature_valid(pretty, sign_segment(dumps(body), SECRET), SECRET)
    assert segment_signature_valid(pretty, sign_segment(pretty, SECRET), SECRET)


def test_signing_helpers_refuse_an_empty_secret() -> None:
    with pytest.raises(ValueError):
        voucherify_signature(b"x", "")
    with pytest.raises(ValueError):
        segment_signature(b"x", "")
