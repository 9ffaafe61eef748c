"""Shared core of the sandbox fakes: a WSGI base app with recording, fault scripts, latency,
rate limiting and the ``/__fake/`` control API, plus the gevent server runner.

Control API (every fake):

- ``GET /__fake/health`` -> ``{"ok": true, "kind", "name", "pid", "requests", "uptime_s"}``
  (every ``GET /__fake/...`` answers ``Access-Control-Allow-Origin: *`` for the status page)
- ``GET /__fake/requests[?path=&method=&since=]`` -> recorded requests (``since``: a ``seq``)
- ``DELETE /__fake/requests`` -> forget recorded requests (faults untouched)
- ``GET /__fake/faults`` -> current settings and scripts
- ``POST /__fake/faults`` with ``statuses`` -> append a fault script::

      {"path": "/v1/customers",          # optional; exact, or prefix ending in "*"; default: all
       "method": "POST",                  # optional
       "statuses": [503, 503, 429],       # consumed one per matching request, in order
       "headers": {"Retry-After": "2"},   # or a list, one dict (or null) per status
       "latency_ms": 50, "body_delay_ms": 0,
       "then": 200}                       # after the list: 200/null = normal, other = sticky status

  A status in 200-299 means "answer normally" (with the step's latency/body delay); status 0
  drops the connection without an answer.
- ``POST /__fake/faults`` without ``statuses`` -> global settings: ``latency_ms``,
  ``body_delay_ms``, ``rate_limit_per_minute`` (null: off), ``rate_limit_window_s`` (default 60).
- ``DELETE /__fake/faults`` -> no scripts, default settings, rate-limit window emptied.
- ``POST /__fake/reset`` -> all of the above plus the fake's own state (customers, events).

Requests under ``/__fake/`` are neither recorded, logged, delayed nor faulted.
"""

from __future__ import annotations

import contextlib
import errno
import http
import json
import os
import socket
import sys
import threading
import time
import traceback
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs

import gevent
import orjson
from gevent.pywsgi import WSGIServer

StartResponse = Callable[..., Any]
Environ = dict[str, Any]

CONTROL_PREFIX = "/__fake/"
DEFAULT_MAX_RECORDS = 100_000
DEFAULT_MAX_BODY_BYTES = 10 * 1024 * 1024  # Voucherify's bulk limit; well above Segment's


def dumps(obj: Any) -> bytes:
    try:
        return orjson.dumps(obj)
    except TypeError:
        # orjson refuses integers beyond 64 bits; the stdlib does not.
        return json.dumps(obj, default=str).encode()


def loads(raw: bytes) -> Any:
    try:
        return orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        if "64-bit" in str(exc) or "Integer" in str(exc):
            return json.loads(raw)
        raise


def status_line(status: int) -> str:
    try:
        return f"{status} {http.HTTPStatus(status).phrase}"
    except ValueError:
        return f"{status} Unknown"


def error_key(status: int) -> str:
    try:
        return http.HTTPStatus(status).phrase.lower().replace(" ", "_").replace("-", "_")
    except ValueError:
        return "error"


class DropConnection(ConnectionResetError):
    """Raised from the app to make gevent's pywsgi close the socket without answering.

    pywsgi treats ECONNRESET from the application as a client disconnect: it closes the
    connection silently, so the client sees "connection reset / remote end closed".
    """

    def __init__(self) -> None:
        super().__init__(errno.ECONNRESET, "fake: connection dropped on purpose")


@dataclass(slots=True)
class FakeRequest:
    time: float
    method: str
    path: str
    query: dict[str, str | list[str]]
    headers: dict[str, str]
    raw: bytes
    body: Any = None  # parsed JSON (None also when absent/invalid: see json_error)
    json_error: str | None = None

    def header(self, name: str, default: str = "") -> str:
        return self.headers.get(name.title(), default)


@dataclass(slots=True)
class FakeResponse:
    status: int
    body: Any = None  # JSON-serialisable; bytes are sent as they are
    headers: dict[str, str] = field(default_factory=dict)
    schema_valid: bool | None = None
    validation_errors: list[str] = field(default_factory=list)
    extra: dict[str, Any] | None = None  # fields merged into the request's record
    body_delay_ms: float = 0.0
    # Called with the finished record (its seq assigned), e.g. to index what it carried.
    after_record: Callable[[dict[str, Any]], None] | None = None


@dataclass(slots=True)
class Step:
    status: int
    headers: dict[str, str]
    latency_ms: float
    body_delay_ms: float


@dataclass(slots=True)
class Script:
    id: int
    path: str | None
    method: str | None
    steps: deque[Step]
    sticky: Step | None  # answered forever once ``steps`` is empty ("then": <non-2xx>)

    def matches(self, method: str, path: str) -> bool:
        if self.method is not None and self.method != method:
            return False
        if self.path is None:
            return True
        if self.path.endswith("*"):
            return path.startswith(self.path[:-1])
        return path == self.path

    def describe(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "path": self.path,
            "method": self.method,
            "remaining": [s.status for s in self.steps],
            "then": self.sticky.status if self.sticky else None,
        }


def _number(value: Any, name: str, minimum: float = 0.0) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or value < minimum:
        raise ValueError(f"{name} must be a number >= {minimum:g}")
    return float(value)


def _headers(value: Any, name: str) -> dict[str, str]:
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise ValueError(f"{name} must be an object of header names to values")
    return {str(k): str(v) for k, v in value.items()}


def _status(value: Any, name: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not (value == 0 or 100 <= value <= 599):
        raise ValueError(f"{name} must be an HTTP status (100-599) or 0 (drop the connection)")
    return value


def is_success(status: int) -> bool:
    return 200 <= status < 300


class RateLimiter:
    """Sliding-window limit over accepted requests (rejected ones do not extend the lock-out)."""

    def __init__(self, limit: int, window_s: float = 60.0) -> None:
        self.limit = limit
        self.window_s = window_s
        self.hits: deque[float] = deque()

    def check(self, now: float) -> tuple[bool, dict[str, str]]:
        cutoff = now - self.window_s
        while self.hits and self.hits[0] <= cutoff:
            self.hits.popleft()
        if len(self.hits) >= self.limit:
            retry_at = self.hits[0] + self.window_s
            wait = max(1, int(retry_at - now + 0.999))
            return False, {
                "Retry-After": str(wait),
                "X-Rate-Limit-Limit": str(self.limit),
                "X-Rate-Limit-Remaining": "0",
                "X-Rate-Limit-Retry": str(int(retry_at + 0.999)),
            }
        self.hits.append(now)
        return True, self.peek()

    def peek(self) -> dict[str, str]:
        """The budget headers without spending a request (for answers the limit did not see)."""
        return {
            "X-Rate-Limit-Limit": str(self.limit),
            "X-Rate-Limit-Remaining": str(max(0, self.limit - len(self.hits))),
        }


class FakeApp:
    """Base WSGI app. Subclasses implement ``handle`` and ``error_body``."""

    kind = "fake"

    def __init__(self, name: str, *, max_records: int = DEFAULT_MAX_RECORDS) -> None:
        self.name = name
        self.started = time.time()
        self.lock = threading.Lock()  # cheap and uncontended under gevent; safe if run threaded
        self.records: deque[dict[str, Any]] = deque(maxlen=max_records)
        self.seq = 0
        self.max_body_bytes = DEFAULT_MAX_BODY_BYTES
        self.quiet = False
        self._reset_faults()

    # -- to override -------------------------------------------------------------------------

    def handle(self, req: FakeRequest) -> FakeResponse:
        raise NotImplementedError

    def error_body(self, status: int, message: str, details: str = "") -> Any:
        return {"code": status, "message": message, "details": details}

    def control(self, req: FakeRequest) -> FakeResponse | None:
        """Extra ``/__fake/`` endpoints of a subclass; None when the path is not its own."""
        return None

    def clear_state(self) -> None:
        """Forget the subclass's own state (customers, events...) on ``POST /__fake/reset``."""

    def clear_records(self) -> None:
        with self.lock:
            self.records.clear()

    # -- faults ------------------------------------------------------------------------------

    def _reset_faults(self) -> None:
        self.scripts: list[Script] = []
        self.script_ids = 0
        self.latency_ms = 0.0
        self.body_delay_ms = 0.0
        self.rate_limiter: RateLimiter | None = None

    def faults_state(self) -> dict[str, Any]:
        limiter = self.rate_limiter
        return {
            "settings": {
                "latency_ms": self.latency_ms,
                "body_delay_ms": self.body_delay_ms,
                "rate_limit_per_minute": limiter.limit if limiter else None,
                "rate_limit_window_s": limiter.window_s if limiter else 60.0,
            },
            "scripts": [s.describe() for s in self.scripts],
        }

    def add_faults(self, spec: Any) -> dict[str, Any]:
        """Apply one ``POST /__fake/faults`` body; raises ValueError on a bad spec."""
        if not isinstance(spec, dict):
            raise ValueError("body must be a JSON object")
        if "statuses" in spec:
            return self._add_script(spec)
        allowed = {"latency_ms", "body_delay_ms", "rate_limit_per_minute", "rate_limit_window_s"}
        unknown = set(spec) - allowed
        if unknown:
            raise ValueError(f"unknown keys {sorted(unknown)}; a script needs 'statuses'")
        with self.lock:
            if "latency_ms" in spec:
                self.latency_ms = _number(spec["latency_ms"], "latency_ms")
            if "body_delay_ms" in spec:
                self.body_delay_ms = _number(spec["body_delay_ms"], "body_delay_ms")
            if "rate_limit_per_minute" in spec or "rate_limit_window_s" in spec:
                current = self.rate_limiter
                limit = spec.get("rate_limit_per_minute", current.limit if current else None)
                window = _number(
                    spec.get("rate_limit_window_s", current.window_s if current else 60.0),
                    "rate_limit_window_s",
                    minimum=0.001,
                )
                if limit is None:
                    self.rate_limiter = None
                else:
                    limit = int(_number(limit, "rate_limit_per_minute", minimum=1))
                    self.rate_limiter = RateLimiter(limit, window)
        return self.faults_state()

    def _add_script(self, spec: dict[str, Any]) -> dict[str, Any]:
        allowed = {"path", "method", "statuses", "headers", "latency_ms", "body_delay_ms", "then"}
        unknown = set(spec) - allowed
        if unknown:
            raise ValueError(f"unknown keys in a fault script: {sorted(unknown)}")
        statuses = spec["statuses"]
        if not isinstance(statuses, list):
            raise ValueError("statuses must be a list of HTTP statuses")
        statuses = [_status(s, "statuses[]") for s in statuses]
        raw_headers = spec.get("headers")
        if isinstance(raw_headers, list):
            if len(raw_headers) != len(statuses):
                raise ValueError("a headers list needs one entry (object or null) per status")
            per_step = [_headers(h, "headers[]") for h in raw_headers]
        else:
            per_step = [_headers(raw_headers, "headers")] * len(statuses)
        latency = _number(spec.get("latency_ms", 0), "latency_ms")
        body_delay = _number(spec.get("body_delay_ms", 0), "body_delay_ms")
        path = spec.get("path")
        if path is not None and (not isinstance(path, str) or not path.startswith("/")):
            raise ValueError("path must start with '/'")
        method = spec.get("method")
        if method is not None and not isinstance(method, str):
            raise ValueError("method must be a string")
        then = spec.get("then")
        sticky = None
        if then is not None and not (isinstance(then, str) and then == "normal"):
            then = _status(then, "then")
            if not is_success(then):
                sticky_headers = per_step[-1] if per_step else _headers(raw_headers, "headers")
                sticky = Step(then, sticky_headers, latency, body_delay)
        steps = deque(Step(s, h, latency, body_delay) for s, h in zip(statuses, per_step, strict=True))
        with self.lock:
            self.script_ids += 1
            script = Script(self.script_ids, path, method.upper() if method else None, steps, sticky)
            self.scripts.append(script)
        return {"script_id": script.id, **self.faults_state()}

    def _next_step(self, method: str, path: str) -> Step | None:
        with self.lock:
            for script in self.scripts:
                if not script.matches(method, path):
                    continue
                if script.steps:
                    step = script.steps.popleft()
                    if not script.steps and script.sticky is None:
                        self.scripts.remove(script)
                    return step
                if script.sticky is not None:
                    return script.sticky
            return None

    # -- WSGI --------------------------------------------------------------------------------

    def __call__(self, environ: Environ, start_response: StartResponse) -> Iterable[bytes]:
        now = time.time()
        started = time.perf_counter()
        method = environ.get("REQUEST_METHOD", "GET").upper()
        path = environ.get("PATH_INFO") or "/"
        if path.startswith(CONTROL_PREFIX) or path == CONTROL_PREFIX.rstrip("/"):
            return self._control_call(environ, start_response, now, method, path)
        record: dict[str, Any] | None = None
        try:
            req, early = self._read(environ, now, method, path)
            resp, dropped = (early, False) if early else self._process(req)
            record = self._record(req, resp, started)
            self._log(method, path, record["status"], record["duration_ms"], resp)
            if dropped:
                raise DropConnection()
            return self._send(start_response, resp)
        except DropConnection:
            raise
        except Exception:
            # Print the traceback only: gevent's own handler would also dump the WSGI environ,
            # which holds the request's credentials.
            traceback.print_exc()
            resp = FakeResponse(500, self.error_body(500, "Internal Server Error", "fake crashed"))
            if record is None:
                self._log(method, path, 500, (time.perf_counter() - started) * 1000, resp)
            return self._send(start_response, resp)

    def _read(
        self, environ: Environ, now: float, method: str, path: str
    ) -> tuple[FakeRequest, FakeResponse | None]:
        headers: dict[str, str] = {}
        for key, value in environ.items():
            if key.startswith("HTTP_"):
                headers[key[5:].replace("_", "-").title()] = value
        if environ.get("CONTENT_TYPE"):
            headers["Content-Type"] = environ["CONTENT_TYPE"]
        if environ.get("CONTENT_LENGTH"):
            headers["Content-Length"] = environ["CONTENT_LENGTH"]
        query: dict[str, str | list[str]] = {}
        for key, values in parse_qs(environ.get("QUERY_STRING", ""), keep_blank_values=True).items():
            query[key] = values[0] if len(values) == 1 else values
        req = FakeRequest(now, method, path, query, headers, b"")
        try:
            length = int(environ.get("CONTENT_LENGTH") or -1)
        except ValueError:
            length = -1
        if length > self.max_body_bytes:
            msg = f"Payload content length greater than maximum allowed: {self.max_body_bytes}"
            resp = FakeResponse(413, self.error_body(413, "Request Entity Too Large", msg))
            resp.headers["Connection"] = "close"  # the unread body must not be parsed as a request
            return req, resp
        stream = environ["wsgi.input"]
        raw: bytes = stream.read(length) if length >= 0 else stream.read()
        req.raw = raw
        if raw:
            try:
                req.body = loads(raw)
            except ValueError as exc:
                req.json_error = str(exc)
        return req, None

    def _process(self, req: FakeRequest) -> tuple[FakeResponse, bool]:
        if self.latency_ms:
            gevent.sleep(self.latency_ms / 1000)
        step = self._next_step(req.method, req.path)
        if step is not None and step.latency_ms:
            gevent.sleep(step.latency_ms / 1000)
        body_delay = self.body_delay_ms + (step.body_delay_ms if step else 0.0)
        if step is not None and step.status == 0:
            return FakeResponse(0, extra={"fault": "drop"}), True
        if step is not None and not is_success(step.status):
            phrase = status_line(step.status).split(" ", 1)[1]
            headers = self.rate_limiter.peek() if self.rate_limiter else {}
            headers.update(step.headers)  # a script may fake its own rate-limit headers
            resp = FakeResponse(
                step.status,
                self.error_body(step.status, phrase, "injected by the fake's fault script"),
                headers,
                extra={"fault": "script"},
                body_delay_ms=body_delay,
            )
            return resp, False
        limit_headers: dict[str, str] = {}
        limiter = self.rate_limiter
        if limiter is not None:
            with self.lock:
                allowed, limit_headers = limiter.check(time.time())
            if not allowed:
                resp = FakeResponse(
                    429,
                    self.error_body(429, "Too Many Requests", "Too many requests hit the API too quickly."),
                    limit_headers,
                    extra={"fault": "rate_limit"},
                    body_delay_ms=body_delay,
                )
                return resp, False
        resp = self.handle(req)
        resp.headers.update(limit_headers)
        if step is not None:
            resp.headers.update(step.headers)
        resp.body_delay_ms += body_delay
        return resp, False

    def _record(self, req: FakeRequest, resp: FakeResponse, started: float) -> dict[str, Any]:
        raw_text = None
        if req.raw and req.json_error is not None:
            raw_text = req.raw.decode("utf-8", errors="replace")
        record: dict[str, Any] = {
            "seq": 0,
            "time": req.time,
            "method": req.method,
            "path": req.path,
            "query": req.query,
            "headers": req.headers,
            "body": req.body,
            "raw": raw_text,
            "status": resp.status,
            "schema_valid": resp.schema_valid,
            "validation_errors": resp.validation_errors,
            "fault": None,
            "duration_ms": round((time.perf_counter() - started) * 1000, 3),
        }
        if resp.extra:
            record.update(resp.extra)
        with self.lock:
            self.seq += 1
            record["seq"] = self.seq
            self.records.append(record)
        if resp.after_record is not None:
            resp.after_record(record)
        return record

    def _log(self, method: str, path: str, status: int, duration_ms: float, resp: FakeResponse) -> None:
        if self.quiet:
            return
        # Never the headers, query or body: they carry credentials and customer data.
        note = ""
        fault = (resp.extra or {}).get("fault")
        if fault:
            note = f" fault={fault}"
        elif resp.schema_valid is False:
            note = " invalid"
        stamp = time.strftime("%H:%M:%S", time.localtime())
        safe_path = "".join(c if c.isprintable() else "?" for c in path)[:200]
        print(
            f"{stamp} {self.kind}[{self.name}] {method} {safe_path} {status} {duration_ms:.1f}ms{note}",
            flush=True,
        )

    def _send(self, start_response: StartResponse, resp: FakeResponse) -> Iterable[bytes]:
        if isinstance(resp.body, bytes):
            payload = resp.body
            content_type = "application/octet-stream"
        elif resp.body is None and resp.status in (204, 304):
            payload = b""
            content_type = ""
        else:
            payload = dumps(resp.body)
            content_type = "application/json; charset=utf-8"
        headers = [("Content-Length", str(len(payload)))]
        if content_type:
            headers.append(("Content-Type", content_type))
        headers.extend((k, v) for k, v in resp.headers.items() if k.lower() not in ("content-length",))
        start_response(status_line(resp.status), headers)
        if resp.body_delay_ms > 0 and payload:
            return _stalled_body(payload, resp.body_delay_ms / 1000)
        return [payload]

    # -- control -----------------------------------------------------------------------------

    def _control_call(
        self, environ: Environ, start_response: StartResponse, now: float, method: str, path: str
    ) -> Iterable[bytes]:
        try:
            req, early = self._read(environ, now, method, path)
            if early is not None:
                resp = early
            elif req.json_error is not None:
                resp = FakeResponse(400, {"error": f"invalid JSON: {req.json_error}"})
            else:
                resp = self._control(req)
        except ValueError as exc:
            resp = FakeResponse(400, {"error": str(exc)})
        except Exception:
            traceback.print_exc()
            resp = FakeResponse(500, {"error": "control endpoint crashed"})
        if method == "GET":
            # The connector's status page (another loopback port) reads the records from the browser.
            resp.headers["Access-Control-Allow-Origin"] = "*"
        return self._send(start_response, resp)

    def _control(self, req: FakeRequest) -> FakeResponse:
        route = (req.method, req.path.rstrip("/"))
        if route == ("GET", "/__fake/health"):
            return FakeResponse(
                200,
                {
                    "ok": True,
                    "kind": self.kind,
                    "name": self.name,
                    "pid": os.getpid(),
                    "requests": self.seq,
                    "uptime_s": round(time.time() - self.started, 3),
                },
            )
        if route == ("GET", "/__fake/requests"):
            return FakeResponse(200, self.filtered_records(req.query))
        if route == ("DELETE", "/__fake/requests"):
            self.clear_records()
            return FakeResponse(200, {"cleared": True})
        if route == ("GET", "/__fake/faults"):
            return FakeResponse(200, self.faults_state())
        if route == ("POST", "/__fake/faults"):
            return FakeResponse(200, self.add_faults(req.body))
        if route == ("DELETE", "/__fake/faults"):
            with self.lock:
                self._reset_faults()
            return FakeResponse(200, self.faults_state())
        if route == ("POST", "/__fake/reset"):
            self.clear_records()
            with self.lock:
                self._reset_faults()
            self.clear_state()
            return FakeResponse(200, {"reset": True})
        extra = self.control(req)
        if extra is not None:
            return extra
        return FakeResponse(404, {"error": f"no control endpoint {req.method} {req.path}"})

    def filtered_records(self, query: dict[str, str | list[str]]) -> list[dict[str, Any]]:
        path = query.get("path")
        method = query.get("method")
        since_raw = query.get("since")
        since = int(since_raw) if isinstance(since_raw, str) and since_raw.isdigit() else 0
        with self.lock:
            records = list(self.records)
        return [
            r
            for r in records
            if r["seq"] > since
            and (path is None or r["path"] == path)
            and (method is None or r["method"] == str(method).upper())
        ]


class _NoDelayWSGIServer(WSGIServer):
    # gevent's POSIX default, stated because `make run` relies on it: a fake restarted within a
    # minute binds its port again despite the TIME_WAIT connections of the previous run.
    reuse_addr = 1

    def handle(self, sock: Any, address: Any) -> None:
        # pywsgi sends the headers and the body with two send() calls; with Nagle on, the body
        # waits for the client's delayed ACK (~40 ms per request on Linux).
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        super().handle(sock, address)


def _stalled_body(payload: bytes, delay_s: float) -> Iterator[bytes]:
    # Headers (and the first byte) go out at once; the rest of the body waits.
    yield payload[:1]
    gevent.sleep(delay_s)
    yield payload[1:]


def _watch_parent(parent_pid: int) -> None:
    # Re-parenting (the test runner died, even by SIGKILL) changes getppid(): exit with it.
    while True:
        gevent.sleep(0.5)
        if os.getppid() != parent_pid:
            os._exit(0)


def serve(
    app: FakeApp,
    host: str,
    port: int,
    *,
    port_file: Path | None = None,
    exit_with_parent: bool = False,
) -> None:
    """Serve ``app`` with gevent's WSGI server until killed. ``port`` 0 picks a free port."""
    # spawn="default": one greenlet per connection, unbounded, so hundreds of slow requests wait
    # concurrently; our own log line replaces pywsgi's access log.
    server = _NoDelayWSGIServer((host, port), app, log=None, backlog=1024)
    server.init_socket()
    bound_port = server.server_port
    if port_file is not None:
        tmp = port_file.with_name(port_file.name + ".tmp")
        tmp.write_text(str(bound_port))
        tmp.replace(port_file)  # atomic: readers never see a half-written number
    print(f"{app.kind}[{app.name}] listening on http://{host}:{bound_port} (pid {os.getpid()})", flush=True)
    if exit_with_parent:
        gevent.spawn(_watch_parent, os.getppid())
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        print(f"{app.kind}[{app.name}] stopped", flush=True)


def add_common_arguments(parser: Any, default_port: int) -> None:
    parser.add_argument("--host", default="127.0.0.1", help="bind address (default: loopback only)")
    parser.add_argument("--port", type=int, default=default_port, help="0 picks a free port")
    parser.add_argument("--port-file", type=Path, help="write the bound port here once listening")
    parser.add_argument("--max-records", type=int, default=DEFAULT_MAX_RECORDS)
    parser.add_argument("--latency-ms", type=float, default=0.0, help="initial global latency")
    parser.add_argument("--rate-limit-per-minute", type=int, help="initial rate limit")
    parser.add_argument("--quiet", action="store_true", help="no per-request log lines")
    parser.add_argument(
        "--exit-with-parent", action="store_true", help="exit when the parent process goes away"
    )


def apply_common_arguments(app: FakeApp, args: Any) -> None:
    app.quiet = args.quiet
    settings: dict[str, Any] = {}
    if args.latency_ms:
        settings["latency_ms"] = args.latency_ms
    if args.rate_limit_per_minute:
        settings["rate_limit_per_minute"] = args.rate_limit_per_minute
    if settings:
        app.add_faults(settings)


def run(app: FakeApp, args: Any) -> int:
    apply_common_arguments(app, args)
    try:
        serve(app, args.host, args.port, port_file=args.port_file, exit_with_parent=args.exit_with_parent)
    except OSError as exc:
        print(f"{app.kind}[{app.name}] cannot listen on {args.host}:{args.port}: {exc}", file=sys.stderr)
        return 1
    return 0
