"""Process-wide state of a worker: settings, Redis client, HTTP transports.

Created lazily on first use in each process (after Celery forks its children), so sockets are
never shared across processes.
"""

from __future__ import annotations

import os
import threading
from dataclasses import dataclass, field
from typing import Any

import redis

from connector import redisconn
from connector.config import Settings, load_settings


@dataclass
class Runtime:
    settings: Settings
    redis: redis.Redis
    # Extended by the delivery machinery (HTTP transports per target, rate limiters, ...).
    extras: dict[str, Any] = field(default_factory=dict)


_lock = threading.Lock()
_runtime: Runtime | None = None
_pid: int | None = None


def build_runtime(settings: Settings | None = None) -> Runtime:
    settings = settings or load_settings()
    client = redisconn.client(
        settings.redis_url,
        settings.redis_tls_verify,
        socket_connect_timeout=2,
        socket_timeout=10,
        health_check_interval=10,
    )
    return Runtime(settings=settings, redis=client)


def runtime() -> Runtime:
    global _runtime, _pid
    if _runtime is None or _pid != os.getpid():
        with _lock:
            if _runtime is None or _pid != os.getpid():
                _runtime = build_runtime()
                _pid = os.getpid()
    return _runtime


def set_runtime(rt: Runtime | None) -> None:
    """For tests and the CLI: install a runtime built from explicit settings."""
    global _runtime, _pid
    _runtime = rt
    _pid = os.getpid() if rt else None
