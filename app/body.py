"""Reading a request body safely: size bounds before parsing, bounded gunzip, JSON depth.

The limits are Segment's (500 KB per request after decompression); a gzip bomb is stopped as
soon as the decompressed stream passes the bound, without inflating the rest.
"""

from __future__ import annotations

import zlib
from typing import Any

import orjson
from flask import Request

from app.errors import ApiError, bad_request

MAX_BATCH_BYTES = 500 * 1024
MAX_EVENT_BYTES = 32 * 1024
MAX_BATCH_EVENTS = 2500
MAX_DEPTH = 64  # Segment documents no bound; this is deep enough for any real event.
_READ_CHUNK = 64 * 1024


def _too_large(limit: int) -> ApiError:
    return ApiError(400, "request_too_large", f"request body exceeds {limit // 1024} KB")


def read_raw(request: Request, limit: int = MAX_BATCH_BYTES) -> bytes:
    """The body as sent (before decoding), refusing to read more than ``limit`` bytes."""
    length = request.content_length
    encoding = (request.headers.get("Content-Encoding") or "").strip().lower()
    # A compressed body can't be bigger than its inflated form would be allowed to be
    # (gzip's worst case adds a few bytes); anything larger is refused unread.
    if length is not None and length > limit + 1024:
        raise _too_large(limit)
    stream = request.stream
    chunks: list[bytes] = []
    total = 0
    while True:
        chunk = stream.read(_READ_CHUNK)
        if not chunk:
            break
        total += len(chunk)
        if total > limit + 1024:
            raise _too_large(limit)
        chunks.append(chunk)
    raw = b"".join(chunks)
    if encoding in ("", "identity"):
        if len(raw) > limit:
            raise _too_large(limit)
        return raw
    if encoding in ("gzip", "x-gzip", "deflate"):
        return inflate(raw, limit, encoding)
    raise ApiError(415, "unsupported_encoding", f"Content-Encoding {encoding!r} is not supported (use gzip)")


def inflate(raw: bytes, limit: int, encoding: str = "gzip") -> bytes:
    wbits = 16 + zlib.MAX_WBITS if encoding != "deflate" else zlib.MAX_WBITS
    decompressor = zlib.decompressobj(wbits)
    try:
        # max_length stops inflating at the bound: a bomb costs us `limit` bytes, not gigabytes.
        out = decompressor.decompress(raw, limit + 1)
        if len(out) > limit or decompressor.unconsumed_tail:
            raise _too_large(limit)
        out += decompressor.flush()
    except zlib.error:
        raise bad_request("invalid_gzip", "the body is not valid gzip data") from None
    if len(out) > limit:
        raise _too_large(limit)
    if not decompressor.eof:
        raise bad_request("invalid_gzip", "the gzip stream is truncated")
    return out


def parse_json(raw: bytes) -> Any:
    if not raw.strip():
        raise bad_request("invalid_json", "the body is empty; expected a JSON object")
    try:
        value = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        if "recursion" in str(exc).lower():
            raise bad_request("nesting_too_deep", f"JSON nesting deeper than {MAX_DEPTH} levels") from None
        raise bad_request("invalid_json", f"the body is not valid JSON: {exc.msg}") from None
    return value


def depth_exceeds(value: Any, limit: int = MAX_DEPTH) -> bool:
    """True when containers nest deeper than ``limit`` (iterative: no recursion to blow)."""
    stack: list[tuple[Any, int]] = [(value, 1)]
    while stack:
        node, depth = stack.pop()
        if depth > limit:
            return True
        if isinstance(node, dict):
            for child in node.values():
                if isinstance(child, (dict, list)):
                    stack.append((child, depth + 1))
        elif isinstance(node, list):
            for child in node:
                if isinstance(child, (dict, list)):
                    stack.append((child, depth + 1))
    return False
