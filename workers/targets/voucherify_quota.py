"""Voucherify's quotas as budgets (SPEC 10): which call spends what, and what answers say.

Budgets (names shared with metrics and Redis keys, :data:`connector.quotas.BUDGETS`), each at the
connection's ``usable()`` part of the project's limit (the rest is the shop's reserve):

===========================  ==============================================================
call                         budgets spent
===========================  ==============================================================
any single ``/v1`` call      ``api_calls_minute`` / ``api_calls_hour`` / ``api_calls_cycle``
``POST /v1/customers/bulk``  ``bulk_calls_hour`` + ``api_calls_minute`` / ``api_calls_hour``
``/segmentio/*``             ``webhook_calls_day``
===========================  ==============================================================

(those the plan has; a bulk call is not added to the cycle, as Voucherify counts it.)

Answers:

- ``429`` pauses only the budgets its ``X-Rate-Limit-Type`` names, until ``X-Rate-Limit-Retry``
  / ``Retry-After``: a spent bulk budget never stops single calls; the call waits for its
  budget in the delayed store (a quota wait, not a failed attempt).
- Any answer's headers are the live state of the budget they speak of (the first of the call's
  kind: ``live``): its credit is ``X-Rate-Limit-Remaining - (1 - share) x X-Rate-Limit-Limit``
  until ``X-Rate-Limit-Retry``, and only calls within it are granted
  (:mod:`workers.delivery.budgets`); below the reserve (the shop's traffic, invisible otherwise)
  the budget is also paused until then, whatever our own counters say.
- ``401`` / ``403``: the credentials are refused -- the connection is paused
  (:mod:`workers.delivery.pauses`), nothing is dead-lettered.
"""

from __future__ import annotations

import dataclasses
import logging
import threading
import time
from typing import Any

from connector.quotas import BUDGETS, QuotaSettings, budget_specs
from workers.delivery.budgets import Budget, Observation
from workers.delivery.classify import clamp_wait
from workers.delivery.retries import header_number
from workers.delivery.transport import HTTPResult

log = logging.getLogger("connector.quota")

BULK_PATH = "/v1/customers/bulk/async"
SEGMENTIO_PREFIX = "/segmentio/"
API_PERIODS = ("api_calls_minute", "api_calls_hour")
REST_BUDGETS = (*API_PERIODS, "api_calls_cycle")
BULK_BUDGETS = ("bulk_calls_hour", *API_PERIODS)
WEBHOOK_BUDGETS = ("webhook_calls_day",)
# X-Rate-Limit-Type -> the budgets a 429 of that type pauses.
TYPE_BUDGETS: dict[str, tuple[str, ...]] = {
    "api_calls": API_PERIODS,
    "bulk_api_calls": ("bulk_calls_hour",),
    "api_calls_cycle": ("api_calls_cycle",),
    "webhook_calls": WEBHOOK_BUDGETS,
}
# A 429 or a reached reserve without any time header: stop this long (scaled with the clock).
DEFAULT_PAUSE_SECONDS = 5.0
AUTH_STATUSES = (401, 403)
# Per kind of call, the budgets in the order Voucherify picks the one its headers speak of.
HEADER_ORDER = (REST_BUDGETS, BULK_BUDGETS, WEBHOOK_BUDGETS)


def quota_budgets(quota: QuotaSettings) -> dict[str, Budget]:
    """Every budget the connection has, by name (:func:`connector.quotas.budget_specs`); those
    whose state the answers' headers tell (the first of each kind of call's) are ``live``."""
    specs = budget_specs(quota)
    live = {next((n for n in kind if n in specs and specs[n].limit != 0), "") for kind in HEADER_ORDER}
    return {
        name: Budget(spec.limit, spec.window, name, spec.cycle_start_day, spec.cycle_scale, name in live)
        for name, spec in specs.items()
    }


def names_for(path: str | None) -> tuple[str, ...]:
    if path is not None and path.startswith(SEGMENTIO_PREFIX):
        return WEBHOOK_BUDGETS
    if path == BULK_PATH:
        return BULK_BUDGETS
    return REST_BUDGETS


def spends(budgets: dict[str, Budget], path: str | None) -> tuple[Budget, ...]:
    """The budgets a call to ``path`` spends (``None``: any ``/v1`` call)."""
    return tuple(budgets[name] for name in names_for(path) if name in budgets)


def parse_rate_limit_retry(retry: str | None, now: float) -> float | None:
    """Voucherify's ``X-Rate-Limit-Retry``: seconds until the epoch second it names.

    Defensive about units: values that look like epoch milliseconds are scaled, and small values
    (which cannot be a recent epoch) are taken as a number of seconds to wait.
    """
    number = header_number(retry)
    if number is None:
        return None
    if number > 1e12:
        number /= 1000.0
    if number < 1e9:
        return clamp_wait(number)
    return clamp_wait(number - now)


def path_of(spent: tuple[Budget, ...]) -> str | None:
    """The kind of call that spent ``spent`` (a path standing for it; None: a ``/v1`` call)."""
    names = {b.name for b in spent}
    if "webhook_calls_day" in names:
        return SEGMENTIO_PREFIX
    return BULK_PATH if "bulk_calls_hour" in names else None


def header_budgets(quota: QuotaSettings, limit: float, path: str | None) -> tuple[str, ...] | None:
    """The budgets an answer's ``X-Rate-Limit-Limit`` speaks of: those of the call whose
    project limit it is (None: cannot tell -- every budget of the call)."""
    limits = quota.limits()
    named = tuple(
        name for name in names_for(path) if limits.get(BUDGETS[name][0]) == int(limit) and limit > 0
    )
    return named or None


def reading(
    answer: HTTPResult, quota: QuotaSettings, path: str | None, wait: float | None, now: float | None = None
) -> Observation:
    """What a Voucherify answer (not a transport failure) says about the budgets; ``path``: the
    call's kind (:func:`path_of`)."""
    now = time.time() if now is None else now
    headers = answer.headers
    default = DEFAULT_PAUSE_SECONDS * quota.period_scale
    if answer.status in AUTH_STATUSES:
        return Observation(wait=wait, auth_refused=True)
    if answer.status == 429:
        names = TYPE_BUDGETS.get((headers.get("x-rate-limit-type") or "").strip().lower())
        # A zero or past wait (clocks apart) still pauses for a while, never for a millisecond.
        return Observation(wait=wait, pause=wait or default, slow=True, budget=names, quota=True)
    limit = header_number(headers.get("x-rate-limit-limit"))
    remaining = header_number(headers.get("x-rate-limit-remaining"))
    # The server's word on its window (not a failure of its own): the live state.
    live = answer.status < 500
    if limit is None or remaining is None or limit <= 0:
        return Observation(wait=wait, live=live)
    limit = min(limit, 1e12)
    until = parse_rate_limit_retry(headers.get("x-rate-limit-retry"), now)
    names = header_budgets(quota, limit, path)
    # The headers are credit: what remains beyond the shop's reserve may be granted, no more.
    credit = min(remaining, 1e12) - (1.0 - quota.share) * limit
    seen = Observation(
        wait=wait, live=True, credit=credit, live_until=now + until if until else None, live_budget=names
    )
    if remaining < (1.0 - quota.share) * limit:
        # The shop's reserve is reached: stop until the period ends (the shop's traffic is
        # invisible to our counters, the headers are the only word on it).
        return dataclasses.replace(seen, pause=until or default, budget=names)
    return seen


# --- the last headers seen, for the forecast (the shop's reserve) --------------------------

SEEN_EVERY_SECONDS = 1.0  # per process and connection: a Redis write per second, not per call
_seen_at: dict[str, float] = {}
_seen_lock = threading.Lock()


def remember_headers(client: Any, key: str, connection_id: str, answer: HTTPResult, path: str | None) -> None:
    """Keep the last ``X-Rate-Limit-Limit`` / ``-Remaining`` of a call kind (rest, bulk,
    webhook) for ``connector stats`` and the status page, at most once a second per process."""
    limit = answer.headers.get("x-rate-limit-limit")
    remaining = answer.headers.get("x-rate-limit-remaining")
    if limit is None or remaining is None:
        return
    kind = "webhook" if names_for(path) == WEBHOOK_BUDGETS else "bulk" if path == BULK_PATH else "rest"
    mono = time.monotonic()
    slot = f"{connection_id}:{kind}"
    with _seen_lock:
        if mono - _seen_at.get(slot, -1e9) < SEEN_EVERY_SECONDS:
            return
        _seen_at[slot] = mono
    lim, rem = header_number(limit), header_number(remaining)
    if lim is None or rem is None:
        return
    value = f"{int(min(lim, 1e12))},{int(max(0.0, min(rem, 1e12)))},{time.time():.0f}"
    client.hset(key, kind, value)
    client.expire(key, 86400 * 2)


_warned: set[str] = set()


def warn_if_assumed(connection_id: str, quota: QuotaSettings) -> None:
    """Once per connection and process: no quota configured, the assumed plan applies."""
    if not quota.assumed or connection_id in _warned:
        return
    with _seen_lock:
        if connection_id in _warned:
            return
        _warned.add(connection_id)
    log.warning(
        "no quota configured for this connection: assuming the smallest current plan (Business: "
        "100 API calls a minute, 100,000 a cycle, no bulk) and using share %.2f of it; set `plan` "
        "(or the limits) and `share` in [connection.voucherify] (README: Quotas)",
        quota.share,
        extra={"connection": connection_id},
    )
