"""Configuration: the environment and ``connections.toml``, read once at process start (SPEC 1).

Every process calls :func:`load_settings` once when it starts and passes what it needs down;
this module (with the modules it calls: :mod:`connector.connections`, :mod:`connector.reader`,
:mod:`connector.tuning`, :mod:`connector.redisenv`) is the only code of the product that reads the environment.  Every
problem is collected and reported at once as a :class:`ConfigError` whose lines name the
connection and the key, so an operator fixes a file in one go instead of one restart per typo.

A few readers stand alone for processes and commands that must work without the connections
(``connector dlq`` with only ``REDIS_URL``, logging and metrics set up before anything else).
"""

from __future__ import annotations

import hashlib
import os
import re
import sys
import tomllib
from collections.abc import Mapping, MutableMapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any, NoReturn

from connector.connections import (
    DEFAULTS_CHOICES,
    MODES,
    Connection,
    DestinationSettings,
    MappingChecks,
    SegmentSettings,
    VoucherifySettings,
    read_connection,
    with_quota_period_scale,
)
from connector.errors import ConfigError
from connector.reader import secret_problem
from connector.redisconn import RedisTarget, SentinelTarget
from connector.redisenv import DEFAULT_REDIS_URL, redis_sentinel, redis_tls_verify, replica_waits
from connector.secrets import Secret
from connector.shorthand import SHORTHAND_LABELS, from_env_shorthand
from connector.tuning import BrokerOptions, SchedulerConfig, TraceOptions, Tuning, from_env

__all__ = [
    "DEFAULTS_CHOICES",
    "MODES",
    "ConfigError",
    "Connection",
    "DestinationSettings",
    "MappingChecks",
    "SegmentSettings",
    "Settings",
    "VoucherifySettings",
    "load_settings",
]

DEFAULT_KEY_PREFIX = "connector:"
# REDIS_TLS_VERIFY, for rediss:// URLs: "required" (default) verifies the server's certificate
# against the system's CAs; "none" accepts any (Heroku Redis serves a self-signed chain).
# `make run` tells the web process where the sandbox's fakes listen.  Its presence alone does NOT
# make a process the sandbox (anyone can set a variable): see `is_sandbox`.
SANDBOX_ENV = "CONNECTOR_SANDBOX_FAKES"
_LOOPBACK_URL = re.compile(r"^http://(127\.0\.0\.1|localhost|\[::1\]):\d{1,5}$")


def environment() -> MutableMapping[str, str]:
    """The process's environment: the one place the product touches ``os.environ``."""
    return os.environ


def exit_on_config_error(exc: ConfigError, process: str) -> NoReturn:
    """Print the problems (once, readable, to stderr) and stop the process with status 2.

    A ``SystemExit`` raised while gunicorn preloads the app, or while Celery imports the worker
    module, ends those programs with this status and without their own traceback."""
    print(exc.report(process), file=sys.stderr, flush=True)
    raise SystemExit(2)


@dataclass(frozen=True)
class LogOptions:
    format: str | None = None  # LOG_FORMAT: json | human (default: human on a terminal)
    level: str = "INFO"  # LOG_LEVEL


@dataclass(frozen=True)
class Settings:
    redis_url: str  # REDIS_URL; ignored when redis_sentinel is set
    connections: tuple[Connection, ...]
    port: int = 8000
    redis_tls_verify: str = "required"  # REDIS_TLS_VERIFY: applied to every Redis client
    # The status page and /status.json: off (404) when False, or when no STATUS_TOKEN is set
    # outside the sandbox.  /metrics asks for METRICS_TOKEN when it is set.
    status_page: bool = True
    status_token: Secret | None = None
    # Regulations (SPEC 14, POST /v1/regulations): off (404) without ADMIN_TOKEN.  A token of its
    # own: it deletes customers in Voucherify, which neither a write key nor the status page may.
    admin_token: Secret | None = None
    metrics_token: Secret | None = None
    sandbox: bool = False
    # CONNECTOR_SANDBOX_FAKES, loopback URLs only: {"voucherify": "http://127.0.0.1:8100", ...}
    sandbox_fakes: Mapping[str, str] = field(default_factory=dict)
    key_prefix: str = DEFAULT_KEY_PREFIX  # CONNECTOR_KEY_PREFIX: every Redis key of ours
    tuning: Tuning = field(default_factory=Tuning)
    scheduler: SchedulerConfig = field(default_factory=SchedulerConfig)
    broker: BrokerOptions = field(default_factory=BrokerOptions)
    body_timeout: float = 10.0  # CONNECTOR_BODY_TIMEOUT_SECONDS: the web's deadline for a body
    worker_queues: tuple[str, ...] = ()  # WORKER_QUEUES: a worker limited to these queues
    metrics_dir: str | None = None  # PROMETHEUS_MULTIPROC_DIR
    logs: LogOptions = field(default_factory=LogOptions)
    trace: TraceOptions = field(default_factory=TraceOptions)  # TRACE_RETENTION_HOURS, ...
    # REDIS_MEMORY_HIGH_WATER: the share of Redis' maxmemory above which the ingest answers 503
    # redis_memory_full (connector.memory), so that the workers keep room to finish.
    memory_high_water: float = 0.85
    # REDIS_SENTINELS, REDIS_SENTINEL_MASTER, REDIS_SENTINEL_PASSWORD: Redis behind Sentinel.
    redis_sentinel: SentinelTarget | None = None
    _by_key: Mapping[str, Connection] = field(default_factory=dict, repr=False)
    _by_id: Mapping[str, Connection] = field(default_factory=dict, repr=False)

    @property
    def redis(self) -> RedisTarget:
        """Where every Redis client of the process connects: the sentinels' master, or REDIS_URL."""
        return self.redis_sentinel if self.redis_sentinel is not None else self.redis_url

    def connection_for_write_key(self, key: str) -> Connection | None:
        # Look up by digest so that the lookup never compares secrets byte by byte.
        return self._by_key.get(_key_digest(key))

    def connection(self, connection_id: str) -> Connection | None:
        return self._by_id.get(connection_id)

    @property
    def voucherify_queues(self) -> list[str]:
        return sorted({c.voucherify.queue for c in self.connections})

    @property
    def segment_queues(self) -> list[str]:
        return sorted({c.segment.queue for c in self.connections if c.segment})


def _key_digest(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


def load_settings(
    env: Mapping[str, str] | None = None,
    *,
    checks: MappingChecks | None = None,
    require_connections: bool = True,
) -> Settings:
    """Read the whole configuration; raise :class:`ConfigError` listing every problem."""
    env = environment() if env is None else env
    problems: list[str] = []
    path = env.get("CONNECTIONS_FILE")
    document: Mapping[str, Any] | None = None
    file_failed = False
    if path:
        try:
            with open(path, "rb") as fh:
                document = tomllib.load(fh)
        except FileNotFoundError:
            problems.append(f"CONNECTIONS_FILE: {path} does not exist")
            file_failed = True
        except OSError as exc:
            problems.append(f"CONNECTIONS_FILE: {path} cannot be read ({exc.strerror or 'error'})")
            file_failed = True
        except tomllib.TOMLDecodeError as exc:
            # tomllib's messages give a line and column, never the text of the line.
            problems.append(f"CONNECTIONS_FILE: {path} is not valid TOML: {exc}")
            file_failed = True
    else:
        document = from_env_shorthand(env)

    connections: list[Connection] = []
    raw_connections = (document or {}).get("connection", [])
    if not isinstance(raw_connections, list):
        problems.append("connection: must be an array of tables ([[connection]])")
        raw_connections = []
    for index, raw in enumerate(raw_connections):
        if not isinstance(raw, Mapping):
            problems.append(f"connection #{index}: must be a table")
            continue
        conn = read_connection(
            raw,
            index,
            env,
            problems,
            checks,
            expand=bool(path),  # ${VAR} belongs to connections.toml, never to the shorthand
            labels=None if path else SHORTHAND_LABELS,
        )
        if conn is not None:
            connections.append(conn)
    if require_connections and not raw_connections and not file_failed:
        problems.append(
            "no connection configured: set CONNECTIONS_FILE, or INGEST_WRITE_KEYS and VOUCHERIFY_* "
            "(or use `make run` for the sandbox)"
        )

    by_key: dict[str, Connection] = {}
    by_id: dict[str, Connection] = {}
    for conn in connections:
        if conn.id in by_id:
            problems.append(f"connection {conn.id!r}: id: used by more than one connection")
        by_id[conn.id] = conn
        for key in conn.write_keys:
            digest = _key_digest(key.reveal())
            if digest in by_key and by_key[digest].id != conn.id:
                problems.append(
                    f"connection {conn.id!r}: write_keys: a key is also used by {by_key[digest].id!r}"
                )
            by_key[digest] = conn

    scale = _quota_period_scale(env, problems)
    if scale != 1.0:
        connections = [with_quota_period_scale(c, scale) for c in connections]
        by_id = {c.id: c for c in connections}
        by_key = {k: by_id[c.id] for k, c in by_key.items()}

    redis_url = env.get("REDIS_URL") or DEFAULT_REDIS_URL
    sentinel_target = redis_sentinel(env, problems)
    if sentinel_target is None and not re.match(r"^(redis|rediss|unix)://", redis_url):
        problems.append("REDIS_URL: must be a redis://, rediss:// or unix:// URL")
    min_replicas, replica_wait_ms = replica_waits(env, problems)
    tls_verify = redis_tls_verify(env, problems)
    port_raw = env.get("PORT", "8000")
    try:
        port = int(port_raw)
    except ValueError:
        problems.append(f"PORT: must be an integer, not {port_raw!r}")
        port = 8000
    status_token, metrics_token = (
        _token(env, "STATUS_TOKEN", problems),
        _token(env, "METRICS_TOKEN", problems),
    )
    admin_token = _token(env, "ADMIN_TOKEN", problems)
    status_page = (env.get("STATUS_PAGE") or "on").strip().lower()
    if status_page not in ("on", "off", "1", "0", "true", "false", "yes", "no"):
        problems.append(f"STATUS_PAGE: must be on or off, not {status_page!r}")
    trace = trace_options(env, problems)
    water_raw = (env.get("REDIS_MEMORY_HIGH_WATER") or "").strip()
    water = Settings.memory_high_water
    if water_raw:
        try:
            water = float(water_raw)
            if not 0 < water <= 1:
                raise ValueError
        except ValueError:
            problems.append(f"REDIS_MEMORY_HIGH_WATER: must be a fraction in (0, 1], not {water_raw!r}")
            water = Settings.memory_high_water
    if problems:
        raise ConfigError(problems)
    return Settings(
        redis_url=redis_url,
        connections=tuple(connections),
        port=port,
        redis_tls_verify=tls_verify,
        status_page=status_page not in ("off", "0", "false", "no"),
        status_token=status_token,
        admin_token=admin_token,
        metrics_token=metrics_token,
        sandbox=is_sandbox(connections, sandbox_fakes(env)),
        sandbox_fakes=sandbox_fakes(env),
        key_prefix=key_prefix(env),
        tuning=from_env(Tuning, env),
        scheduler=from_env(SchedulerConfig, env),
        broker=replace(
            from_env(BrokerOptions, env), min_replicas=min_replicas, replica_wait_ms=replica_wait_ms
        ),
        body_timeout=_body_timeout(env),
        worker_queues=tuple(q.strip() for q in env.get("WORKER_QUEUES", "").split(",") if q.strip()),
        metrics_dir=metrics_directory(env),
        logs=log_options(env),
        trace=trace,
        memory_high_water=water,
        redis_sentinel=sentinel_target,
        _by_key=by_key,
        _by_id=by_id,
    )


def trace_options(env: Mapping[str, str] | None = None, problems: list[str] | None = None) -> TraceOptions:
    """``TRACE_RETENTION_HOURS`` (0..720, default 24) and ``TRACE_SAMPLE_ABOVE_PER_MINUTE`` (an
    integer >= 0, default 6000): how long event traces are kept, and above which rate of received
    events a connection's delivered traces are sampled (see :mod:`connector.trace`)."""
    env = environment() if env is None else env
    found: list[str] = [] if problems is None else problems
    default = TraceOptions()
    hours, above = default.retention_hours, default.sample_above_per_minute
    budget = default.budget_bytes
    raw = (env.get("TRACE_MEMORY_MB") or "").strip()
    if raw:
        try:
            budget = int(float(raw) * 1024 * 1024)
            if budget < 0:
                raise ValueError
        except ValueError:
            found.append(f"TRACE_MEMORY_MB: must be a number of megabytes >= 0, not {raw!r}")
            budget = default.budget_bytes
    raw = (env.get("TRACE_RETENTION_HOURS") or "").strip()
    if raw:
        try:
            hours = float(raw)
            if not 0 <= hours <= 720:
                raise ValueError
        except ValueError:
            found.append(f"TRACE_RETENTION_HOURS: must be a number of hours from 0 to 720, not {raw!r}")
            hours = default.retention_hours
    raw = (env.get("TRACE_SAMPLE_ABOVE_PER_MINUTE") or "").strip()
    if raw:
        try:
            above = int(raw)
            if above < 0:
                raise ValueError
        except ValueError:
            found.append(f"TRACE_SAMPLE_ABOVE_PER_MINUTE: must be an integer >= 0, not {raw!r}")
            above = default.sample_above_per_minute
    if problems is None and found:
        raise ConfigError(found)
    return TraceOptions(retention_hours=hours, sample_above_per_minute=above, budget_bytes=budget)


def _token(env: Mapping[str, str], name: str, problems: list[str]) -> Secret | None:
    value = env.get(name)
    if not value:
        return None
    why = secret_problem(value)
    if why is not None:
        problems.append(f"{name}: {why}")
        return None
    if len(value) < 16:
        problems.append(f"{name}: must be at least 16 characters (it guards the whole status page)")
        return None
    return Secret(value)


def key_prefix(env: Mapping[str, str] | None = None) -> str:
    """``CONNECTOR_KEY_PREFIX``: several deployments (or tests) can share one Redis database."""
    return (environment() if env is None else env).get("CONNECTOR_KEY_PREFIX") or DEFAULT_KEY_PREFIX


def metrics_directory(env: Mapping[str, str] | None = None) -> str | None:
    """``PROMETHEUS_MULTIPROC_DIR`` (see :mod:`connector.multiprocess`), or None."""
    return (environment() if env is None else env).get("PROMETHEUS_MULTIPROC_DIR") or None


def log_options(env: Mapping[str, str] | None = None) -> LogOptions:
    env = environment() if env is None else env
    return LogOptions(format=env.get("LOG_FORMAT") or None, level=(env.get("LOG_LEVEL") or "INFO").upper())


def is_sandbox(connections: Sequence[Connection], fakes: Mapping[str, str]) -> bool:
    """Whether this process serves ``make run``'s sandbox: the loopback fakes are named AND every
    configured connection talks to them only (its Voucherify ``api_url`` and Segment ``api_url``
    are the fakes' URLs).  Only then does the status page open without ``STATUS_TOKEN``: such a
    process holds no real shop's data, whoever set ``CONNECTOR_SANDBOX_FAKES``.  A production
    deployment with the variable set by mistake (or by someone else) stays closed."""
    urls = set(fakes.values())
    if not urls or not connections:
        return False
    for connection in connections:
        if (connection.voucherify.api_url or "").rstrip("/") not in urls:
            return False
        if connection.segment is not None and (connection.segment.api_url or "").rstrip("/") not in urls:
            return False
    return True


def sandbox_fakes(env: Mapping[str, str] | None = None) -> dict[str, str]:
    """``{"voucherify": "http://127.0.0.1:8100", ...}`` from ``CONNECTOR_SANDBOX_FAKES``
    (``name=url,name=url``); anything but a loopback URL is left out."""
    raw = (environment() if env is None else env).get(SANDBOX_ENV, "")
    fakes: dict[str, str] = {}
    for part in raw.split(","):
        name, _, url = part.strip().partition("=")
        url = url.strip().rstrip("/")
        if re.fullmatch(r"[a-z0-9_-]{1,32}", name.strip()) and _LOOPBACK_URL.match(url):
            fakes[name.strip()] = url
    return fakes


def _quota_period_scale(env: Mapping[str, str], problems: list[str]) -> float:
    """``CONNECTOR_QUOTA_PERIOD_SCALE`` -- TEST ONLY: Voucherify's quota periods (minute, hour,
    day, cycle) last this share of their real length, to match the fake's fast clock
    (``period_scale``).  Never set it in production: the budgets would no longer be Voucherify's."""
    raw = (env.get("CONNECTOR_QUOTA_PERIOD_SCALE") or "").strip()
    if not raw:
        return 1.0
    try:
        scale = float(raw)
    except ValueError:
        scale = 0.0
    if not (0.0 < scale <= 1.0):
        problems.append("CONNECTOR_QUOTA_PERIOD_SCALE: must be a number > 0 and <= 1 (test only)")
        return 1.0
    return scale


def _body_timeout(env: Mapping[str, str]) -> float:
    try:
        return max(0.5, float(env.get("CONNECTOR_BODY_TIMEOUT_SECONDS") or 10))
    except ValueError:
        return 10.0
