"""Sending one request, and the ONE table that says what its answer means.

::

    OutboundRequest ──(+ auth headers)──> Transport.send ──> HTTPResult | TransportFailure
                                                                 │
                                                             classify()
                                              ┌──────────────────┼───────────────────┐
                                           SUCCESS             RETRY             PERMANENT
                                           2xx          conn. errors, timeouts,   other 4xx, 501, 505,
                                                        408, 423, 429,            1xx/3xx (misrouted),
                                                        5xx but 501/505           malformed URL

A transport is anything with ``send(...)``: :class:`RequestsTransport` in production (one pooled
``requests.Session`` per target base URL, redirects off, TLS verified), fake objects in unit
tests.  A transport never raises for HTTP statuses; it raises :class:`TransportFailure` only when
no HTTP answer came back, carrying whether that is worth retrying.
"""

from __future__ import annotations

import enum
import threading
import time
from dataclasses import dataclass, field
from email.utils import parsedate_to_datetime
from http.cookiejar import DefaultCookiePolicy
from typing import Protocol

import requests
from requests.adapters import HTTPAdapter

EXCERPT_BYTES = 2048


class Verdict(enum.Enum):
    SUCCESS = "success"
    RETRY = "retry"
    PERMANENT = "permanent"


@dataclass(frozen=True)
class HTTPResult:
    status: int
    headers: dict[str, str]  # lower-cased names
    body: str  # bounded excerpt, for history and dead letters
    latency: float  # seconds


class TransportFailure(Exception):
    """No HTTP answer: connection refused/reset, DNS, timeout, broken body, bad URL."""

    def __init__(self, message: str, *, retryable: bool, latency: float = 0.0) -> None:
        super().__init__(message)
        self.message = message
        self.retryable = retryable
        self.latency = latency


class Transport(Protocol):
    def send(
        self, method: str, url: str, headers: dict[str, str], body: bytes | None, timeout: tuple[float, float]
    ) -> HTTPResult: ...


# ---------------------------------------------------------------------------------------------
# The classification table.  Keep it the only place that knows what a status means.

RETRYABLE_STATUSES = frozenset({408, 423, 429})
NON_RETRYABLE_5XX = frozenset({501, 505})


def classify_status(status: int) -> Verdict:
    if 200 <= status < 300:
        return Verdict.SUCCESS
    if status in RETRYABLE_STATUSES:
        return Verdict.RETRY
    if 500 <= status < 600:
        return Verdict.PERMANENT if status in NON_RETRYABLE_5XX else Verdict.RETRY
    # Other 4xx: the request itself is wrong.  1xx/3xx: redirects are off on purpose (a POST must
    # not silently become a GET); an unexpected one means a misconfigured URL, not a blip.
    return Verdict.PERMANENT


def classify(outcome: HTTPResult | TransportFailure) -> Verdict:
    if isinstance(outcome, TransportFailure):
        return Verdict.RETRY if outcome.retryable else Verdict.PERMANENT
    return classify_status(outcome.status)


# ---------------------------------------------------------------------------------------------
# What the server asked us to wait.


def parse_retry_after(value: str | None, now: float | None = None) -> float | None:
    """``Retry-After``: delta-seconds or an HTTP date.  Returns seconds from now (>= 0)."""
    if not value:
        return None
    value = value.strip()
    now = time.time() if now is None else now
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = parsedate_to_datetime(value)
    except (TypeError, ValueError, IndexError):
        return None
    if when is None:
        return None
    return max(0.0, when.timestamp() - now)


def parse_rate_limit_retry(value: str | None, now: float | None = None) -> float | None:
    """Voucherify's ``X-Rate-Limit-Retry``: the epoch second when requests are accepted again.

    Defensive about units: values that look like epoch milliseconds are scaled, and small values
    (which cannot be a recent epoch) are taken as a number of seconds to wait.
    """
    if not value:
        return None
    try:
        number = float(value.strip())
    except ValueError:
        return None
    now = time.time() if now is None else now
    if number > 1e12:
        number /= 1000.0
    if number < 1e9:
        return max(0.0, number)
    return max(0.0, number - now)


def server_wait(result: HTTPResult | TransportFailure, now: float | None = None) -> float | None:
    """The longest wait the answer asks for, from either header, or None."""
    if isinstance(result, TransportFailure):
        return None
    waits = [
        w
        for w in (
            parse_retry_after(result.headers.get("retry-after"), now),
            parse_rate_limit_retry(result.headers.get("x-rate-limit-retry"), now),
        )
        if w is not None
    ]
    return max(waits) if waits else None


# ---------------------------------------------------------------------------------------------
# The production transport.


@dataclass
class RequestsTransport:
    """One pooled ``requests.Session`` per base URL; sessions are shared by the greenlets/threads
    of a process (urllib3's pool is thread-safe), never across processes."""

    pool_size: int = 64
    excerpt_bytes: int = EXCERPT_BYTES
    _sessions: dict[str, requests.Session] = field(default_factory=dict)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def session_for(self, url: str) -> requests.Session:
        base = _origin(url)
        session = self._sessions.get(base)
        if session is None:
            with self._lock:
                session = self._sessions.get(base)
                if session is None:
                    session = requests.Session()
                    # Retries are ours (with the ledger and the window); urllib3 must not add any.
                    adapter = HTTPAdapter(pool_connections=4, pool_maxsize=self.pool_size, max_retries=0)
                    session.mount("http://", adapter)
                    session.mount("https://", adapter)
                    # Targets are APIs: state lives in our headers, never in cookies.
                    session.cookies.set_policy(DefaultCookiePolicy(allowed_domains=[]))
                    self._sessions[base] = session
        return session

    def send(
        self, method: str, url: str, headers: dict[str, str], body: bytes | None, timeout: tuple[float, float]
    ) -> HTTPResult:
        started = time.monotonic()
        try:
            response = self.session_for(url).request(
                method, url, headers=headers, data=body, timeout=timeout, allow_redirects=False, stream=True
            )
            try:
                # A body trickling in byte by byte must not hold the worker: bound the total.
                deadline = started + timeout[0] + 2 * timeout[1]
                excerpt = _read_excerpt(response, self.excerpt_bytes, deadline)
            finally:
                response.close()
        except (requests.ConnectionError, requests.Timeout, requests.exceptions.ChunkedEncodingError) as exc:
            raise TransportFailure(
                _describe(exc), retryable=True, latency=time.monotonic() - started
            ) from None
        except requests.RequestException as exc:  # invalid URL, schema, headers: our fault, not a blip
            raise TransportFailure(
                _describe(exc), retryable=False, latency=time.monotonic() - started
            ) from None
        return HTTPResult(
            status=response.status_code,
            headers={k.lower(): v for k, v in response.headers.items()},
            body=excerpt,
            latency=time.monotonic() - started,
        )

    def close(self) -> None:
        with self._lock:
            for session in self._sessions.values():
                session.close()
            self._sessions.clear()


def _origin(url: str) -> str:
    scheme, _, rest = url.partition("://")
    return f"{scheme}://{rest.split('/', 1)[0]}"


def _read_excerpt(response: requests.Response, limit: int, deadline: float) -> str:
    # Read the whole body so the connection returns to the pool, but keep only an excerpt:
    # a misbehaving target must not fill a worker's memory.  read_timeout bounds each read,
    # the deadline the whole body.
    kept = bytearray()
    for chunk in response.iter_content(chunk_size=8192):
        if len(kept) < limit:
            kept.extend(chunk[: limit - len(kept)])
        if time.monotonic() > deadline:
            raise requests.Timeout("response body too slow")
    return kept.decode("utf-8", errors="replace")


def _describe(exc: Exception) -> str:
    # Exception texts from urllib3 name the host and port, never headers: safe to keep.
    name = type(exc).__name__
    text = str(exc)
    return f"{name}: {text[:300]}" if text else name
