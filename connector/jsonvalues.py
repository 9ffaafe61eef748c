"""Walking parsed JSON without recursion (bodies from outside may nest deeply), and JSON bytes
that are kept in memory."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import orjson


def dumps_kept(value: Any, option: int | None = None) -> bytes:
    """``orjson.dumps(value)`` right-sized, for bytes a process keeps while it does other work.

    orjson (3.12 and later) hands back bytes whose allocation is its whole write buffer -- at
    least 4 KB, then the next power of two -- and never trims it: a 150-byte trace record held
    until its task's flush costs 4 KB.  A worker draining a backlog holds four such records per
    event in work, which was the largest single part of its peak RSS (issue #19).  One copy of
    the few hundred bytes gives the buffer back; bytes written out at once need none of this.
    """
    data = orjson.dumps(value, option=option)
    return bytes(memoryview(data))


def any_value(value: Any, predicate: Callable[[Any], bool]) -> bool:
    """True when ``predicate`` holds for ``value`` or any value nested in its objects and arrays."""
    stack = [value]
    while stack:
        node = stack.pop()
        if predicate(node):
            return True
        if isinstance(node, dict):
            stack.extend(node.values())
        elif isinstance(node, list):
            stack.extend(node)
    return False
