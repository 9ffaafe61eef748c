"""Every answer the ingest gives to a bad request: a status, a stable ``code``, a ``message``.

Segment's own libraries read ``code`` and ``message`` from error bodies (the Python client breaks
without them), so every non-2xx answer carries both, and none is a 500 for anything a client sent.
"""

from __future__ import annotations

from typing import Any


class ApiError(Exception):
    def __init__(
        self,
        status: int,
        code: str,
        message: str,
        *,
        headers: dict[str, str] | None = None,
        extra: dict[str, Any] | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message
        self.headers = headers or {}
        self.extra = extra or {}

    def body(self) -> dict[str, Any]:
        return {"code": self.code, "message": self.message, **self.extra}


def bad_request(code: str, message: str, **extra: Any) -> ApiError:
    return ApiError(400, code, message, extra=extra)


def unauthorized(code: str, message: str) -> ApiError:
    # WWW-Authenticate tells HTTP clients which credentials are expected.
    return ApiError(401, code, message, headers={"WWW-Authenticate": 'Basic realm="segment"'})
