"""Fake Voucherify: the REST endpoints and the "segmentio" endpoints the connector calls.

``python -m sandbox.fake_voucherify --port N --app-id ID --secret-key KEY [--name label]
[--plan business --period-scale 0.1 --shop-calls-per-minute 30 ...]`` (``--help`` lists them)

REST (``X-App-Id`` / ``X-App-Token``; bodies validated against Voucherify's request schemas):
``POST /v1/customers`` (upsert by ``id`` or ``source_id``), ``GET /v1/customers[?limit=]``,
``GET /v1/customers/{id or source_id}``, ``POST /v1/events``, ``POST /v1/customers/bulk/async``
(any number of customers up to the 10 MB body Voucherify documents -- a stricter
``max_customers`` is a setting of ``/__fake/async-actions`` --, each with a ``source_id``; 202
``{"async_action_id"}``; each customer's
schema or metadata failure is reported by its async action, ``sandbox.async_actions``),
``GET /v1/async-actions/{id}``, ``GET /v1/metadata-schemas``.

segmentio (``authorization: Basic base64(app_id)``, ``secret-key: base64(secret_key)``):
``POST /segmentio/customer-processing``, ``/segmentio/event-processing``,
``/segmentio/group-processing``, ``GET /segmentio/test-authentication``.

Order of checks for every project call: credentials revoked on demand (401/403), the
credentials (401), the quota (429, ``sandbox.quota``: the buckets, the shop's load, the headers
on every answer once a limit is configured), then the endpoint. 401/403 answers are not counted
(the key does not identify the project); every other answer is, 404 and 400 included.

Metadata schemas (``POST /__fake/metadata-schemas`` with ``{"schemas": [...], "enforce": bool}``):
what ``GET /v1/metadata-schemas`` lists (Voucherify's ``MetadataSchemaDeprecated`` objects), and
whether customer upserts and events' customers are refused (400 ``invalid_metadata``, as a
project whose customer schema has ``allow_defined_only``; in a bulk: that customer's error) when
their metadata holds a key the ``related_object: "customer"`` schema does not define. Default:
no schemas, not enforced. Every control endpoint: ``sandbox.core`` and ``sandbox.voucherify_admin``.
"""

from __future__ import annotations

import argparse
import base64
import dataclasses
import hmac
import os
import sys
import time
from collections.abc import Callable
from typing import Any

import gevent

from sandbox import voucherify_admin
from sandbox.async_actions import AsyncActions
from sandbox.customers import CustomerStore, MetadataSchemas
from sandbox.plans import QuotaConfig
from sandbox.quota import Quota, kind_of
from sandbox.schemas import NAMES, request_validator
from sandbox.server import add_common_arguments, run
from sandbox.voucherify_endpoints import ASYNC_ACTIONS_PREFIX, PERMANENT_DELETION, VoucherifyEndpoints
from sandbox.wire import FakeRequest, FakeResponse

DEFAULT_PORT = 9101
TICK_S = 0.25  # the shop's load and finished bulk actions are also applied between requests


def _same(given: str, expected: str) -> bool:
    return hmac.compare_digest(given.encode(), expected.encode())


def _b64(value: str) -> str:
    return base64.b64encode(value.encode()).decode()


Handler = Callable[[FakeRequest], FakeResponse]


class FakeVoucherify(VoucherifyEndpoints):
    kind = "fake-voucherify"

    def __init__(
        self,
        app_id: str,
        secret_key: str,
        *,
        name: str = "voucherify",
        allow_null_clearing: bool = True,
        max_records: int = 100_000,
        quota: dict[str, Any] | None = None,
        bulk_delay_s: float = 0.0,
    ) -> None:
        super().__init__(name, max_records=max_records)
        self.app_id = app_id
        self.secret_key = secret_key
        self.allow_null_clearing = allow_null_clearing
        self.segmentio_authorization = "Basic " + _b64(app_id)
        self.segmentio_secret = _b64(secret_key)
        self.customers = CustomerStore()
        self.delivered_keys: set[str] = set()
        self.metadata = MetadataSchemas()
        now = time.time()
        self.initial_quota = QuotaConfig().updated(quota or {}, now)
        self.quota = Quota(self.initial_quota, now)
        self.actions = AsyncActions(bulk_delay_s)
        self.access = voucherify_admin.AccessSwitch()
        self.routes: dict[tuple[str, str], Handler] = {
            ("POST", "/v1/customers"): self.create_customer,
            ("GET", "/v1/customers"): self.list_customers,
            ("POST", "/v1/events"): self.create_event,
            ("POST", "/v1/customers/bulk/async"): self.bulk_async,
            ("GET", "/v1/metadata-schemas"): self.list_metadata_schemas,
            ("POST", "/segmentio/customer-processing"): self.segmentio_customer,
            ("POST", "/segmentio/event-processing"): self.segmentio_event,
            ("POST", "/segmentio/group-processing"): self.segmentio_group,
            ("GET", "/segmentio/test-authentication"): self.segmentio_test_auth,
        }
        self.known_paths = {path for _method, path in self.routes}
        # Compile the validators now rather than on the first request.
        for schema in NAMES:
            request_validator(schema, allow_null_clearing)

    def clear_state(self) -> None:
        now = time.time()
        with self.lock:
            self.customers.clear()
            self.delivered_keys.clear()
            self.metadata.clear()
            self.quota.reconfigure(self.initial_quota, now, reset=True)
            self.actions.reset()
            self.access = voucherify_admin.AccessSwitch()

    def control(self, req: FakeRequest) -> FakeResponse | None:
        return voucherify_admin.control(self, req)

    def start_background(self) -> None:
        gevent.spawn(self._tick)

    def _tick(self) -> None:
        # Bounds the work of a catch-up; the state is also brought up to date on every request.
        while True:
            gevent.sleep(TICK_S)
            now = time.time()
            with self.lock:
                self.quota.catch_up(now)
                self.finish_due_actions(now)

    # -- the quota and the legacy rate limit ---------------------------------------------------

    def set_rate_limit(self, limit: int | None, window_s: float) -> None:
        """``rate_limit_per_minute`` of ``/__fake/faults``: the per-minute API bucket, whose
        windows then start at this moment (as the old sliding window did with the first call)."""
        now = time.time()
        with self.lock:
            config = dataclasses.replace(
                self.quota.config,
                legacy_limit=limit,
                legacy_window_s=window_s if limit is not None else None,
                legacy_origin=now if limit is not None else None,
            )
            if config != self.quota.config:
                self.quota.reconfigure(config, now)

    def rate_limit_settings(self) -> tuple[int | None, float]:
        config = self.quota.config
        return config.legacy_limit, config.legacy_window_s or 60.0

    def budget_check(self, req: FakeRequest) -> tuple[FakeResponse | None, dict[str, str]]:
        return None, {}  # the quota is applied in ``handle``, after the credentials

    def budget_peek(self, req: FakeRequest) -> dict[str, str]:
        with self.lock:
            return self.quota.peek(kind_of(req.path), time.time())

    # -- routing and auth --------------------------------------------------------------------

    def handle(self, req: FakeRequest) -> FakeResponse:
        now = time.time()
        with self.lock:
            self.finish_due_actions(now)
            blocked = self.access.status(now)
            if blocked is not None:
                self.access.refused += 1
        if blocked is not None:
            detail = "the API key was revoked" if blocked == 401 else "the API key may not do this"
            key = "unauthorized" if blocked == 401 else "forbidden"
            return self.error(blocked, f"{detail} (fake: /__fake/auth)", key, extra={"fault": "auth"})
        segmentio = req.path.startswith("/segmentio/")
        denied = self.check_segmentio_auth(req) if segmentio else self.check_rest_auth(req)
        if denied is not None:
            return self.error(401, denied, "unauthorized")
        kind = kind_of(req.path)
        with self.lock:
            allowed, headers = self.quota.admit(kind, "connector", now)
        if allowed:
            resp = self.route(req)
        else:
            body = self.error_body(429, "Too Many Requests", "Too many requests hit the API too quickly.")
            fault = {"fault": "rate_limit", "rate_limit_type": headers["X-Rate-Limit-Type"]}
            resp = FakeResponse(429, body, extra=fault)
        resp.headers.update(headers)
        return resp

    def route(self, req: FakeRequest) -> FakeResponse:
        handler = self.routes.get((req.method, req.path))
        deletion = req.path.startswith("/v1/customers/") and req.path.endswith(PERMANENT_DELETION)
        if handler is None and req.method == "POST" and deletion:
            handler = self.permanent_deletion
        if handler is None and req.method == "GET":
            if req.path.startswith("/v1/customers/"):
                handler = self.get_customer
            elif req.path.startswith(ASYNC_ACTIONS_PREFIX):
                handler = self.get_async_action
        if handler is None:
            if req.path in self.known_paths:
                return self.error(405, f"{req.method} is not allowed on {req.path}", "method_not_allowed")
            return self.error(404, f"Resource {req.path} not found", "not_found")
        if req.method == "POST" and req.json_error is not None:
            return self.error(400, f"Invalid JSON: {req.json_error}", "invalid_payload", schema_valid=False)
        resp = handler(req)
        self._note_idempotency(req, resp)
        return resp

    def check_rest_auth(self, req: FakeRequest) -> str | None:
        app_id = req.header("X-App-Id")
        token = req.header("X-App-Token")
        if not app_id or not token:
            return "Missing X-App-Id or X-App-Token header"
        # Both compared (no short-circuit) so timing says nothing about which one is wrong.
        ok_id = _same(app_id, self.app_id)
        ok_token = _same(token, self.secret_key)
        return None if ok_id and ok_token else "Invalid X-App-Id or X-App-Token"

    def check_segmentio_auth(self, req: FakeRequest) -> str | None:
        authorization = req.header("Authorization")
        secret = req.header("Secret-Key")
        if not authorization or not secret:
            return "Missing authorization or secret-key header"
        scheme, _, value = authorization.partition(" ")
        ok_id = scheme.lower() == "basic" and _same("Basic " + value.strip(), self.segmentio_authorization)
        ok_secret = _same(secret.strip(), self.segmentio_secret)
        return None if ok_id and ok_secret else "Invalid authorization or secret-key header"

    def _note_idempotency(self, req: FakeRequest, resp: FakeResponse) -> None:
        # Lets tests spot a second successful delivery of the same idempotency key.
        key = req.header("Idempotency-Key")
        if not key or not (200 <= resp.status < 300):
            return
        with self.lock:
            seen = key in self.delivered_keys
            self.delivered_keys.add(key)
        resp.extra = {**(resp.extra or {}), "idempotency_key_seen": seen}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m sandbox.fake_voucherify", description=__doc__.split("\n")[0]
    )
    add_common_arguments(parser, DEFAULT_PORT)
    # Defaults from the environment keep keys off the command line (``ps``) when wanted.
    parser.add_argument("--app-id", default=os.environ.get("FAKE_VOUCHERIFY_APP_ID"))
    parser.add_argument("--secret-key", default=os.environ.get("FAKE_VOUCHERIFY_SECRET_KEY"))
    parser.add_argument("--name", default="voucherify", help="label used in log lines and /__fake/health")
    parser.add_argument(
        "--strict-nulls",
        action="store_true",
        help="reject null customer attributes the schema types as strings (default: accept, SPEC 3.5)",
    )
    voucherify_admin.add_quota_arguments(parser)
    args = parser.parse_args(argv)
    if not args.app_id or not args.secret_key:
        parser.error("--app-id and --secret-key are required (or FAKE_VOUCHERIFY_APP_ID/_SECRET_KEY)")
    try:
        quota = voucherify_admin.quota_spec(args)
    except ValueError as exc:
        parser.error(f"quota: {exc}")
    if args.bulk_delay_s < 0:
        parser.error("--bulk-delay-s must be >= 0")
    app = FakeVoucherify(
        args.app_id,
        args.secret_key,
        name=args.name,
        allow_null_clearing=not args.strict_nulls,
        max_records=args.max_records,
        quota=quota,
        bulk_delay_s=args.bulk_delay_s,
    )
    return run(app, args)


if __name__ == "__main__":
    sys.exit(main())
