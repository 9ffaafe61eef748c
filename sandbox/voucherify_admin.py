"""The fake Voucherify's own control endpoints (under ``/__fake/``) and command-line options.

- ``GET /__fake/customers`` -> the customer store.
- ``GET|POST /__fake/metadata-schemas`` -> ``{"schemas": [...], "enforce": bool}`` (see
  ``sandbox.fake_voucherify``).
- ``GET /__fake/quota[?history=1]`` -> the quota's configuration, buckets and counters
  (``sandbox.quota``); with ``history``, each bucket's past windows (``window_start``, ``reset``,
  ``limit``, ``used``, ``used_by`` and ``refused_by`` per ``connector``/``shop``; the last 1,000
  windows that had a call or a refusal).
- ``POST /__fake/quota`` -> change it; any of ``plan``, the limit keys (``api_calls_per_minute``,
  ``api_calls_per_hour``, ``api_calls_per_cycle``, ``bulk_calls_per_hour``,
  ``webhook_calls_per_day``: an integer, or null for the plan's value), ``cycle_start_day``,
  ``period_scale``, ``periods`` (``{"minute": s, "hour": s, "day": s, "cycle": s}``),
  ``align`` (``"clock"`` | ``"now"``), ``shop`` (``{"calls_per_minute", "bulk_calls_per_hour"}``),
  ``shop_at`` (``"even"``, the default, or ``"window_start"``: each window's shop calls at once),
  ``used`` (``{bucket: n}``: this window already holds n calls) and ``reset_counters``.
  Answers like ``GET``.
- ``DELETE /__fake/quota`` -> back to the start-up configuration, every counter emptied.
- ``POST /__fake/quota/shop`` with ``{"calls": n, "kind": "rest" | "bulk"}`` -> a burst of the
  shop's calls now: ``{"accepted", "refused"}``.
- ``GET|POST /__fake/auth`` -> ``{"state": "ok" | "revoked" | "forbidden", "for_s": s | null}``:
  every project call answers 401 (revoked) or 403 (forbidden) until restored (``"ok"``) or
  for ``for_s`` seconds; such answers are not counted in the quota and carry no rate headers.
- ``GET|POST /__fake/async-actions`` -> the bulk actions and their script (``sandbox.async_actions``).

``POST /__fake/reset`` restores all of these to the start-up state.
"""

from __future__ import annotations

import argparse
import json
import os
import threading
import time
from typing import Any, Protocol

from sandbox.async_actions import AsyncActions
from sandbox.customers import CustomerStore, MetadataSchemas
from sandbox.plans import LIMIT_KEYS, PLANS, QuotaConfig
from sandbox.quota import KINDS, Quota
from sandbox.wire import FakeRequest, FakeResponse

AUTH_STATES = {"ok": None, "revoked": 401, "forbidden": 403}
MAX_BURST = 100_000


class AdminApp(Protocol):
    """What the control endpoints need of the fake (``sandbox.fake_voucherify`` is one): named
    here rather than imported, so the fake and its control surface import in one direction only."""

    lock: threading.Lock
    customers: CustomerStore
    metadata: MetadataSchemas
    actions: AsyncActions
    quota: Quota
    initial_quota: QuotaConfig
    access: AccessSwitch

    def finish_due_actions(self, now: float) -> None: ...


class AccessSwitch:
    """Credentials revoked (401) or forbidden (403) on demand."""

    def __init__(self) -> None:
        self.state = "ok"
        self.until: float | None = None
        self.refused = 0

    def set(self, spec: Any, now: float) -> None:
        if (
            not isinstance(spec, dict)
            or set(spec) - {"state", "for_s"}
            or spec.get("state") not in AUTH_STATES
        ):
            raise ValueError(
                'body must be {"state": "ok" | "revoked" | "forbidden", "for_s": seconds | null}'
            )
        for_s = spec.get("for_s")
        if for_s is not None and (
            isinstance(for_s, bool) or not isinstance(for_s, int | float) or for_s <= 0
        ):
            raise ValueError("for_s must be a number > 0 (or null: until further notice)")
        self.state = spec["state"]
        self.until = now + for_s if for_s is not None and self.state != "ok" else None

    def status(self, now: float) -> int | None:
        """401/403 while revoked or forbidden, else None."""
        if self.until is not None and now >= self.until:
            self.state, self.until = "ok", None
        return AUTH_STATES[self.state]

    def describe(self, now: float) -> dict[str, Any]:
        self.status(now)
        return {"state": self.state, "until": self.until, "refused": self.refused}


def _used(raw: Any) -> dict[str, int]:
    if not isinstance(raw, dict):
        raise ValueError("used must be an object of bucket names to call counts")
    for key, value in raw.items():
        if key not in LIMIT_KEYS:
            raise ValueError(f"unknown bucket {key!r}; known: {', '.join(LIMIT_KEYS)}")
        if isinstance(value, bool) or not isinstance(value, int) or value < 0:
            raise ValueError(f"used.{key} must be an integer >= 0")
    return raw


def update_quota(app: AdminApp, body: Any, now: float) -> dict[str, Any]:
    if not isinstance(body, dict):
        raise ValueError("body must be a JSON object")
    spec = dict(body)
    used = _used(spec.pop("used", {}))
    reset = spec.pop("reset_counters", False)
    if not isinstance(reset, bool):
        raise ValueError("reset_counters must be true or false")
    with app.lock:
        config = app.quota.config.updated(spec, now)
        app.quota.reconfigure(config, now, reset=reset)
        app.quota.set_used(used, now)
        return app.quota.view(now)


def shop_burst(app: AdminApp, body: Any, now: float) -> dict[str, Any]:
    body = body if isinstance(body, dict) else {}
    calls, kind = body.get("calls"), body.get("kind", "rest")
    if isinstance(calls, bool) or not isinstance(calls, int) or not 0 <= calls <= MAX_BURST:
        raise ValueError(f"calls must be an integer from 0 to {MAX_BURST}")
    if kind not in KINDS[:2]:
        raise ValueError('kind must be "rest" or "bulk" (the shop calls no segmentio endpoint)')
    with app.lock:
        return app.quota.burst(kind, calls, now)


def control(app: AdminApp, req: FakeRequest) -> FakeResponse | None:
    now = time.time()
    route = (req.method, req.path.rstrip("/"))
    if route == ("GET", "/__fake/customers"):
        with app.lock:
            app.finish_due_actions(now)
            return FakeResponse(200, list(app.customers.by_id.values()))
    if route in (("GET", "/__fake/metadata-schemas"), ("POST", "/__fake/metadata-schemas")):
        if req.method == "POST":
            body = req.body if isinstance(req.body, dict) else {}
            schemas = body.get("schemas", [])
            if not isinstance(schemas, list):
                return FakeResponse(400, {"error": "schemas must be a list"})
            with app.lock:
                app.metadata.schemas, app.metadata.enforce = schemas, bool(body.get("enforce", False))
        with app.lock:
            return FakeResponse(200, {"schemas": app.metadata.schemas, "enforce": app.metadata.enforce})
    if route == ("GET", "/__fake/quota"):
        with app.lock:
            return FakeResponse(200, app.quota.view(now, history=req.query.get("history") in ("1", "true")))
    if route == ("POST", "/__fake/quota"):
        return FakeResponse(200, update_quota(app, req.body, now))
    if route == ("DELETE", "/__fake/quota"):
        with app.lock:
            app.quota.reconfigure(app.initial_quota, now, reset=True)
            return FakeResponse(200, app.quota.view(now))
    if route == ("POST", "/__fake/quota/shop"):
        return FakeResponse(200, shop_burst(app, req.body, now))
    if route in (("GET", "/__fake/auth"), ("POST", "/__fake/auth")):
        with app.lock:
            if req.method == "POST":
                app.access.set(req.body, now)
            return FakeResponse(200, app.access.describe(now))
    if route in (("GET", "/__fake/async-actions"), ("POST", "/__fake/async-actions")):
        with app.lock:
            if req.method == "POST":
                app.actions.configure(req.body)
            app.finish_due_actions(now)
            return FakeResponse(200, app.actions.describe(now))
    return None


# -- command line --------------------------------------------------------------------------------


def add_quota_arguments(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("quota (sandbox.quota; default: no limits, no rate headers)")
    group.add_argument(
        "--quota",
        default=os.environ.get("FAKE_VOUCHERIFY_QUOTA"),
        help="a POST /__fake/quota body (JSON), applied first; FAKE_VOUCHERIFY_QUOTA also works",
    )
    group.add_argument("--plan", choices=sorted(PLANS))
    for key in LIMIT_KEYS:
        group.add_argument("--" + key.replace("_", "-"), type=int, metavar="N")
    group.add_argument("--cycle-start-day", type=int, metavar="DAY")
    group.add_argument("--period-scale", type=float, help="every period's length times this (fast clock)")
    for period in ("minute", "hour", "day", "cycle"):
        group.add_argument(f"--{period}-s", type=float, metavar="SECONDS", help=f"length of one {period}")
    group.add_argument(
        "--align", choices=("clock", "now"), help="windows from the clock (default) or start-up"
    )
    group.add_argument("--shop-calls-per-minute", type=float, metavar="N", help="the shop's REST load")
    group.add_argument("--shop-bulk-calls-per-hour", type=float, metavar="N", help="the shop's bulk load")
    group.add_argument("--bulk-delay-s", type=float, default=0.0, help="bulk async action: accepted -> DONE")


def quota_spec(args: argparse.Namespace) -> dict[str, Any]:
    """The start-up quota configuration from ``--quota`` and the single flags (which win)."""
    spec: dict[str, Any] = json.loads(args.quota) if args.quota else {}
    if not isinstance(spec, dict):
        raise ValueError("--quota must be a JSON object")
    for key in ("plan", *LIMIT_KEYS, "cycle_start_day", "period_scale", "align"):
        if getattr(args, key) is not None:
            spec[key] = getattr(args, key)
    periods = {p: getattr(args, f"{p}_s") for p in ("minute", "hour", "day", "cycle")}
    if any(v is not None for v in periods.values()):
        spec["periods"] = {**spec.get("periods", {}), **{k: v for k, v in periods.items() if v is not None}}
    shop = {
        "calls_per_minute": args.shop_calls_per_minute,
        "bulk_calls_per_hour": args.shop_bulk_calls_per_hour,
    }
    if any(v is not None for v in shop.values()):
        spec["shop"] = {**spec.get("shop", {}), **{k: v for k, v in shop.items() if v is not None}}
    QuotaConfig().updated(spec, 0.0)  # fail at start-up, not at the first request
    return spec
