"""Quota waits are not retries (SPEC 10): time spent waiting for a budget or a paused
connection does not run the retry window's clock, and a quota refusal is not a spent attempt.

The retry window is measured from the first attempt (:mod:`workers.delivery.retries`); an item
that waits for quota carries ``quota_wait`` (seconds waited so far, after its first attempt),
and the window runs from ``first_attempt_at + quota_wait``.  The time is measured, not
estimated: the park writes ``quota_parked_at``, the next run adds what really elapsed (the
scheduler's delay, a queue's, included).
"""

from __future__ import annotations

from typing import Any

QUOTA_REASONS = frozenset({"throttled", "paused"})


def parked(item: dict[str, Any], reason: str, now: float) -> None:
    """``item`` parks for ``reason``: start its quota clock if that is a quota wait (only after
    a first attempt: before it the retry window has not started anyway)."""
    if reason in QUOTA_REASONS and item.get("first_attempt_at"):
        item["quota_parked_at"] = now
    else:
        item.pop("quota_parked_at", None)


def resumed(item: dict[str, Any], now: float) -> None:
    """``item`` is back from the delayed store: a quota wait's time is added to ``quota_wait``."""
    since = item.pop("quota_parked_at", None)
    if since is not None:
        item["quota_wait"] = float(item.get("quota_wait") or 0.0) + max(0.0, now - float(since))


def not_an_attempt(item: dict[str, Any], first_before: float | None) -> None:
    """A quota refusal (429) or refused credentials: the try is kept in the history, but it is
    not an attempt -- no retry spent, and it does not start the retry window."""
    item["attempts"] = max(0, int(item.get("attempts") or 0) - 1)
    if not first_before:
        item["first_attempt_at"] = None


def window_start(item: dict[str, Any], now: float) -> float:
    """Where the retry window starts: the first attempt, moved by the time waited for quota."""
    first = float(item.get("first_attempt_at") or now)
    return first + float(item.get("quota_wait") or 0.0)
