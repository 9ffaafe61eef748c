"""Walking parsed JSON without recursion (bodies from outside may nest deeply)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any


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
