"""Sending one request: ``Transport.send`` -> :class:`HTTPResult`, or :class:`TransportFailure`.

A transport is anything with ``send(...)``: :class:`RequestsTransport` in production (one pooled
``requests.Session`` per target base URL, its urllib3 pool used directly, redirects off, TLS
verified), fake objects in unit tests.  A transport never raises for HTTP statuses; it raises
:class:`~connector.errors.TransportFailure` only when no HTTP answer came back, carrying whether
that is worth retrying.  What an answer *means* is :mod:`workers.delivery.classify`'s business.
"""

from __future__ import annotations

import http.client
import threading
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from http.cookiejar import DefaultCookiePolicy
from typing import Protocol

import requests
from requests.adapters import HTTPAdapter
from requests.utils import get_environ_proxies, requote_uri, select_proxy
from urllib3 import BaseHTTPResponse, HTTPConnectionPool, Timeout
from urllib3 import exceptions as urllib3_exceptions

from connector.errors import TransportFailure

EXCERPT_BYTES = 2048


@dataclass(frozen=True)
class HTTPResult:
    status: int
    headers: dict[str, str]  # lower-cased names
    body: str  # bounded excerpt, for history and dead letters
    latency: float  # seconds


class Transport(Protocol):
    def send(
        self, method: str, url: str, headers: dict[str, str], body: bytes | None, timeout: tuple[float, float]
    ) -> HTTPResult: ...


# ---------------------------------------------------------------------------------------------
# The production transport.

# What requests would add by itself (our own headers win).
_DEFAULT_HEADERS = {"Accept": "*/*", "Accept-Encoding": "gzip, deflate", "Connection": "keep-alive"}


@dataclass
class _Route:
    """How one origin is reached: requests' own urllib3 pool (the fast path), or the session
    when the environment names a proxy for it."""

    session: requests.Session
    pool: HTTPConnectionPool | None


@dataclass
class RequestsTransport:
    """One pooled ``requests.Session`` per base URL; sessions are shared by the greenlets/threads
    of a process (urllib3's pool is thread-safe), never across processes.

    The per-call cost of ``Session.request`` (environment proxy/netrc lookups, request
    preparation, hooks, cookie handling) was about half of a worker's CPU per delivered event.
    The session's settings never change after start, so they are resolved once per origin: the
    environment's proxies (``trust_env`` stays off afterwards), and the adapter's urllib3 pool
    with requests' TLS settings (certificates verified against requests' CA bundle).  Each call
    then goes straight to that pool's ``urlopen`` (redirects off, no urllib3 retries), with
    requests' default headers.  An origin behind a proxy from the environment is sent through
    the session, as before.  ``pool_size`` should cover the calls a process has in flight per
    origin: a smaller pool discards (and later reopens) connections.
    """

    pool_size: int = 64
    excerpt_bytes: int = EXCERPT_BYTES
    _sessions: dict[str, requests.Session] = field(default_factory=dict)
    _routes: dict[str, _Route] = field(default_factory=dict)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def _route(self, base: str) -> _Route:
        route = self._routes.get(base)
        if route is None:
            with self._lock:
                route = self._routes.get(base)
                if route is None:
                    route = self._routes[base] = self._new_route(base)
                    self._sessions[base] = route.session
        return route

    def _new_route(self, base: str) -> _Route:
        session = requests.Session()
        # Retries are ours (with the ledger and the window); urllib3 must not add any.
        adapter = HTTPAdapter(pool_connections=4, pool_maxsize=self.pool_size, max_retries=0)
        session.mount("http://", adapter)
        session.mount("https://", adapter)
        # Targets are APIs: state lives in our headers, never in cookies.
        session.cookies.set_policy(DefaultCookiePolicy(allowed_domains=[]))
        # Resolved once here, not on every call (the environment does not change under us).
        proxies = get_environ_proxies(base + "/", no_proxy=None)
        session.trust_env = False
        if select_proxy(base + "/", proxies):
            session.proxies.update(proxies)
            return _Route(session, None)
        prepared = requests.Request("GET", base + "/").prepare()
        pool = adapter.get_connection_with_tls_context(prepared, verify=True, proxies=None, cert=None)
        assert isinstance(pool, HTTPConnectionPool)
        adapter.cert_verify(pool, base, True, None)
        return _Route(session, pool)

    def send(
        self, method: str, url: str, headers: dict[str, str], body: bytes | None, timeout: tuple[float, float]
    ) -> HTTPResult:
        started = time.monotonic()
        # A body trickling in byte by byte must not hold the worker: bound the total.
        deadline = started + timeout[0] + 2 * timeout[1]
        try:
            base = _origin(url)
            route = self._route(base)
            if route.pool is None:
                return self._send_session(route.session, method, url, headers, body, timeout, started)
            response = route.pool.urlopen(
                method,
                requote_uri(url[len(base) :] or "/"),
                body=body,
                headers={**_DEFAULT_HEADERS, **headers},
                retries=False,
                redirect=False,
                assert_same_host=False,
                timeout=Timeout(connect=timeout[0], read=timeout[1]),
                preload_content=False,
                decode_content=False,
            )
            try:
                excerpt = _read_raw_excerpt(response, self.excerpt_bytes, deadline)
            except BaseException:
                response.close()  # a half-read connection is never reused
                raise
            response.release_conn()
        except (ValueError, urllib3_exceptions.DecodeError, requests.exceptions.InvalidURL) as exc:
            # An invalid URL or header, a body that does not decode: our fault, not a blip.
            raise _failure(exc, retryable=False, started=started, headers=headers) from None
        except (urllib3_exceptions.HTTPError, OSError, http.client.HTTPException) as exc:
            # Refused, reset, timed out, TLS, a broken body: no answer, worth retrying.
            raise _failure(exc, retryable=True, started=started, headers=headers) from None
        return _answer(response.status, response.headers.items(), excerpt, started)

    def _send_session(
        self,
        session: requests.Session,
        method: str,
        url: str,
        headers: dict[str, str],
        body: bytes | None,
        timeout: tuple[float, float],
        started: float,
    ) -> HTTPResult:
        """Through a proxy from the environment: the plain requests path."""
        try:
            response = session.request(
                method, url, headers=headers, data=body, timeout=timeout, allow_redirects=False, stream=True
            )
            try:
                deadline = started + timeout[0] + 2 * timeout[1]
                excerpt = _read_excerpt(response, self.excerpt_bytes, deadline)
            finally:
                response.close()
        except (requests.ConnectionError, requests.Timeout, requests.exceptions.ChunkedEncodingError) as exc:
            raise _failure(exc, retryable=True, started=started, headers=headers) from None
        except (requests.RequestException, ValueError) as exc:  # invalid URL, schema, headers: ours
            raise _failure(exc, retryable=False, started=started, headers=headers) from None
        return _answer(response.status_code, response.headers.items(), excerpt, started)

    def close(self) -> None:
        with self._lock:
            for session in self._sessions.values():
                session.close()
            self._sessions.clear()
            self._routes.clear()


def _origin(url: str) -> str:
    scheme, _, rest = url.partition("://")
    return f"{scheme}://{rest.split('/', 1)[0]}"


def _read_raw_excerpt(response: BaseHTTPResponse, limit: int, deadline: float) -> str:
    # As _read_excerpt, on urllib3's response (decoded as requests would).
    kept = bytearray()
    for chunk in response.stream(8192, decode_content=True):
        if len(kept) < limit:
            kept.extend(chunk[: limit - len(kept)])
        if time.monotonic() > deadline:
            raise urllib3_exceptions.ReadTimeoutError(None, None, "response body too slow")  # type: ignore[arg-type]
    return kept.decode("utf-8", errors="replace")


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


# Exception texts worth keeping: urllib3/requests network errors name the host, the port and
# the failure.  Anything raised while PREPARING a request (http.client's "Invalid header value
# b'...'", a ValueError, a LocationParseError, ...) may quote a header value -- a credential --
# and is described by its type alone.
_TEXT_SAFE: tuple[type[BaseException], ...] = (
    urllib3_exceptions.TimeoutError,
    urllib3_exceptions.ProtocolError,
    urllib3_exceptions.NewConnectionError,
    urllib3_exceptions.NameResolutionError,
    urllib3_exceptions.MaxRetryError,
    urllib3_exceptions.SSLError,
    urllib3_exceptions.ProxyError,
    requests.ConnectionError,
    requests.Timeout,
    ConnectionError,
    TimeoutError,
)


def _describe(exc: Exception, secrets: Iterable[str] = ()) -> str:
    """A failure's text for history, logs and dead letters: never a header value.

    Kept only for network errors (see ``_TEXT_SAFE``), and even then any header value of the
    call found in it is masked (a second line of defence)."""
    name = type(exc).__name__
    if not isinstance(exc, _TEXT_SAFE) or isinstance(exc, requests.exceptions.InvalidHeader):
        return name
    text = str(exc)[:300]
    for value in secrets:
        if value and len(value) >= 4:
            text = text.replace(value, "****")
    return f"{name}: {text}" if text else name


def _answer(status: int, headers: Iterable[tuple[str, str]], excerpt: str, started: float) -> HTTPResult:
    return HTTPResult(
        status=status,
        headers={k.lower(): v for k, v in headers},
        body=excerpt,
        latency=time.monotonic() - started,
    )


def _failure(
    exc: Exception, *, retryable: bool, started: float, headers: dict[str, str] | None = None
) -> TransportFailure:
    return TransportFailure(
        _describe(exc, (headers or {}).values()), retryable=retryable, latency=time.monotonic() - started
    )


__all__ = ["EXCERPT_BYTES", "HTTPResult", "RequestsTransport", "Transport", "TransportFailure"]
