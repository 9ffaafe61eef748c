"""The fake Voucherify's customer store."""

from __future__ import annotations

import secrets
import string
import time
from typing import Any

CUSTOMER_FIELDS = ("name", "description", "email", "phone", "birthdate", "birthday")
_ALPHABET = string.ascii_letters + string.digits


def random_id(prefix: str, length: int = 24) -> str:
    return prefix + "".join(secrets.choice(_ALPHABET) for _ in range(length))


def iso_time(moment: float | None = None) -> str:
    now = time.time() if moment is None else moment
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(now)) + f".{int(now % 1 * 1000):03d}Z"


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

    def delete(self, key: str) -> dict[str, Any] | None:
        """Forget a customer (by ``id`` or ``source_id``): Voucherify's permanent deletion."""
        customer = self.get(key)
        if customer is None:
            return None
        self.by_id.pop(customer["id"], None)
        if customer.get("source_id") is not None:
            self.by_source_id.pop(customer["source_id"], None)
        return customer

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
        customer["updated_at"] = iso_time()
        return customer

    def get_by_source_id(self, source_id: str) -> dict[str, Any] | None:
        cust_id = self.by_source_id.get(source_id)
        return self.by_id.get(cust_id) if cust_id else None

    def _create(self, source_id: Any) -> dict[str, Any]:
        cust_id = random_id("cust_")
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
            "created_at": iso_time(),
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


class MetadataSchemas:
    """The project's metadata schemas, and whether undefined customer metadata is refused."""

    def __init__(self) -> None:
        self.schemas: list[Any] = []
        self.enforce = False

    def clear(self) -> None:
        self.schemas, self.enforce = [], False

    def _defined_customer_keys(self) -> set[str]:
        defined: set[str] = set()
        for schema in self.schemas:
            if isinstance(schema, dict) and schema.get("related_object") == "customer":
                props = schema.get("properties")
                if isinstance(props, dict):
                    defined |= {k for k, v in props.items() if not (isinstance(v, dict) and v.get("deleted"))}
        return defined

    def undefined_key(self, customer: Any) -> str | None:
        """The first metadata key of ``customer`` the customer schema does not define (enforced only)."""
        if not self.enforce:
            return None
        defined = self._defined_customer_keys()
        metadata = customer.get("metadata") if isinstance(customer, dict) else None
        for key in metadata if isinstance(metadata, dict) else {}:
            if key not in defined:
                return str(key)
        return None
