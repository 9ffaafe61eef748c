"""Voucherify webhooks for tests: load an example, wrap it in an envelope version, sign it.

The examples live in ``tests/fixtures/voucherify_webhooks/<voucherify type>.json`` as
``{"voucherify_type", "webhook", "source", "example"}`` where ``example`` is the event's ``data``
(the objects: customer, order, voucher...).  Signatures are computed here independently of
:mod:`connector.signatures`, so tests check the production code against a second implementation.

Typical end-to-end use::

    body = wrap(load_example("customer.redemption.succeeded"), "customer.redemption.succeeded",
                "2024-01-01", event_id="evcus_1", created_at=iso_now())
    raw, headers = signed_request(body, "secret")
    client.post("/webhooks/voucherify/acme", data=raw, headers=headers)
"""

from __future__ import annotations

import copy
import hashlib
import hmac
import json
import uuid
from collections.abc import Mapping
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

FIXTURES_DIR = Path(__file__).resolve().parent.parent / "fixtures" / "voucherify_webhooks"

V2024 = "2024-01-01"
V2018 = "2018-08-01"
ACTIVITY = "activity"
VERSIONS = (V2024, V2018, ACTIVITY)

SIGNATURE_HEADER = "x-voucherify-signature"
TEST_PROJECT_ID = "proj_T3stPr0j3ct"
TEST_WEBHOOK_ID = "wh_T3stW3bh00kC0nn3ct0r"


# The Segment messageId of a Voucherify event, as docs/choices.md documents it (a contract: changing
# it makes Segment take every redelivered event for a new one).  Written here from that document,
# not imported from the product, so that tests check the code against the documented formula.
SOURCE_MESSAGE_ID_NAMESPACE = uuid.UUID("7d0b6f3e-2c1a-5e9b-9f4d-3a8e6c1b2d40")


def documented_message_id(connection_id: str, event_id: str) -> str:
    """``"vf-" + UUIDv5(namespace, "<connection id>\\nvoucherify_to_segment\\n<event id>\\nsegment_track")``."""
    name = f"{connection_id}\nvoucherify_to_segment\n{event_id}\nsegment_track"
    return f"vf-{uuid.uuid5(SOURCE_MESSAGE_ID_NAMESPACE, name)}"


def fixture_names() -> list[str]:
    """Voucherify types with an example fixture, sorted."""
    return sorted(path.stem for path in FIXTURES_DIR.glob("*.json"))


def load_fixture(vf_type: str) -> dict[str, Any]:
    """The whole fixture file: ``voucherify_type``, ``webhook``, ``source``, ``example``."""
    with (FIXTURES_DIR / f"{vf_type}.json").open(encoding="utf-8") as fh:
        fixture: dict[str, Any] = json.load(fh)
    return fixture


def load_example(vf_type: str) -> dict[str, Any]:
    """A fresh copy of the example ``data`` of one Voucherify type."""
    example: dict[str, Any] = load_fixture(vf_type)["example"]
    return example


def iso(epoch: float) -> str:
    """Voucherify's timestamp format: ``2024-01-01T11:11:11.111Z``."""
    moment = datetime.fromtimestamp(epoch, UTC)
    return moment.strftime("%Y-%m-%dT%H:%M:%S.") + f"{moment.microsecond // 1000:03d}Z"


def iso_now() -> str:
    return iso(datetime.now(UTC).timestamp())


def wrap(
    example_data: Mapping[str, Any],
    vf_type: str,
    version: str,
    event_id: str,
    created_at: str,
    *,
    project_id: str = TEST_PROJECT_ID,
    sendout_id: str | None = None,
    source_object: str = "webhook",
) -> dict[str, Any]:
    """``example_data`` in the envelope of ``version`` (``2024-01-01``, ``2018-08-01``, ``activity``).

    ``vf_type`` is put in the body as given (dotted ``customer.rewarded`` or an internal name
    ``EVENTS.CUSTOMER.REWARDED.MAIN``).  The 2024 sendout id defaults to one derived from the
    event id, so the same call gives the same bytes; pass ``sendout_id`` to simulate a resend.
    """
    data = copy.deepcopy(dict(example_data))
    if version == V2024:
        customer = data.get("customer")
        entity_id = customer.get("id") if isinstance(customer, Mapping) else None
        return {
            "id": sendout_id or "whs_" + hashlib.sha256(event_id.encode()).hexdigest()[:18],
            "project_id": project_id,
            "created_at": created_at,
            "type": vf_type,
            "data": data,
            "source": {
                "id": TEST_WEBHOOK_ID if source_object == "webhook" else "distr_T3stD1str1but10n",
                "object": source_object,
                "target_url": "https://connector.example/webhooks/voucherify/test",
            },
            "event": {
                "id": event_id,
                "type": vf_type,
                "created_at": created_at,
                "entity_id": entity_id or "",
                "group_id": "v-" + hashlib.sha256(event_id.encode()).hexdigest()[:18],
                "event_source": {"channel": "API"},
            },
        }
    if version == V2018:
        return {
            "id": event_id,
            "object": "event",
            "webhook_id": sendout_id or TEST_WEBHOOK_ID,
            "project_id": project_id,
            "created_at": created_at,
            "type": vf_type,
            "data": data,
            "metadata": {"source": "API"},
        }
    if version == ACTIVITY:
        return {
            "id": event_id,
            "type": vf_type,
            "data": data,
            "created_at": created_at,
            "group_id": "v-" + hashlib.sha256(event_id.encode()).hexdigest()[:18],
        }
    raise ValueError(f"unknown envelope version {version!r}; one of {', '.join(VERSIONS)}")


def dumps(body: Any, *, pretty: bool = False) -> bytes:
    """The body as Voucherify sends it (``JSON.stringify``: compact, UTF-8), or pretty-printed."""
    if pretty:
        return json.dumps(body, indent=2, ensure_ascii=False).encode("utf-8")
    return json.dumps(body, separators=(",", ":"), ensure_ascii=False).encode("utf-8")


def sign(raw: bytes, secret: str) -> str:
    """``x-voucherify-signature`` for ``raw``: hex HMAC-SHA256."""
    return hmac.new(secret.encode("utf-8"), raw, hashlib.sha256).hexdigest()


def sign_segment(raw: bytes, secret: str) -> str:
    """``X-Signature`` of Segment's Webhooks destination for ``raw``: hex HMAC-SHA1."""
    return hmac.new(secret.encode("utf-8"), raw, hashlib.sha1).hexdigest()


def signed_request(body: Any, secret: str, *, pretty: bool = False) -> tuple[bytes, dict[str, str]]:
    """Raw body and headers of a signed webhook POST.

    With ``pretty`` the body is sent indented but signed over its compact form, as happens when
    a proxy re-indents what Voucherify signed.
    """
    compact = dumps(body)
    raw = dumps(body, pretty=True) if pretty else compact
    return raw, {"Content-Type": "application/json", SIGNATURE_HEADER: sign(compact, secret)}
