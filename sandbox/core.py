"""Shared core of the sandbox fakes: a WSGI base app with recording, fault scripts, latency,
rate limiting and the ``/__fake/`` control API (served by ``sandbox.server``).

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
  The fake Segment applies the rate limit as a sliding window over every path; the fake
  Voucherify folds it into its quota model (``sandbox.quota``: ``api_calls_per_minute`` and the
  length of its "minute").
- ``DELETE /__fake/faults`` -> no scripts, default settings, rate-limit window emptied.
- ``POST /__fake/reset`` -> all of the above plus the fake's own state (customers, events).

Requests under ``/__fake/`` are neither recorded, logged, delayed nor faulted.
"""

from __future__ import annotations

import os
import threading
import time
import traceback
from collections import deque
from collections.abc import Iterable, Iterator
from typing import Any
from urllib.parse import parse_qs

import gevent

from sandbox.faults import LEGACY_RATE_KEYS, FaultBook, RateLimiter, Step, parse_rate_limit
from sandbox.wire import (
    DropConnection,
    Environ,
    FakeRequest,
    FakeResponse,
    StartResponse,
    dumps,
    is_success,
    loads,
    status_line,
)

CONTROL_PREFIX = "/__fake/"
DEFAULT_MAX_RECORDS = 100_000
DEFAULT_MAX_BODY_BYTES = 10 * 1024 * 1024  # Voucherify's bulk limit; well above Segment's


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
        self.faults = FaultBook()
        self.rate_limiter: RateLimiter | None = None

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
        with self.faults.lock:
            self.faults.reset()
        self.set_rate_limit(None, 60.0)

    def set_rate_limit(self, limit: int | None, window_s: float) -> None:
        """The legacy ``rate_limit_per_minute`` setting: a sliding window over every request."""
        with self.lock:
            self.rate_limiter = RateLimiter(limit, window_s) if limit is not None else None

    def rate_limit_settings(self) -> tuple[int | None, float]:
        limiter = self.rate_limiter
        return (limiter.limit, limiter.window_s) if limiter else (None, 60.0)

    def budget_check(self, req: FakeRequest) -> tuple[FakeResponse | None, dict[str, str]]:
        """Before ``handle``: a refusal (429) or the budget headers of the answer."""
        limiter = self.rate_limiter
        if limiter is None:
            return None, {}
        with self.lock:
            allowed, headers = limiter.check(time.time())
        if allowed:
            return None, headers
        body = self.error_body(429, "Too Many Requests", "Too many requests hit the API too quickly.")
        return FakeResponse(429, body, headers, extra={"fault": "rate_limit"}), headers

    def budget_peek(self, req: FakeRequest) -> dict[str, str]:
        """The budget headers of an answer the budget did not see (a scripted fault)."""
        limiter = self.rate_limiter
        return limiter.peek() if limiter else {}

    def faults_state(self) -> dict[str, Any]:
        limit, window = self.rate_limit_settings()
        return {
            "settings": {
                **self.faults.settings(),
                "rate_limit_per_minute": limit,
                "rate_limit_window_s": window,
            },
            "scripts": self.faults.describe_scripts(),
        }

    def add_faults(self, spec: Any) -> dict[str, Any]:
        """Apply one ``POST /__fake/faults`` body; raises ValueError on a bad spec."""
        if not isinstance(spec, dict):
            raise ValueError("body must be a JSON object")
        if "statuses" in spec:
            script_id = self.faults.add_script(spec)
            return {"script_id": script_id, **self.faults_state()}
        rate = None
        if any(key in spec for key in LEGACY_RATE_KEYS):
            rate = parse_rate_limit(spec, *self.rate_limit_settings())
        self.faults.apply_settings(spec)  # validates every key before anything changes below
        if rate is not None:
            self.set_rate_limit(*rate)
        return self.faults_state()

    def start_background(self) -> None:
        """Called by the server once listening: greenlets of a subclass (none here)."""

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
        latency_ms = self.faults.latency_ms
        if latency_ms:
            gevent.sleep(latency_ms / 1000)
        step = self.faults.next_step(req.method, req.path)
        if step is not None and step.latency_ms:
            gevent.sleep(step.latency_ms / 1000)
        body_delay = self.faults.body_delay_ms + (step.body_delay_ms if step else 0.0)
        if step is not None and step.status == 0:
            return FakeResponse(0, extra={"fault": "drop"}), True
        if step is not None and not is_success(step.status):
            return self._scripted(req, step, body_delay), False
        refusal, limit_headers = self.budget_check(req)
        if refusal is not None:
            refusal.body_delay_ms = body_delay
            return refusal, False
        resp = self.handle(req)
        resp.headers.update(limit_headers)
        if step is not None:
            resp.headers.update(step.headers)
        resp.body_delay_ms += body_delay
        return resp, False

    def _scripted(self, req: FakeRequest, step: Step, body_delay: float) -> FakeResponse:
        phrase = status_line(step.status).split(" ", 1)[1]
        headers = self.budget_peek(req)
        headers.update(step.headers)  # a script may fake its own rate-limit headers
        return FakeResponse(
            step.status,
            self.error_body(step.status, phrase, "injected by the fake's fault script"),
            headers,
            extra={"fault": "script"},
            body_delay_ms=body_delay,
        )

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
                    # When this request was taken up (the records' clock): a probe of how far
                    # behind the fake is on a loaded machine.
                    "received_at": req.time,
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
            self._reset_faults()
            return FakeResponse(200, self.faults_state())
        if route == ("POST", "/__fake/reset"):
            self.clear_records()
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


def _stalled_body(payload: bytes, delay_s: float) -> Iterator[bytes]:
    # Headers (and the first byte) go out at once; the rest of the body waits.
    yield payload[:1]
    gevent.sleep(delay_s)
    yield payload[1:]
