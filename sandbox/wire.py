"""What the fakes read and answer: requests, responses, JSON and status helpers (no I/O here)."""

from __future__ import annotations

import errno
import http
import json
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import orjson

StartResponse = Callable[..., Any]
Environ = dict[str, Any]


def dumps(obj: Any) -> bytes:
    try:
        return orjson.dumps(obj)
    except TypeError:
        # orjson refuses integers beyond 64 bits; the stdlib does not.
        return json.dumps(obj, default=str).encode()


def loads(raw: bytes) -> Any:
    try:
        return orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        if "64-bit" in str(exc) or "Integer" in str(exc):
            return json.loads(raw)
        raise


def status_line(status: int) -> str:
    try:
        return f"{status} {http.HTTPStatus(status).phrase}"
    except ValueError:
        return f"{status} Unknown"


def error_key(status: int) -> str:
    try:
        return http.HTTPStatus(status).phrase.lower().replace(" ", "_").replace("-", "_")
    except ValueError:
        return "error"


def is_success(status: int) -> bool:
    return 200 <= status < 300


class DropConnection(ConnectionResetError):
    """Raised from the app to make gevent's pywsgi close the socket without answering.

    pywsgi treats ECONNRESET from the application as a client disconnect: it closes the
    connection silently, so the client sees "connection reset / remote end closed".
    """

    def __init__(self) -> None:
        super().__init__(errno.ECONNRESET, "fake: connection dropped on purpose")


@dataclass(slots=True)
class FakeRequest:
    time: float
    method: str
    path: str
    query: dict[str, str | list[str]]
    headers: dict[str, str]
    raw: bytes
    body: Any = None  # parsed JSON (None also when absent/invalid: see json_error)
    json_error: str | None = None

    def header(self, name: str, default: str = "") -> str:
        return self.headers.get(name.title(), default)


@dataclass(slots=True)
class FakeResponse:
    status: int
    body: Any = None  # JSON-serialisable; bytes are sent as they are
    headers: dict[str, str] = field(default_factory=dict)
    schema_valid: bool | None = None
    validation_errors: list[str] = field(default_factory=list)
    extra: dict[str, Any] | None = None  # fields merged into the request's record
    body_delay_ms: float = 0.0
    # Called with the finished record (its seq assigned), e.g. to index what it carried.
    after_record: Callable[[dict[str, Any]], None] | None = None
