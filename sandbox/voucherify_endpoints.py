"""The fake Voucherify's endpoints (REST and segmentio): bodies, the store, bulk async actions.

Routing, credentials and the quota are ``sandbox.fake_voucherify``'s; this base class answers
a call once it is let through.
"""

from __future__ import annotations

import threading
import time
from typing import Any

from sandbox.async_actions import AsyncActions, customer_error
from sandbox.core import FakeApp
from sandbox.customers import (
    CUSTOMER_FIELDS,
    CustomerNotFoundError,
    CustomerStore,
    MetadataSchemas,
    random_id,
)
from sandbox.schemas import validation_errors
from sandbox.wire import FakeRequest, FakeResponse, error_key, status_line

ASYNC_ACTIONS_PREFIX = "/v1/async-actions/"
# Voucherify's wording for the errors the fake produces itself.
ERROR_MESSAGES = {
    "invalid_payload": "Invalid payload",
    "unauthorized": "Unauthorized",
    "forbidden": "Forbidden",
    "not_found": "Resource not found",
    "invalid_query_params": "Invalid query params",
    "method_not_allowed": "Method not allowed",
    "invalid_metadata": "Invalid metadata",
}


PERMANENT_DELETION = "/permanent-deletion"


def _bulk_problem(body: Any, most: int | None) -> str | None:
    """Why a bulk request is refused as a whole (400), or None.  ``most``: the stricter count
    set on the fake (None: only the 10 MB body bound, answered 413 before this)."""
    if not isinstance(body, list) or not body:
        return "Body must be a non-empty array of customers"
    if most is not None and len(body) > most:
        return f"At most {most} customers per request, got {len(body)}"
    for index, item in enumerate(body):
        if not isinstance(item, dict) or not isinstance(item.get("source_id"), str) or not item["source_id"]:
            return f"$[{index}].source_id: every customer needs a source_id (a non-empty string)"
    return None


class VoucherifyEndpoints(FakeApp):
    lock: threading.Lock
    allow_null_clearing: bool
    customers: CustomerStore
    metadata: MetadataSchemas
    actions: AsyncActions

    def error_body(self, status: int, message: str, details: str = "") -> Any:
        return {
            "code": status,
            "key": error_key(status),
            "message": message,
            "details": details or message,
            "request_id": random_id("v-", 18).lower(),
        }

    def error(self, status: int, details: str, key: str | None = None, **kw: Any) -> FakeResponse:
        message = ERROR_MESSAGES.get(key or "", status_line(status).split(" ", 1)[1])
        body = self.error_body(status, message, details)
        if key:
            body["key"] = key
        return FakeResponse(status, body, **kw)

    def validate(self, schema: str, req: FakeRequest) -> FakeResponse | None:
        errors = validation_errors(schema, req.body, self.allow_null_clearing)
        if not errors:
            return None
        return self.error(
            400, "; ".join(errors), "invalid_payload", schema_valid=False, validation_errors=errors
        )

    def undefined_metadata(self, customer: Any) -> str | None:
        with self.lock:
            key = self.metadata.undefined_key(customer)
        return (
            None
            if key is None
            else f"customer metadata property '{key}' is not defined in the metadata schema"
        )

    def metadata_refusal(self, customer: Any) -> FakeResponse | None:
        """400 when a customer's metadata holds a key the customer schema does not define."""
        problem = self.undefined_metadata(customer)
        return None if problem is None else self.error(400, problem, "invalid_metadata", schema_valid=True)

    # -- REST --------------------------------------------------------------------------------

    def list_metadata_schemas(self, req: FakeRequest) -> FakeResponse:
        with self.lock:
            schemas = list(self.metadata.schemas)
        return FakeResponse(
            200, {"object": "list", "data_ref": "schemas", "schemas": schemas, "total": len(schemas)}
        )

    def create_customer(self, req: FakeRequest) -> FakeResponse:
        invalid = self.validate("CustomersCreateRequestBody", req) or self.metadata_refusal(req.body)
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

    def permanent_deletion(self, req: FakeRequest) -> FakeResponse:
        """``POST /v1/customers/{id or source_id}/permanent-deletion``: as Voucherify answers
        (reference customers.json), 404 for a customer it does not know."""
        key = req.path[len("/v1/customers/") : -len(PERMANENT_DELETION)]
        with self.lock:
            customer = self.customers.delete(key)
        if customer is None:
            return self.error(404, f"Cannot find customer with id {key}", "not_found")
        return FakeResponse(
            200,
            {
                "id": "del_" + customer["id"].removeprefix("cust_"),
                "created_at": customer.get("created_at") or "2024-01-01T00:00:00.000Z",
                "related_object_id": customer["id"],
                "related_object": "customer",
                "status": "DONE",
                "data_json": {
                    "events": 0,
                    "customer_events": 0,
                    "daily_events": 0,
                    "segments": 0,
                    "orders": 0,
                    "order_events": 0,
                    "customer": 1,
                },
                "object": "pernament_deletion",
            },
        )

    def create_event(self, req: FakeRequest) -> FakeResponse:
        invalid = self.validate("EventsCreateRequestBody", req) or self.metadata_refusal(req.body["customer"])
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
        body = req.body
        with self.lock:
            most = self.actions.max_customers
        problem = _bulk_problem(body, most)
        if problem is not None:
            return self.error(
                400, problem, "invalid_payload", schema_valid=False, validation_errors=[problem]
            )
        valid: list[dict[str, Any]] = []
        errors: list[dict[str, str]] = []
        invalid: list[str] = []
        for index, item in enumerate(body):
            source_id = item["source_id"]
            # One customer's schema errors, with its place in the request ("$[3].email: ...").
            schema_errors = validation_errors(
                "CustomersBulkAsyncRequestBody", [item], self.allow_null_clearing
            )
            schema_errors = [f"$[{index}]" + e.removeprefix("$[0]") for e in schema_errors]
            invalid += schema_errors
            metadata_problem = self.undefined_metadata(item)
            with self.lock:
                scripted = self.actions.scripted_failure(source_id)
            if schema_errors:
                errors.append(
                    customer_error(source_id, "invalid_payload", "Invalid payload", "; ".join(schema_errors))
                )
            elif metadata_problem is not None:
                errors.append(
                    customer_error(source_id, "invalid_metadata", "Invalid metadata", metadata_problem)
                )
            elif scripted is not None:
                errors.append(scripted)
            else:
                valid.append(item)
        now = time.time()
        with self.lock:
            action = self.actions.create(valid, errors, [c["source_id"] for c in body], now)
            self.finish_due_actions(now)
        return FakeResponse(
            202, {"async_action_id": action.id}, schema_valid=not invalid, validation_errors=invalid
        )

    def finish_due_actions(self, now: float) -> None:
        """Apply the customers of every bulk action finished by ``now`` (the caller holds the lock)."""
        for action in self.actions.due(now):
            if action.fails:
                continue
            for customer in action.customers:
                try:
                    self.customers.upsert(customer)
                    action.done_count += 1
                except CustomerNotFoundError as exc:
                    detail = f"Cannot find customer with id {exc}"
                    action.errors.append(
                        customer_error(customer["source_id"], "not_found", "Resource not found", detail)
                    )

    def get_async_action(self, req: FakeRequest) -> FakeResponse:
        action_id = req.path[len(ASYNC_ACTIONS_PREFIX) :]
        now = time.time()
        with self.lock:
            action = self.actions.get(action_id)
            view = action.view(now) if action is not None else None
        if view is None:
            return self.error(404, f"Cannot find async_action with id {action_id}", "not_found")
        return FakeResponse(200, view)

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
