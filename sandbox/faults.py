"""Fault injection of the fakes: status scripts, latency, slow bodies and the legacy rate limit.

``POST /__fake/faults`` bodies are parsed here (see ``sandbox.core`` for the control API).
"""

from __future__ import annotations

import threading
from collections import deque
from dataclasses import dataclass
from typing import Any

from sandbox.wire import is_success

LEGACY_RATE_KEYS = ("rate_limit_per_minute", "rate_limit_window_s")
SETTING_KEYS = ("latency_ms", "body_delay_ms", *LEGACY_RATE_KEYS)
SCRIPT_KEYS = ("path", "method", "statuses", "headers", "latency_ms", "body_delay_ms", "then")


def number(value: Any, name: str, minimum: float = 0.0) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or value < minimum:
        raise ValueError(f"{name} must be a number >= {minimum:g}")
    return float(value)


def header_map(value: Any, name: str) -> dict[str, str]:
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise ValueError(f"{name} must be an object of header names to values")
    return {str(k): str(v) for k, v in value.items()}


def http_status(value: Any, name: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not (value == 0 or 100 <= value <= 599):
        raise ValueError(f"{name} must be an HTTP status (100-599) or 0 (drop the connection)")
    return value


def path_matches(pattern: str | None, path: str) -> bool:
    """``None`` matches everything; ``"/v1/*"`` is a prefix; anything else is exact."""
    if pattern is None:
        return True
    if pattern.endswith("*"):
        return path.startswith(pattern[:-1])
    return path == pattern


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
        return path_matches(self.path, path)

    def describe(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "path": self.path,
            "method": self.method,
            "remaining": [s.status for s in self.steps],
            "then": self.sticky.status if self.sticky else None,
        }


class RateLimiter:
    """Sliding-window limit over accepted requests (rejected ones do not extend the lock-out).

    The fake Segment's ``rate_limit_per_minute``; the fake Voucherify folds that setting into its
    quota model instead (``sandbox.quota``).
    """

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


def parse_rate_limit(spec: dict[str, Any], limit: int | None, window_s: float) -> tuple[int | None, float]:
    """The legacy ``rate_limit_per_minute`` / ``rate_limit_window_s`` settings over the current ones."""
    raw = spec.get("rate_limit_per_minute", limit)
    window = number(spec.get("rate_limit_window_s", window_s), "rate_limit_window_s", minimum=0.001)
    if raw is None:
        return None, window
    return int(number(raw, "rate_limit_per_minute", minimum=1)), window


class FaultBook:
    """Scripts and global delays of one fake; its own lock (never held across a sleep)."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.reset()

    def reset(self) -> None:
        self.scripts: list[Script] = []
        self.script_ids = 0
        self.latency_ms = 0.0
        self.body_delay_ms = 0.0

    def settings(self) -> dict[str, Any]:
        return {"latency_ms": self.latency_ms, "body_delay_ms": self.body_delay_ms}

    def describe_scripts(self) -> list[dict[str, Any]]:
        with self.lock:
            return [s.describe() for s in self.scripts]

    def apply_settings(self, spec: dict[str, Any]) -> None:
        """Global settings (a body without ``statuses``); the legacy rate keys are the caller's."""
        unknown = set(spec) - set(SETTING_KEYS)
        if unknown:
            raise ValueError(f"unknown keys {sorted(unknown)}; a script needs 'statuses'")
        latency = number(spec.get("latency_ms", self.latency_ms), "latency_ms")
        body_delay = number(spec.get("body_delay_ms", self.body_delay_ms), "body_delay_ms")
        with self.lock:
            self.latency_ms, self.body_delay_ms = latency, body_delay

    def add_script(self, spec: dict[str, Any]) -> int:
        unknown = set(spec) - set(SCRIPT_KEYS)
        if unknown:
            raise ValueError(f"unknown keys in a fault script: {sorted(unknown)}")
        statuses = spec["statuses"]
        if not isinstance(statuses, list):
            raise ValueError("statuses must be a list of HTTP statuses")
        statuses = [http_status(s, "statuses[]") for s in statuses]
        raw_headers = spec.get("headers")
        if isinstance(raw_headers, list):
            if len(raw_headers) != len(statuses):
                raise ValueError("a headers list needs one entry (object or null) per status")
            per_step = [header_map(h, "headers[]") for h in raw_headers]
        else:
            per_step = [header_map(raw_headers, "headers")] * len(statuses)
        latency = number(spec.get("latency_ms", 0), "latency_ms")
        body_delay = number(spec.get("body_delay_ms", 0), "body_delay_ms")
        path = spec.get("path")
        if path is not None and (not isinstance(path, str) or not path.startswith("/")):
            raise ValueError("path must start with '/'")
        method = spec.get("method")
        if method is not None and not isinstance(method, str):
            raise ValueError("method must be a string")
        then = spec.get("then")
        sticky = None
        if then is not None and not (isinstance(then, str) and then == "normal"):
            then = http_status(then, "then")
            if not is_success(then):
                sticky_headers = per_step[-1] if per_step else header_map(raw_headers, "headers")
                sticky = Step(then, sticky_headers, latency, body_delay)
        steps = deque(Step(s, h, latency, body_delay) for s, h in zip(statuses, per_step, strict=True))
        with self.lock:
            self.script_ids += 1
            script = Script(self.script_ids, path, method.upper() if method else None, steps, sticky)
            self.scripts.append(script)
        return script.id

    def next_step(self, method: str, path: str) -> Step | None:
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
