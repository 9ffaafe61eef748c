"""The systems we deliver to, one module each, behind one protocol
(:class:`workers.delivery.target.Target`): base URL by region and queue, credentials, budgets
and what their answers say, batching and coalescing rules, the stale-update rule.

:data:`TARGETS` is the one table from a direction label (the contract's data) to its system.
"""

from __future__ import annotations

from typing import Any

from connector.config import Connection
from connector.contract import DESTINATION, SOURCE
from workers.delivery.budgets import Budget
from workers.delivery.target import Target
from workers.targets.segment import SegmentTarget
from workers.targets.voucherify import VoucherifyTarget

TARGETS: dict[str, type[VoucherifyTarget] | type[SegmentTarget]] = {
    DESTINATION: VoucherifyTarget,
    SOURCE: SegmentTarget,
}


def configured(connection: Connection, direction: str) -> bool:
    """Whether ``direction`` is known and ``connection`` has its system's settings."""
    target = TARGETS.get(direction)
    return target is not None and target.configured(connection)


def system_of(direction: str) -> str:
    """The name of ``direction``'s system (``Target.name``): what its pauses are per."""
    target = TARGETS.get(direction)
    if target is None:
        raise ValueError(f"unknown delivery direction {direction!r}")
    return target.name


def bind(direction: str, connection: Connection, **resources: Any) -> Target:
    """The target of ``direction``, bound to ``connection`` for one task; ``resources``: the
    task's Redis ``client``, ``keys``, ``tuning``, ``budgets`` and ``schema_transport``."""
    target = TARGETS.get(direction)
    if target is None:
        raise ValueError(f"unknown delivery direction {direction!r}")
    return target(connection, **resources)


def budgets_of(connection: Connection) -> list[Budget]:
    """Every budget of ``connection``, for ``connector stats``."""
    return [
        budget
        for target in TARGETS.values()
        if target.configured(connection)
        for budget in target.budgets_of(connection)
    ]


__all__ = ["TARGETS", "bind", "budgets_of", "configured", "system_of"]
