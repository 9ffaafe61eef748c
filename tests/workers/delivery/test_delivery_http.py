"""The classification table, server-requested waits, backoff, and the pooled requests transport."""

from __future__ import annotations

import random
import socket
import threading
import time
from collections.abc import Iterator
from email.utils import formatdate
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from workers.delivery.classify import Verdict, classify, classify_status, parse_retry_after
from workers.delivery.retries import decide, next_delay
from workers.delivery.transport import HTTPResult, RequestsTransport, TransportFailure
from workers.targets.voucherify import parse_rate_limit_retry, server_wait

# --- classification: one table for every status family -----------------------------------------


@pytest.mark.parametrize("status", [200, 201, 202, 204, 299])
def test_2xx_is_success(status: int) -> None:
    assert classify_status(status) is Verdict.SUCCESS


@pytest.mark.parametrize("status", [408, 423, 429, 500, 502, 503, 504, 507, 508, 511, 599])
def test_retryable_statuses(status: int) -> None:
    assert classify_status(status) is Verdict.RETRY


@pytest.mark.parametrize("status", [400, 401, 403, 404, 405, 409, 410, 413, 415, 422, 451, 499, 501, 505])
def test_permanent_statuses(status: int) -> None:
    assert classify_status(status) is Verdict.PERMANENT


@pytest.mark.parametrize("status", [100, 301, 302, 304, 307, 308])
def test_unexpected_informational_and_redirects_are_permanent(status: int) -> None:
    assert classify_status(status) is Verdict.PERMANENT


def test_transport_failures_follow_their_flag() -> None:
    assert classify(TransportFailure("ConnectionError", retryable=True)) is Verdict.RETRY
    assert classify(TransportFailure("InvalidURL", retryable=False)) is Verdict.PERMANENT
    assert classify(HTTPResult(503, {}, "", 0.1)) is Verdict.RETRY


# --- what the server asks -----------------------------------------------------------------------


def test_retry_after_seconds_and_http_date() -> None:
    now = 1_700_000_000.0
    assert parse_retry_after("120", now) == 120.0
    assert parse_retry_after(" 1.5 ", now) == 1.5
    assert parse_retry_after(formatdate(now + 90, usegmt=True), now) == pytest.approx(90, abs=1)
    assert parse_retry_after(formatdate(now - 90, usegmt=True), now) == 0.0
    assert parse_retry_after("soon", now) is None
    assert parse_retry_after(None, now) is None


def test_x_rate_limit_retry_epoch_seconds() -> None:
    now = 1_700_000_000.0
    assert parse_rate_limit_retry(str(int(now + 42)), now) == pytest.approx(42)
    assert parse_rate_limit_retry(str(int((now + 42) * 1000)), now) == pytest.approx(42)  # ms, defensively
    assert parse_rate_limit_retry(str(int(now - 5)), now) == 0.0
    assert parse_rate_limit_retry("7", now) == 7.0  # a small number cannot be an epoch: seconds
    assert parse_rate_limit_retry("x", now) is None


def test_server_wait_takes_the_longest_header() -> None:
    now = time.time()
    result = HTTPResult(429, {"retry-after": "3", "x-rate-limit-retry": str(int(now + 30))}, "", 0.1)
    assert server_wait(result, now) == pytest.approx(30, abs=1)
    assert server_wait(HTTPResult(503, {}, "", 0.1), now) is None
    assert server_wait(TransportFailure("x", retryable=True), now) is None


# --- backoff ------------------------------------------------------------------------------------


def test_backoff_first_retry_waits_at_least_base_and_is_capped() -> None:
    rng = random.Random(7)
    delays: list[float] = []
    previous = None
    for _ in range(30):
        previous = next_delay(previous, base=2.0, cap=300.0, rng=rng)
        delays.append(previous)
    assert all(2.0 <= d <= 300.0 for d in delays)
    assert delays[0] <= 6.0  # first retry after a few seconds
    assert max(delays) > 100  # grows towards the cap
    assert len(set(delays)) > 20  # jittered


def test_backoff_honours_the_server_even_above_the_cap() -> None:
    assert next_delay(None, base=2.0, cap=10.0, server_wait=45.0) == 45.0
    assert next_delay(None, base=2.0, cap=10.0, server_wait=0.5) >= 2.0


def test_retry_window_is_measured_from_the_first_attempt() -> None:
    now = 10_000.0
    inside = decide(now=now, first_attempt_at=now - 100, window=3600, previous_delay=None, base=2, cap=60)
    assert not inside.exhausted
    outside = decide(now=now, first_attempt_at=now - 3599, window=3600, previous_delay=None, base=2, cap=60)
    assert outside.exhausted
    server = decide(
        now=now, first_attempt_at=now, window=3600, previous_delay=None, base=2, cap=60, server_wait=7200
    )
    assert server.exhausted  # the server asks for longer than the window leaves


# --- the requests transport against a local server ----------------------------------------------


class _Handler(BaseHTTPRequestHandler):
    def log_message(self, *args: object) -> None:
        pass

    def do_POST(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length)
        if self.path == "/slow":
            time.sleep(1.0)
        if self.path == "/redirect":
            self.send_response(302)
            self.send_header("Location", "/elsewhere")
            self.send_header("Content-Length", "0")
            self.end_headers()
            return
        status = 429 if self.path == "/429" else 200
        payload = b"x" * 10_000 if self.path == "/big" else body
        self.send_response(status)
        if status == 429:
            self.send_header("Retry-After", "3")
        self.send_header("Content-Length", str(len(payload)))
        self.end_headers()
        self.wfile.write(payload)


@pytest.fixture
def server() -> Iterator[str]:
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}"
    httpd.shutdown()
    httpd.server_close()


def test_requests_transport_statuses_headers_and_bounded_body(server: str) -> None:
    transport = RequestsTransport(excerpt_bytes=100)
    ok = transport.send("POST", server + "/echo", {"Content-Type": "application/json"}, b'{"a":1}', (3, 10))
    assert ok.status == 200 and ok.body == '{"a":1}' and ok.latency > 0
    limited = transport.send("POST", server + "/429", {}, b"{}", (3, 10))
    assert limited.status == 429 and limited.headers["retry-after"] == "3"
    big = transport.send("POST", server + "/big", {}, b"{}", (3, 10))
    assert len(big.body) == 100
    redirect = transport.send("POST", server + "/redirect", {}, b"{}", (3, 10))
    assert redirect.status == 302 and classify(redirect) is Verdict.PERMANENT  # never followed
    assert len(transport._sessions) == 1  # one pooled session per base URL
    transport.close()


def test_requests_transport_timeouts_and_refusals_are_retryable(server: str) -> None:
    transport = RequestsTransport()
    with pytest.raises(TransportFailure) as timeout:
        transport.send("POST", server + "/slow", {}, b"{}", (3, 0.2))
    assert timeout.value.retryable
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    with pytest.raises(TransportFailure) as refused:
        transport.send("POST", f"http://127.0.0.1:{port}/x", {}, b"{}", (1, 1))
    assert refused.value.retryable
    with pytest.raises(TransportFailure) as bad:
        transport.send("POST", "http://[not-a-host/x", {}, b"{}", (1, 1))
    assert not bad.value.retryable


@pytest.mark.parametrize(
    "value", ["tok-Zq9-secret\n", "tok-Zq9-secret\r\nX-Injected: 1", "tok-Zq9\nsecret", "tok-Zq9-secret\r"]
)
def test_a_header_value_never_reaches_a_failure_text(server: str, value: str) -> None:
    """http.client refuses such a header with "Invalid header value b'...'" -- the value, a
    credential, quoted whole.  That text used to land in logs and dead letters."""
    transport = RequestsTransport()
    with pytest.raises(TransportFailure) as failure:
        transport.send("POST", server + "/echo", {"X-App-Token": value}, b"{}", (1, 1))
    assert not failure.value.retryable  # our own request is wrong: no retry storm
    assert "Zq9" not in failure.value.message and "secret" not in failure.value.message
    assert failure.value.message  # still says what kind of failure it was
    # A network failure keeps its useful text (host, port), with the call's header values masked.
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    with pytest.raises(TransportFailure) as refused:
        transport.send("POST", f"http://127.0.0.1:{port}/x", {"X-App-Token": "fine-token"}, b"{}", (1, 1))
    assert "127.0.0.1" in refused.value.message and "fine-token" not in refused.value.message
