"""A string wrapper that never shows its value in ``repr``/``str``/logs.

Configuration keeps every credential in a :class:`Secret`; code that needs the raw value calls
``.reveal()`` at the one place it builds a header or an HMAC.  Anything else that formats the
object (a log line, an exception message, a dataclass repr) sees ``'**********'``.
"""

from __future__ import annotations

import hmac
from typing import Any

REDACTED = "**********"


class Secret:
    __slots__ = ("_value",)

    def __init__(self, value: str) -> None:
        self._value = value

    def reveal(self) -> str:
        return self._value

    def __bool__(self) -> bool:
        return bool(self._value)

    def __repr__(self) -> str:
        return f"Secret({REDACTED!r})"

    def __str__(self) -> str:
        return REDACTED

    def __format__(self, spec: str) -> str:
        return REDACTED

    def __eq__(self, other: object) -> bool:
        if isinstance(other, Secret):
            return hmac.compare_digest(self._value.encode(), other._value.encode())
        return NotImplemented

    def __hash__(self) -> int:
        return hash(("Secret", self._value))

    def __reduce__(self) -> Any:  # pickling would be a way to leak it: refuse.
        raise TypeError("Secret values are not serializable")


def constant_time_equals(a: str | bytes, b: str | bytes) -> bool:
    """Compare two strings without leaking their common prefix length through timing."""
    ab = a.encode() if isinstance(a, str) else a
    bb = b.encode() if isinstance(b, str) else b
    return hmac.compare_digest(ab, bb)
