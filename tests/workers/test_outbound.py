"""A stored request (workers.outbound): its standard headers by name, read back whole."""

from __future__ import annotations

import orjson

from connector import CHANNEL, USER_AGENT
from workers.outbound import OutboundRequest


def _request(headers: dict[str, str]) -> OutboundRequest:
    return OutboundRequest(
        method="POST",
        path="/v1/customers",
        body={"source_id": "u1"},
        idempotency_key="c:v:m-1:upsert_customer",
        action="upsert_customer",
        headers=headers,
        customer="u1",
    )


def test_standard_headers_are_stored_by_name_and_read_back_whole() -> None:
    voucherify = {
        "Content-Type": "application/json",
        "User-Agent": USER_AGENT,
        "X-Voucherify-Channel": CHANNEL,
    }
    segment = {"Content-Type": "application/json", "User-Agent": USER_AGENT}
    cases = [
        {**voucherify, "Idempotency-Key": "c:v:m-1:upsert_customer"},
        voucherify,
        {**segment, "Idempotency-Key": "c:v:m-1:upsert_customer"},
        {**voucherify, "Idempotency-Key": "another key"},  # not its own key: kept as it is
        {"Content-Type": "application/json", "X-Extra": "1"},
        {},
    ]
    for headers in cases:
        request = _request(headers)
        stored = orjson.loads(orjson.dumps(request.to_dict()))
        assert OutboundRequest.from_dict(stored) == request, headers
    # The usual set costs a few bytes, not ~190.
    packed = _request({**voucherify, "Idempotency-Key": "c:v:m-1:upsert_customer"}).to_dict()
    assert packed["headers"] == "v+k"
    # Records written before (headers as a dict) still read.
    old = {**packed, "headers": {**voucherify, "Idempotency-Key": "k"}}
    assert OutboundRequest.from_dict(old).headers["Idempotency-Key"] == "k"
