"""Hostile or odd Voucherify answers: no crash, no quota spent on nothing, nothing counted
delivered that was not read back (SPEC 10, 11)."""

from __future__ import annotations

import time

import pytest

from connector.quotas import QuotaSettings
from workers.delivery.transport import HTTPResult
from workers.outbound import OutboundRequest
from workers.targets.voucherify import server_wait
from workers.targets.voucherify_coalesce import REPLAY_MAX_BULK
from workers.targets.voucherify_fewer import MAX_ACTION_ERRORS, FewerCalls, read_state
from workers.targets.voucherify_quota import DEFAULT_PAUSE_SECONDS, reading

BULK = OutboundRequest(
    method="POST", path="/v1/customers/bulk/async", body=[], idempotency_key="k", action="b"
)


def answer(status: int, body: str = "", **headers: str) -> HTTPResult:
    return HTTPResult(status, {k.replace("_", "-"): v for k, v in headers.items()}, body, 0.01)


@pytest.mark.parametrize(
    "body",
    [
        '{"status": "DONE", "result": {"errors": 5}}',
        '{"status": "DONE", "result": {"errors": true}}',
        '{"status": "DONE", "result": {"errors": "bad-1"}}',
        '{"status": "DONE", "result": {"errors": [5, null, {"key": "x"}]}}',
    ],
)
def test_an_async_action_with_unreadable_errors_is_read_without_a_crash(body: str) -> None:
    state = read_state(body)
    assert state is not None and state.finished and state.errors == {}


def test_per_customer_errors_read_are_bounded() -> None:
    # Bounded by the largest bulk's customers (a replay's): never fewer, or a failed customer
    # past the bound would count as delivered.
    assert MAX_ACTION_ERRORS >= REPLAY_MAX_BULK
    errors = ",".join(
        f'{{"source_id": "c{i}", "key": "k", "message": "m"}}' for i in range(2 * MAX_ACTION_ERRORS)
    )
    state = read_state(f'{{"status": "DONE", "result": {{"errors": [{errors}]}}}}')
    assert state is not None and len(state.errors) == MAX_ACTION_ERRORS


@pytest.mark.parametrize(
    ("status", "body", "expected"),
    [
        (202, '{"async_action_id": "aa_0a1b2c"}', "aa_0a1b2c"),
        (202, "{}", ""),  # a 2xx naming no action: read back as unknown (sent singly)
        (202, "not json", ""),
        (202, '{"async_action_id": {"a": 1}}', ""),
        (202, '{"async_action_id": "../customers/x?limit=1"}', ""),  # never into the poll's URL
        (202, '{"async_action_id": "' + "a" * 5000 + '"}', ""),
        (400, '{"async_action_id": "aa_1"}', None),  # not accepted: the ordinary refusal path
    ],
)
def test_a_bulk_answer_is_queued_only_under_an_id_that_looks_like_one(
    status: int, body: str, expected: str | None
) -> None:
    assert FewerCalls.queued_as(None, BULK, answer(status, body)) == expected  # type: ignore[arg-type]


def test_the_period_end_header_is_a_wait_only_on_a_429() -> None:
    now = time.time()
    end_of_hour = str(int(now + 1800))
    # Every answer carries X-Rate-Limit-Retry (the end of the period): a 503's retry or an async
    # action's next poll must not wait for the end of the hour because of it.
    assert server_wait(answer(503, x_rate_limit_retry=end_of_hour), now) is None
    assert server_wait(answer(200, x_rate_limit_retry=end_of_hour), now) is None
    assert server_wait(answer(503, retry_after="7", x_rate_limit_retry=end_of_hour), now) == 7.0
    assert server_wait(answer(429, x_rate_limit_retry=end_of_hour), now) == pytest.approx(1800, abs=2)


@pytest.mark.parametrize("retry", ["0", "1", "-5"])
def test_a_zero_or_past_wait_still_pauses_for_a_while(retry: str) -> None:
    # Clocks apart (the worker's ahead of Voucherify's): the shop's reserve reached, or a 429,
    # must not become a one-millisecond pause that keeps eating into the reserve.
    quota = QuotaSettings(api_calls_per_minute=100)
    past = str(int(time.time()) - 10) if retry == "1" else retry
    reserve = reading(
        answer(200, x_rate_limit_limit="100", x_rate_limit_remaining="0", x_rate_limit_retry=past),
        quota,
        None,
        None,
    )
    assert reserve.pause is not None and reserve.pause >= DEFAULT_PAUSE_SECONDS
    refused = reading(answer(429, retry_after="0"), quota, None, 0.0)
    assert refused.pause is not None and refused.pause >= DEFAULT_PAUSE_SECONDS
