"""Fake Voucherify: the REST endpoints and the "segmentio" endpoints the connector calls.

``python -m sandbox.fake_voucherify --port N --app-id ID --secret-key KEY [--name label]``

REST (``X-App-Id`` / ``X-App-Token``; bodies validated against Voucherify's request schemas):
``POST /v1/customers`` (upsert by ``id`` or ``source_id``), ``GET /v1/customers[?limit=]``,
``GET /v1/customers/{id or source_id}``, ``POST /v1/events``, ``POST /v1/customers/bulk/async``,
``GET /v1/metadata-schemas``.

segmentio (``authorization: Basic base64(app_id)``, ``secret-key: base64(secret_key)``):
``POST /segmentio/customer-processing``, ``/segmentio/event-processing``,
``/segmentio/group-processing``, ``GET /segmentio/test-authentication``.

Extra control endpoints: ``GET /__fake/customers`` (the customer store), plus ``sandbox.core``'s,
and the project's metadata schemas:

- ``GET /__fake/metadata-schemas`` -> ``{"schemas": [...], "enforce": bool}``
- ``POST /__fake/metadata-schemas`` with ``{"schemas": [...], "enforce": bool}``: what
  ``GET /v1/metadata-schemas`` lists (Voucherify's ``MetadataSchemaDeprecated`` objects), and
  whether customer upserts, bulk upserts and events' customers are refused (400
  ``invalid_metadata``, as a project whose customer schema has ``allow_defined_only``) when their
  metadata holds a key the ``related_object: "customer"`` schema does not define.  Default: no
  schemas, not enforced (``POST /__fake/reset`` restores it).
"""

from __future__ import annotations

import argparse
import base64
import hmac
import os
import secrets
import string
import sys
import time
from collections.abc import Callable
from typing import Any

from sandbox.core import FakeApp
from sandbox.schemas import NAMES, request_validator, validation_errors
from sandbox.server import add_common_arguments, run
from sandbox.wire import FakeRequest, FakeResponse, error_key, status_line

DEFAULT_PORT = 9101
CUSTOMER_FIELDS = ("name", "description", "email", "phone", "birthdate", "birthday")
_ALPHABET = string.ascii_letters + string.digits
# Voucherify's wording for the errors the fake produces itself.
ERROR_MESSAGES = {
    "invalid_payload": "Invalid payload",
    "unauthorized": "Unauthorized",
    "not_found": "Resource not found",
    "invalid_query_params": "Invalid query params",
    "method_not_allowed": "Method not allowed",
    "invalid_metadata": "Invalid metadata",
}


def _random_id(prefix: str, length: int = 24) -> str:
    return prefix + "".join(secrets.choice(_ALPHABET) for _ in range(length))


def _iso_now() -> str:
    now = time.time()
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(now)) + f".{int(now % 1 * 1000):03d}Z"


def _same(given: str, expected: str) -> bool:
    return hmac.compare_digest(given.encode(), expected.encode())


def _b64(value: str) -> str:
    return base64.b64encode(value.encode()).decode()


class CustomerNotFoundError(LookupError):
    pass


class CustomerStore:
    """In-memory customers, upserted the way Voucherify does (by ``id``, else ``source_id``)."""

    def __init__(self) -> None:
        self.by_id: dict[str, dict[str, Any]] = {}
        self.by_source_id: dict[str, str] = {}

    def clear(self) -> None:
        self.by_id.clear()
        self.by_source_id.clear()

    def get(self, key: str) -> dict[str, Any] | None:
        if key in self.by_id:
            return self.by_id[key]
        cust_id = self.by_source_id.get(key)
        return self.by_id.get(cust_id) if cust_id else None

    def upsert(self, body: dict[str, Any]) -> dict[str, Any]:
        customer: dict[str, Any] | None
        if isinstance(body.get("id"), str):
            customer = self.by_id.get(body["id"])
            if customer is None:
                raise CustomerNotFoundError(body["id"])
        elif isinstance(body.get("source_id"), str):
            customer = self.get_by_source_id(body["source_id"])
        else:
            customer = None
        if customer is None:
            customer = self._create(body.get("source_id"))
        for name in CUSTOMER_FIELDS:
            if name in body:
                customer["birthdate" if name == "birthday" else name] = body[name]
        if "address" in body:
            address = body["address"]
            if isinstance(address, dict):
                merged = dict(customer.get("address") or {})
                merged.update(address)
                customer["address"] = merged
            else:
                customer["address"] = None
        if "metadata" in body:
            metadata = body["metadata"]
            if isinstance(metadata, dict):
                # Only the keys sent change; a null value removes the key.
                merged_meta = dict(customer["metadata"])
                merged_meta.update(metadata)
                customer["metadata"] = {k: v for k, v in merged_meta.items() if v is not None}
            else:
                customer["metadata"] = {}
        customer["updated_at"] = _iso_now()
        return customer

    def get_by_source_id(self, source_id: str) -> dict[str, Any] | None:
        cust_id = self.by_source_id.get(source_id)
        return self.by_id.get(cust_id) if cust_id else None

    def _create(self, source_id: Any) -> dict[str, Any]:
        cust_id = _random_id("cust_")
        customer: dict[str, Any] = {
            "id": cust_id,
            "source_id": source_id if isinstance(source_id, str) else None,
            "name": None,
            "description": None,
            "email": None,
            "phone": None,
            "birthdate": None,
            "address": None,
            "metadata": {},
            "system_metadata": {},
            "created_at": _iso_now(),
            "updated_at": None,
            "object": "customer",
        }
        self.by_id[cust_id] = customer
        if customer["source_id"] is not None:
            self.by_source_id[customer["source_id"]] = cust_id
        return customer

    def listing(self, limit: int) -> list[dict[str, Any]]:
        # Voucherify lists newest first.
        return list(reversed(self.by_id.values()))[:limit]


Handler = Callable[[FakeRequest], FakeResponse]


class FakeVoucherify(FakeApp):
    kind = "fake-voucherify"

    def __init__(
        self,
        app_id: str,
        secret_key: str,
        *,
        name: str = "voucherify",
        allow_null_clearing: bool = True,
        max_records: int = 100_000,
    ) -> None:
        super().__init__(name, max_records=max_records)
        self.app_id = app_id
        self.secret_key = secret_key
        self.allow_null_clearing = allow_null_clearing
        self.segmentio_authorization = "Basic " + _b64(app_id)
        self.segmentio_secret = _b64(secret_key)
        self.customers = CustomerStore()
        self.delivered_keys: set[str] = set()
        self.metadata_schemas: list[Any] = []
        self.enforce_metadata = False
        self.routes: dict[tuple[str, str], tuple[str, Handler]] = {
            ("POST", "/v1/customers"): ("rest", self.create_customer),
            ("GET", "/v1/customers"): ("rest", self.list_customers),
            ("POST", "/v1/events"): ("rest", self.create_event),
            ("POST", "/v1/customers/bulk/async"): ("rest", self.bulk_async),
            ("GET", "/v1/metadata-schemas"): ("rest", self.list_metadata_schemas),
            ("POST", "/segmentio/customer-processing"): ("segmentio", self.segmentio_customer),
            ("POST", "/segmentio/event-processing"): ("segmentio", self.segmentio_event),
            ("POST", "/segmentio/group-processing"): ("segmentio", self.segmentio_group),
            ("GET", "/segmentio/test-authentication"): ("segmentio", self.segmentio_test_auth),
        }
        self.known_paths = {path for _method, path in self.routes}
        # Compile the validators now rather than on the first request.
        for schema in NAMES:
            request_validator(schema, allow_null_clearing)

    def error_body(self, status: int, message: str, details: str = "") -> Any:
        return {
            "code": status,
            "key": error_key(status),
            "message": message,
            "details": details or message,
            "request_id": _random_id("v-", 18).lower(),
        }

    def error(self, status: int, details: str, key: str | None = None, **kw: Any) -> FakeResponse:
        message = ERROR_MESSAGES.get(key or "", status_line(status).split(" ", 1)[1])
        body = self.error_body(status, message, details)
        if key:
            body["key"] = key
        return FakeResponse(status, body, **kw)

    def clear_state(self) -> None:
        with self.lock:
            self.customers.clear()
            self.delivered_keys.clear()
            self.metadata_schemas = []
            self.enforce_metadata = False

    def control(self, req: FakeRequest) -> FakeResponse | None:
        route = (req.method, req.path.rstrip("/"))
        if route == ("GET", "/__fake/customers"):
            with self.lock:
                return FakeResponse(200, list(self.customers.by_id.values()))
        if route == ("GET", "/__fake/metadata-schemas"):
            with self.lock:
                return FakeResponse(200, {"schemas": self.metadata_schemas, "enforce": self.enforce_metadata})
        if route == ("POST", "/__fake/metadata-schemas"):
            body = req.body if isinstance(req.body, dict) else {}
            schemas = body.get("schemas", [])
            if not isinstance(schemas, list):
                return FakeResponse(400, {"error": "schemas must be a list"})
            with self.lock:
                self.metadata_schemas = schemas
                self.enforce_metadata = bool(body.get("enforce", False))
                return FakeResponse(200, {"schemas": schemas, "enforce": self.enforce_metadata})
        return None

    def _defined_customer_metadata(self) -> set[str]:
        defined: set[str] = set()
        for schema in self.metadata_schemas:
            if isinstance(schema, dict) and schema.get("related_object") == "customer":
                props = schema.get("properties")
                if isinstance(props, dict):
                    defined |= {k for k, v in props.items() if not (isinstance(v, dict) and v.get("deleted"))}
        return defined

    def metadata_refusal(self, customers: list[Any]) -> FakeResponse | None:
        """400 when a customer's metadata holds a key the customer schema does not define."""
        with self.lock:
            if not self.enforce_metadata:
                return None
            defined = self._defined_customer_metadata()
        for customer in customers:
            metadata = customer.get("metadata") if isinstance(customer, dict) else None
            for key in metadata or {}:
                if key not in defined:
                    return self.error(
                        400,
                        f"customer metadata property '{key}' is not defined in the metadata schema",
                        "invalid_metadata",
                        schema_valid=True,
                    )
        return None

    def list_metadata_schemas(self, req: FakeRequest) -> FakeResponse:
        with self.lock:
            schemas = list(self.metadata_schemas)
        return FakeResponse(
            200, {"object": "list", "data_ref": "schemas", "schemas": schemas, "total": len(schemas)}
        )

    # -- routing and auth --------------------------------------------------------------------

    def handle(self, req: FakeRequest) -> FakeResponse:
        route = self.routes.get((req.method, req.path))
        if route is None and req.method == "GET" and req.path.startswith("/v1/customers/"):
            route = ("rest", self.get_customer)
        if route is None:
            if req.path in self.known_paths:
                return self.error(405, f"{req.method} is not allowed on {req.path}", "method_not_allowed")
            return self.error(404, f"Resource {req.path} not found", "not_found")
        auth_style, handler = route
        denied = self.check_rest_auth(req) if auth_style == "rest" else self.check_segmentio_auth(req)
        if denied is not None:
            return self.error(401, denied, "unauthorized")
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

    def validate(self, schema: str, req: FakeRequest) -> FakeResponse | None:
        errors = validation_errors(schema, req.body, self.allow_null_clearing)
        if not errors:
            return None
        return self.error(
            400,
            "; ".join(errors),
            "invalid_payload",
            schema_valid=False,
            validation_errors=errors,
        )

    # -- REST --------------------------------------------------------------------------------

    def create_customer(self, req: FakeRequest) -> FakeResponse:
        invalid = self.validate("CustomersCreateRequestBody", req) or self.metadata_refusal([req.body])
        if invalid is not None:
            return invalid
        try:
            with self.lock:
                customer = dict(self.customers.upsert(req.body))
        except CustomerNotFoundError as exc:
            return self.error(404, f"Cannot find customer with id {exc}", "not_found", schema_valid=True)
        return FakeResponse(200, customer, schema_valid=True)

    def list_customers(self, req: FakeRequest) -> FakeResponse:
        raw_limit = req.query.get("limit", "10")
        try:
            limit = int(raw_limit) if isinstance(raw_limit, str) else 10
        except ValueError:
            limit = -1
        if not 1 <= limit <= 100:
            return self.error(400, "limit must be an integer between 1 and 100", "invalid_query_params")
        with self.lock:
            customers = self.customers.listing(limit)
            total = len(self.customers.by_id)
        body = {
            "object": "list",
            "data_ref": "customers",
            "customers": customers,
            "total": total,
            "has_more": total > len(customers),
        }
        return FakeResponse(200, body)

    def get_customer(self, req: FakeRequest) -> FakeResponse:
        key = req.path[len("/v1/customers/") :]
        with self.lock:
            customer = self.customers.get(key)
        if customer is None:
            return self.error(404, f"Cannot find customer with id {key}", "not_found")
        return FakeResponse(200, customer)

    def create_event(self, req: FakeRequest) -> FakeResponse:
        invalid = self.validate("EventsCreateRequestBody", req) or self.metadata_refusal(
            [req.body["customer"]]
        )
        if invalid is not None:
            return invalid
        body = req.body
        sent = body["customer"]
        with self.lock:
            # A custom event creates its customer when unknown, as Voucherify does.
            if isinstance(sent.get("id"), str):
                customer = self.customers.get(sent["id"])
            elif isinstance(sent.get("source_id"), str):
                customer = self.customers.get_by_source_id(sent["source_id"])
            else:
                customer = None
            if customer is None:
                try:
                    customer = self.customers.upsert(sent)
                except CustomerNotFoundError as exc:
                    return self.error(
                        404, f"Cannot find customer with id {exc}", "not_found", schema_valid=True
                    )
            summary = {k: customer.get(k) for k in ("id", "name", "email", "source_id", "metadata")}
        answer = {
            "object": "event",
            "type": body["event"],
            "customer": {**summary, "object": "customer"},
            "referral": body.get("referral"),
            "loyalty": body.get("loyalty"),
        }
        return FakeResponse(200, answer, schema_valid=True)

    def bulk_async(self, req: FakeRequest) -> FakeResponse:
        invalid = self.validate("CustomersBulkAsyncRequestBody", req) or self.metadata_refusal(req.body)
        if invalid is not None:
            return invalid
        with self.lock:
            for item in req.body:
                self.customers.upsert(item)
        return FakeResponse(202, {"async_action_id": _random_id("aa_")}, schema_valid=True)

    # -- segmentio (the Actions destination's payloads, 3.2) ---------------------------------

    def _require(self, req: FakeRequest, *paths: str) -> FakeResponse | None:
        if not isinstance(req.body, dict):
            return self.error(400, "Body must be a JSON object", "invalid_payload", schema_valid=False)
        errors = []
        for dotted in paths:
            node: Any = req.body
            for part in dotted.split("."):
                node = node.get(part) if isinstance(node, dict) else None
            if node is None or node == "":
                errors.append(f"The root value is missing the required field '{dotted}'.")
        if errors:
            return self.error(
                400, "; ".join(errors), "invalid_payload", schema_valid=False, validation_errors=errors
            )
        return None

    def segmentio_customer(self, req: FakeRequest) -> FakeResponse:
        invalid = self._require(req, "source_id")
        if invalid is not None:
            return invalid
        body = req.body
        update = {k: body[k] for k in ("source_id", *CUSTOMER_FIELDS, "metadata") if k in body}
        if "name" not in body and (body.get("first_name") or body.get("last_name")):
            update["name"] = " ".join(str(body[k]) for k in ("first_name", "last_name") if body.get(k))
        if isinstance(body.get("address"), dict):
            address = dict(body["address"])
            if "street" in address:
                address.setdefault("line_1", address.pop("street"))
            update["address"] = address
        with self.lock:
            customer = dict(self.customers.upsert({**update, "source_id": str(body["source_id"])}))
        return FakeResponse(200, customer, schema_valid=True)

    def segmentio_event(self, req: FakeRequest) -> FakeResponse:
        invalid = self._require(req, "event", "customer.source_id")
        if invalid is not None:
            return invalid
        return FakeResponse(200, {"object": "event", "type": req.body["event"]}, schema_valid=True)

    def segmentio_group(self, req: FakeRequest) -> FakeResponse:
        invalid = self._require(req, "group_id", "customer.source_id")
        if invalid is not None:
            return invalid
        return FakeResponse(200, {"object": "group", "group_id": req.body["group_id"]}, schema_valid=True)

    def segmentio_test_auth(self, req: FakeRequest) -> FakeResponse:
        return FakeResponse(200, {"authenticated": True})


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
    args = parser.parse_args(argv)
    if not args.app_id or not args.secret_key:
        parser.error("--app-id and --secret-key are required (or FAKE_VOUCHERIFY_APP_ID/_SECRET_KEY)")
    app = FakeVoucherify(
        args.app_id,
        args.secret_key,
        name=args.name,
        allow_null_clearing=not args.strict_nulls,
        max_records=args.max_records,
    )
    return run(app, args)


if __name__ == "__main__":
    sys.exit(main())
