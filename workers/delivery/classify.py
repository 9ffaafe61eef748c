"""What an answer means: the ONE classification table, and the wait a server asked for.

::

    HTTPResult | TransportFailure ── classify() ──┬── SUCCESS    2xx
                                                  ├── RETRY      connection errors, timeouts,
                                                  │              408, 423, 429, 5xx but 501/505
                                                  └── PERMANENT  other 4xx, 501, 505, 1xx/3xx
                                                                 (misrouted), a malformed URL

Keep this the only place that knows what a status means.  What an answer says about *budgets*
(``X-Rate-Limit-*``, a daily quota) is each target's own reading (``Target.interpret``).
"""

from __future__ import annotations

import enum
import time
from email.utils import parsedate_to_datetime

from connector.errors import TransportFailure
from workers.delivery.retries import MAX_SERVER_WAIT_SECONDS, header_number
from workers.delivery.transport import HTTPResult


class Verdict(enum.Enum):
    SUCCESS = "success"
    RETRY = "retry"
    PERMANENT = "permanent"


RETRYABLE_STATUSES = frozenset({408, 423, 429})
NON_RETRYABLE_5XX = frozenset({501, 505})


def classify_status(status: int) -> Verdict:
    if 200 <= status < 300:
        return Verdict.SUCCESS
    if status in RETRYABLE_STATUSES:
        return Verdict.RETRY
    if 500 <= status < 600:
        return Verdict.PERMANENT if status in NON_RETRYABLE_5XX else Verdict.RETRY
    # Other 4xx: the request itself is wrong.  1xx/3xx: redirects are off on purpose (a POST must
    # not silently become a GET); an unexpected one means a misconfigured URL, not a blip.
    return Verdict.PERMANENT


def classify(outcome: HTTPResult | TransportFailure) -> Verdict:
    if isinstance(outcome, TransportFailure):
        return Verdict.RETRY if outcome.retryable else Verdict.PERMANENT
    return classify_status(outcome.status)


# ---------------------------------------------------------------------------------------------
# What the server asked us to wait.  Header values come from outside: a huge, negative, NaN or
# infinite one is clamped (or ignored), never an OverflowError further down.


def clamp_wait(seconds: float) -> float:
    return min(MAX_SERVER_WAIT_SECONDS, max(0.0, seconds))


def parse_retry_after(value: str | None, now: float | None = None) -> float | None:
    """``Retry-After``: delta-seconds or an HTTP date.  Returns seconds from now, in
    ``[0, MAX_SERVER_WAIT_SECONDS]``."""
    if not value:
        return None
    value = value.strip()[:128]
    now = time.time() if now is None else now
    number = header_number(value)
    if number is not None:
        return clamp_wait(number)
    try:
        when = parsedate_to_datetime(value)
        if when is None:
            return None
        return clamp_wait(when.timestamp() - now)
    except (TypeError, ValueError, IndexError, OverflowError):
        return None


def retry_after(result: HTTPResult | TransportFailure, now: float | None = None) -> float | None:
    """The answer's ``Retry-After`` in seconds, or None (no answer, no header)."""
    if isinstance(result, TransportFailure):
        return None
    return parse_retry_after(result.headers.get("retry-after"), now)
