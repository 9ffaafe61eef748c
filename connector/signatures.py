"""Webhook signature checks (SPEC 2.2 and 4.1), used by the web process before anything is enqueued.

Both checks compute the expected hex digest and compare it with :func:`hmac.compare_digest`, so the
time taken does not reveal how much of a forged signature was right.  A missing header, an empty
secret or a header that is not even hex is simply "not valid": callers answer ``401`` either way
and never learn (or log) why.

Voucherify (a Node.js service) signs ``JSON.stringify(payload)``.  What reaches us is normally
those exact bytes, but proxies and test tools sometimes re-indent a body, so the spec also accepts
the HMAC of the body re-serialized compactly: no whitespace outside strings, key order kept,
non-ASCII left unescaped.  Python's ``json.dumps(separators=(",", ":"), ensure_ascii=False)``
produces that for everything but some floats (``1e-07`` vs JavaScript's ``1e-7``), so when the
body holds floats a JavaScript-formatted variant is tried too.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import math
from decimal import Decimal
from typing import Any, Final

from connector.jsonvalues import any_value
from connector.secrets import Secret

VOUCHERIFY_SIGNATURE_HEADER: Final = "x-voucherify-signature"
SEGMENT_SIGNATURE_HEADER: Final = "X-Signature"

# Distinguishes "caller did not parse the body" from a body that parsed to JSON ``null``.
_NOT_PARSED: Final[Any] = object()

# Longest header worth looking at: a SHA-256 hex digest is 64 characters; anything much longer
# is not a signature and is refused before we spend time on it.
_MAX_HEADER_LENGTH: Final = 256


def voucherify_signature_valid(
    raw_body: bytes,
    header_value: str | None,
    secret: str | Secret,
    parsed_body: Any = _NOT_PARSED,
) -> bool:
    """True when ``x-voucherify-signature`` is the hex HMAC-SHA256 of the payload with ``secret``.

    The payload is the raw body, or the same JSON re-serialized compactly (see the module doc).
    ``parsed_body`` saves parsing the body a second time when the caller already did; when the
    body is not JSON only the raw form is checked.
    """
    provided = _provided_digest(header_value)
    key = _key(secret)
    if provided is None or key is None:
        return False
    # Checked in full even after a match would be possible to short-cut: the candidates are few
    # and cheap, and a fixed amount of work keeps timing uninformative.
    valid = _matches(hashlib.sha256, key, raw_body, provided)
    for candidate in _compact_forms(raw_body, parsed_body):
        valid |= _matches(hashlib.sha256, key, candidate, provided)
    return valid


def segment_signature_valid(raw_body: bytes, header_value: str | None, secret: str | Secret) -> bool:
    """True when ``X-Signature`` is the hex HMAC-SHA1 of the raw body (Segment Webhooks destination)."""
    provided = _provided_digest(header_value)
    key = _key(secret)
    if provided is None or key is None:
        return False
    return _matches(hashlib.sha1, key, raw_body, provided)


def voucherify_signature(payload: bytes, secret: str | Secret) -> str:
    """The hex digest Voucherify would send for ``payload`` (sandbox fakes and tests use it)."""
    key = _key(secret)
    if key is None:
        raise ValueError("an empty secret cannot sign")
    return hmac.new(key, payload, hashlib.sha256).hexdigest()


def segment_signature(payload: bytes, secret: str | Secret) -> str:
    """The hex digest Segment's Webhooks destination would send for ``payload``."""
    key = _key(secret)
    if key is None:
        raise ValueError("an empty secret cannot sign")
    return hmac.new(key, payload, hashlib.sha1).hexdigest()


# --------------------------------------------------------------------------------------------


def _key(secret: str | Secret) -> bytes | None:
    value = secret.reveal() if isinstance(secret, Secret) else secret
    # An empty secret would make every signature computable by anyone: fail closed.
    return value.encode("utf-8") if value else None


def _provided_digest(header_value: str | None) -> bytes | None:
    if not header_value:
        return None
    value = header_value.strip()
    if not value or len(value) > _MAX_HEADER_LENGTH:
        return None
    # Hex is case-insensitive; a header is latin-1 text as far as WSGI is concerned, and encoding
    # with "replace" keeps compare_digest (which refuses non-ASCII str) from ever raising.
    return value.lower().encode("ascii", "replace")


def _matches(algorithm: Any, key: bytes, payload: bytes, provided: bytes) -> bool:
    expected = hmac.new(key, payload, algorithm).hexdigest().encode("ascii")
    return hmac.compare_digest(expected, provided)


def _compact_forms(raw_body: bytes, parsed_body: Any) -> list[bytes]:
    """The compact re-serializations of the body worth checking (none when it is not JSON)."""
    parsed = parsed_body
    if parsed is _NOT_PARSED:
        try:
            parsed = json.loads(raw_body)
        except (ValueError, RecursionError):
            return []
    forms: list[bytes] = []
    try:
        python_form = json.dumps(parsed, separators=(",", ":"), ensure_ascii=False).encode(
            "utf-8", "surrogatepass"
        )
        if python_form != raw_body:
            forms.append(python_form)
        if _contains_float(parsed):
            js_form = _js_stringify(parsed).encode("utf-8", "surrogatepass")
            if js_form != raw_body and js_form not in forms:
                forms.append(js_form)
    except (ValueError, TypeError, RecursionError):
        # Deeply nested or exotic bodies: only the raw form can match.  The web bounds depth
        # after this check, so this must never raise.
        return forms
    return forms


def _contains_float(value: Any) -> bool:
    return any_value(value, lambda node: isinstance(node, float))


def _js_stringify(value: Any) -> str:
    """``JSON.stringify(value)``: compact, keys in order, JavaScript number formatting."""
    if isinstance(value, dict):
        return "{" + ",".join(_js_string(str(k)) + ":" + _js_stringify(v) for k, v in value.items()) + "}"
    if isinstance(value, list):
        return "[" + ",".join(_js_stringify(v) for v in value) + "]"
    if isinstance(value, str):
        return _js_string(value)
    if value is True:
        return "true"
    if value is False:
        return "false"
    if value is None:
        return "null"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        return _js_number(value)
    raise TypeError(f"not a JSON value: {type(value).__name__}")


def _js_string(value: str) -> str:
    return json.dumps(value, ensure_ascii=False)


def _js_number(value: float) -> str:
    """ECMAScript Number::toString for a finite double (shortest round-trip digits, as repr)."""
    if math.isnan(value) or math.isinf(value):
        return "null"
    if value == 0:
        return "0"
    sign, digit_tuple, exponent = Decimal(repr(value)).normalize().as_tuple()
    assert isinstance(exponent, int)
    digits = "".join(map(str, digit_tuple))
    k = len(digits)
    n = exponent + k  # the decimal point sits after n digits
    if k <= n <= 21:
        text = digits + "0" * (n - k)
    elif 0 < n <= 21:
        text = digits[:n] + "." + digits[n:]
    elif -6 < n <= 0:
        text = "0." + "0" * (-n) + digits
    else:
        e = n - 1
        mantissa = digits if k == 1 else digits[0] + "." + digits[1:]
        text = f"{mantissa}e{'+' if e >= 0 else '-'}{abs(e)}"
    return ("-" if sign else "") + text
