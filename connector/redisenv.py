"""Where Redis is, from the environment: ``REDIS_URL``, Sentinel, TLS and replica waits.

Read by :func:`connector.config.load_settings` for the processes that load the connections, and on
their own by the processes and commands that need Redis without them (``connector dlq`` with only
``REDIS_URL``, the healthcheck, the broker of a one-off command).  Problems name the variable and
never a password's value.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping

from connector.errors import ConfigError
from connector.reader import secret_problem
from connector.redisconn import RedisTarget, SentinelTarget
from connector.secrets import Secret
from connector.tuning import BrokerOptions

DEFAULT_REDIS_URL = "redis://localhost:6379/0"
TLS_VERIFY_MODES = ("required", "none")


def _environment(env: Mapping[str, str] | None) -> Mapping[str, str]:
    return os.environ if env is None else env


def redis_tls_verify(env: Mapping[str, str] | None = None, problems: list[str] | None = None) -> str:
    """``REDIS_TLS_VERIFY`` (``required`` | ``none``), for the processes and commands that read
    only the Redis settings.  An unknown value is a problem (listed, or raised as ConfigError)."""
    env = _environment(env)
    value = (env.get("REDIS_TLS_VERIFY") or "required").strip().lower()
    if value in TLS_VERIFY_MODES:
        return value
    problem = f"REDIS_TLS_VERIFY: must be one of {', '.join(TLS_VERIFY_MODES)}, not {value!r}"
    if problems is None:
        raise ConfigError([problem])
    problems.append(problem)
    return "required"


def redact_url(url: str) -> str:
    """redis://:password@host -> redis://:****@host, for log lines."""
    return re.sub(r"(//[^:/@]*:)[^@]*@", r"\1****@", url)


def redis_url(env: Mapping[str, str] | None = None) -> str:
    """``REDIS_URL`` (or the default), for the commands that need Redis without the connections."""
    return _environment(env).get("REDIS_URL") or DEFAULT_REDIS_URL


def redis_target(env: Mapping[str, str] | None = None) -> RedisTarget:
    """Where Redis is for the processes and commands that need it without the connections: the
    Sentinel master (``REDIS_SENTINELS``, which makes ``REDIS_URL`` ignored) or ``REDIS_URL``.
    A bad Sentinel setting raises :class:`ConfigError` naming the variable."""
    env = _environment(env)
    problems: list[str] = []
    target = redis_sentinel(env, problems)
    if problems:
        raise ConfigError(problems)
    return target if target is not None else redis_url(env)


_HOST = re.compile(r"^(\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9_.-]+)$")


def redis_sentinel(env: Mapping[str, str], problems: list[str]) -> SentinelTarget | None:
    """``REDIS_SENTINELS=host:port,host:port`` with ``REDIS_SENTINEL_MASTER=name`` and the optional
    ``REDIS_SENTINEL_PASSWORD`` (for the sentinels and the master alike), or None when
    ``REDIS_SENTINELS`` is unset.  Problems name the variable, never the password's value."""
    raw = (env.get("REDIS_SENTINELS") or "").strip()
    master = (env.get("REDIS_SENTINEL_MASTER") or "").strip()
    password = env.get("REDIS_SENTINEL_PASSWORD") or ""
    if not raw:
        for name in ("REDIS_SENTINEL_MASTER", "REDIS_SENTINEL_PASSWORD"):
            if env.get(name):
                problems.append(f"{name}: is set but REDIS_SENTINELS is not (set both, or neither)")
        return None
    nodes: list[tuple[str, int]] = []
    for part in (p.strip() for p in raw.split(",")):
        host, sep, port_text = part.rpartition(":")
        try:
            port = int(port_text) if sep else 0
        except ValueError:
            port = 0
        if not sep or not _HOST.match(host) or not 0 < port < 65536:
            shown = part if len(part) <= 64 else part[:61] + "..."
            problems.append(f"REDIS_SENTINELS: {shown!r} is not host:port (a comma-separated list)")
            continue
        nodes.append((host.strip("[]"), port))
    if not master:
        problems.append("REDIS_SENTINEL_MASTER: must name the master group when REDIS_SENTINELS is set")
    elif not re.fullmatch(r"[A-Za-z0-9_.:-]{1,128}", master):
        problems.append("REDIS_SENTINEL_MASTER: must be a Sentinel master name (letters, digits, _ . : -)")
    if password and secret_problem(password) is not None:
        problems.append(f"REDIS_SENTINEL_PASSWORD: {secret_problem(password)}")
    db_raw = (env.get("REDIS_SENTINEL_DB") or "0").strip()
    if not db_raw.isdigit():
        problems.append(f"REDIS_SENTINEL_DB: must be a database number, not {db_raw!r}")
    if not nodes or not master or problems:
        return None
    return SentinelTarget(
        nodes=tuple(nodes),
        master=master,
        password=Secret(password) if password else None,
        db=int(db_raw) if db_raw.isdigit() else 0,
    )


def replica_waits(env: Mapping[str, str], problems: list[str]) -> tuple[int, int]:
    """``REDIS_MIN_REPLICAS`` (default 0: no wait) and ``REDIS_MIN_REPLICAS_TIMEOUT_MS`` (default
    1000): how many replicas must acknowledge a publish, and how long the publisher waits."""
    default = BrokerOptions()
    count, wait_ms = default.min_replicas, default.replica_wait_ms
    raw = (env.get("REDIS_MIN_REPLICAS") or "").strip()
    if raw:
        if raw.isdigit() and int(raw) <= 64:
            count = int(raw)
        else:
            problems.append(
                f"REDIS_MIN_REPLICAS: must be a number of replicas from 0 to 64, not {raw[:20]!r}"
            )
    raw = (env.get("REDIS_MIN_REPLICAS_TIMEOUT_MS") or "").strip()
    if raw:
        if raw.isdigit() and 1 <= int(raw) <= 60000:
            wait_ms = int(raw)
        else:
            problems.append(
                f"REDIS_MIN_REPLICAS_TIMEOUT_MS: must be milliseconds from 1 to 60000, not {raw[:20]!r}"
            )
    return count, wait_ms
