"""When to try again: backoff with jitter, the server's wishes, and the retry window.

``next_delay`` uses *decorrelated jitter* (AWS architecture blog): each delay is drawn between
the base and three times the previous one, capped.  It spreads a burst of failures as well as
full jitter does, yet never retries almost at once (the first retry waits at least ``base``).
A server's ``Retry-After`` / ``X-Rate-Limit-Retry`` is a floor, even above our cap: it knows.

The window is measured from the first attempt (Segment's rule): once the next try would land past
``first_attempt_at + window``, the delivery is dead-lettered instead of parked.
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass

# The longest wait a server can impose on us through a header (a day: Voucherify's daily
# webhook budgets).  Longer asks are taken as this; the retry window decides what then dies.
MAX_SERVER_WAIT_SECONDS = 86400.0


def header_number(value: str | None) -> float | None:
    """A response header's value as a finite number, or None (absent, unreadable, NaN,
    infinite): values from outside never reach arithmetic that could overflow."""
    if not value:
        return None
    try:
        number = float(value.strip()[:64])
    except ValueError:
        return None
    return number if math.isfinite(number) else None


@dataclass(frozen=True)
class RetryDecision:
    delay: float  # seconds from now; meaningful only when not exhausted
    exhausted: bool


def next_delay(
    previous: float | None,
    *,
    base: float,
    cap: float,
    server_wait: float | None = None,
    rng: random.Random | None = None,
) -> float:
    draw = (rng or random).uniform
    prev = previous if previous and previous > 0 else base
    delay = min(cap, draw(base, max(base, prev * 3)))
    if server_wait is not None and math.isfinite(server_wait):
        delay = max(delay, min(server_wait, MAX_SERVER_WAIT_SECONDS))
    return delay


def decide(
    *,
    now: float,
    first_attempt_at: float,
    window: float,
    previous_delay: float | None,
    base: float,
    cap: float,
    server_wait: float | None = None,
    rng: random.Random | None = None,
) -> RetryDecision:
    delay = next_delay(previous_delay, base=base, cap=cap, server_wait=server_wait, rng=rng)
    return RetryDecision(delay=delay, exhausted=now + delay > first_attempt_at + window)
