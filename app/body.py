"""Reading a request body safely: a deadline, size bounds before parsing, bounded gunzip, JSON
depth, integers that JSON parsers would silently turn into floats.

The limits are Segment's (500 KB per request after decompression); a gzip bomb is stopped as
soon as the decompressed stream passes the bound, without inflating the rest.  A body must
arrive within ``CONNECTOR_BODY_TIMEOUT_SECONDS`` (default 10): a client dribbling bytes gets
``408 body_timeout`` instead of holding its greenlet (or, with a sync worker, the worker).
"""

from __future__ import annotations

import contextlib
import json
import socket
import sys
import time
import zlib
from collections.abc import Iterator
from typing import Any

import orjson
from flask import Request

from app.errors import ApiError, bad_request
from connector.contract import SEGMENT_MAX_EVENT_BYTES
from connector.jsonvalues import any_value

MAX_BATCH_BYTES = 500 * 1024
MAX_EVENT_BYTES = SEGMENT_MAX_EVENT_BYTES
MAX_BATCH_EVENTS = 2500
MAX_DEPTH = 64  # Segment documents no bound; this is deep enough for any real event.
_READ_CHUNK = 64 * 1024
# Gzip members in one body (concatenated gzip files are one valid stream); far above real use.
MAX_GZIP_MEMBERS = 64
# Integers JSON may carry exactly here: what orjson reads and writes as integers (int64 and
# uint64).  orjson reads anything beyond as a float, silently; such items are refused instead.
MIN_INT = -(2**63)
MAX_INT = 2**64 - 1
# A run of 19 digits is the shortest text that can hold an integer outside that range.  Found
# by mapping every digit to "9" and everything else to " " and looking for nineteen 9s: about
# ten times faster than the regex \d{19} (which cost ~1.3 ms on a 60 KB batch).
_DIGIT_MAP = bytes(0x39 if 0x30 <= b <= 0x39 else 0x20 for b in range(256))
_LONG_DIGITS = b"9" * 19


def _long_digit_run(raw: bytes) -> bool:
    return _LONG_DIGITS in raw.translate(_DIGIT_MAP)


class OutOfRange:
    """Stands for an integer outside [MIN_INT, MAX_INT] in a parsed body: never serializable,
    so it cannot reach the broker by accident; :func:`holds_out_of_range` finds it."""

    __slots__ = ()

    def __repr__(self) -> str:
        return "<integer out of range>"


OUT_OF_RANGE = OutOfRange()


def _too_large(limit: int) -> ApiError:
    return ApiError(400, "request_too_large", f"request body exceeds {limit // 1024} KB")


class _BodyTimeout(Exception):
    pass


def _body_timeout_error(seconds: float) -> ApiError:
    return ApiError(408, "body_timeout", f"the request body did not arrive within {seconds:g} s")


@contextlib.contextmanager
def _deadline(request: Request, seconds: float) -> Iterator[None]:
    """Bound the time spent reading the body.

    Under gevent (the web's worker class) a ``gevent.Timeout`` bounds the whole read, however
    the client splits its bytes.  Without gevent (another worker class, tests) each socket read
    is bounded by the socket's timeout, a weaker guarantee.
    """
    gevent = sys.modules.get("gevent")
    monkey = sys.modules.get("gevent.monkey")
    if gevent is not None and monkey is not None and monkey.is_module_patched("socket"):
        timer = gevent.Timeout(seconds, _BodyTimeout())
        timer.start()
        try:
            yield
        except _BodyTimeout:
            raise _body_timeout_error(seconds) from None
        finally:
            timer.close()
        return
    sock = request.environ.get("gunicorn.socket")
    previous = sock.gettimeout() if isinstance(sock, socket.socket) else None
    if isinstance(sock, socket.socket):
        sock.settimeout(seconds)
    try:
        yield
    except TimeoutError:
        raise _body_timeout_error(seconds) from None
    finally:
        if isinstance(sock, socket.socket):
            with contextlib.suppress(OSError):
                sock.settimeout(previous)


def read_raw(request: Request, limit: int = MAX_BATCH_BYTES, *, timeout: float = 10.0) -> bytes:
    """The body as sent (before decoding), refusing to read more than ``limit`` bytes or to
    wait longer than ``timeout`` seconds (``CONNECTOR_BODY_TIMEOUT_SECONDS``) for it."""
    length = request.content_length
    encoding = (request.headers.get("Content-Encoding") or "").strip().lower()
    if encoding not in ("", "identity", "gzip", "x-gzip", "deflate"):
        raise ApiError(
            415, "unsupported_encoding", f"Content-Encoding {encoding[:40]!r} is not supported (use gzip)"
        )
    # A compressed body can't be bigger than its inflated form would be allowed to be
    # (gzip's worst case adds a few bytes); anything larger is refused unread.
    if length is not None and length > limit + 1024:
        raise _too_large(limit)
    stream = request.stream
    chunks: list[bytes] = []
    total = 0
    seconds = timeout
    started = time.monotonic()
    with _deadline(request, seconds):
        while True:
            chunk = stream.read(_READ_CHUNK)
            if not chunk:
                break
            total += len(chunk)
            if total > limit + 1024:
                raise _too_large(limit)
            chunks.append(chunk)
            if time.monotonic() - started > seconds:
                raise _body_timeout_error(seconds)
    raw = b"".join(chunks)
    if encoding in ("", "identity"):
        if len(raw) > limit:
            raise _too_large(limit)
        return raw
    return inflate(raw, limit, encoding)


def inflate(raw: bytes, limit: int, encoding: str = "gzip") -> bytes:
    """Every member of a gzip stream (``cat a.gz b.gz`` is one valid gzip body), never more
    than ``limit`` bytes in total: the bound holds across members, not per member."""
    wbits = 16 + zlib.MAX_WBITS if encoding != "deflate" else zlib.MAX_WBITS
    out = bytearray()
    rest = raw
    members = 0
    try:
        while True:
            members += 1
            if members > MAX_GZIP_MEMBERS:
                raise bad_request("invalid_gzip", f"more than {MAX_GZIP_MEMBERS} gzip members")
            decompressor = zlib.decompressobj(wbits)
            # max_length stops inflating at the bound: a bomb costs us `limit` bytes, not gigabytes.
            room = limit - len(out)
            out += decompressor.decompress(rest, room + 1)
            if len(out) > limit or decompressor.unconsumed_tail:
                raise _too_large(limit)
            out += decompressor.flush()
            if len(out) > limit:
                raise _too_large(limit)
            if not decompressor.eof:
                raise bad_request("invalid_gzip", "the gzip stream is truncated")
            rest = decompressor.unused_data
            # Zero padding after the last member is tolerated (tape-era tools write it).
            if not rest.strip(b"\x00") or encoding == "deflate":
                break
    except zlib.error:
        raise bad_request("invalid_gzip", "the body is not valid gzip data") from None
    return bytes(out)


def _checked_int(text: str) -> int | OutOfRange:
    value = int(text)
    return value if MIN_INT <= value <= MAX_INT else OUT_OF_RANGE


def parse_json(raw: bytes) -> Any:
    """The parsed body.  Integers beyond 64 bits become :data:`OUT_OF_RANGE` markers (the
    callers refuse what holds one) instead of floats that would silently change the value."""
    if not raw.strip():
        raise bad_request("invalid_json", "the body is empty; expected a JSON object")
    try:
        value = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        text = str(exc).lower()
        if "depth" in text or "recursion" in text:
            raise bad_request("nesting_too_deep", f"JSON nesting deeper than {MAX_DEPTH} levels") from None
        raise bad_request("invalid_json", f"the body is not valid JSON: {exc.msg}") from None
    if not _long_digit_run(raw):
        return value
    # Rare: a long digit run somewhere (often inside a string).  The standard parser keeps
    # integers exact, so out-of-range ones can be told from floats.
    try:
        return json.loads(raw, parse_int=_checked_int)
    except RecursionError:
        raise bad_request("nesting_too_deep", f"JSON nesting deeper than {MAX_DEPTH} levels") from None
    except ValueError:  # orjson accepted it; the standard parser is stricter on a few forms
        return value


def holds_out_of_range(value: Any) -> bool:
    """True when ``value`` (a parsed body or part of it) holds an out-of-range integer."""
    return any_value(value, lambda node: node is OUT_OF_RANGE)


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
