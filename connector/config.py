"""Configuration: environment variables and ``connections.toml``, mapped explicitly (SPEC 1).

Both processes (web and workers) call :func:`load_settings` once at start-up.  Every problem is
collected and reported at once as a :class:`ConfigError` whose lines name the connection and the
key, so an operator fixes a file in one go instead of one restart per typo.  Secrets are wrapped
in :class:`~connector.secrets.Secret` the moment they are read.
"""

from __future__ import annotations

import hashlib
import os
import re
import sys
import tomllib
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, NoReturn

from connector import regions
from connector.secrets import Secret

DEFAULT_REDIS_URL = "redis://localhost:6379/0"
CONNECTION_ID_RE = re.compile(r"^[a-z0-9][a-z0-9-]{0,62}$")
VAR_RE = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)\}")
MODES = ("rest", "segmentio")
# REDIS_TLS_VERIFY, for rediss:// URLs: "required" (default) verifies the server's certificate
# against the system's CAs; "none" accepts any (Heroku Redis serves a self-signed chain).
TLS_VERIFY_MODES = ("required", "none")
MAX_SUBSCRIPTIONS = 50
DEFAULT_BACKLOG_BYTES = 128 * 1024 * 1024
MIN_BACKLOG_BYTES = 1024 * 1024  # below one full request (500 KB) plus room, nothing could pass
# `make run` tells the web process where the sandbox's fakes listen; its presence is also what
# marks a process as serving the sandbox (status page open without STATUS_TOKEN).
SANDBOX_ENV = "CONNECTOR_SANDBOX_FAKES"


class ConfigError(Exception):
    """All configuration problems found, one per line (each once, in the order found)."""

    def __init__(self, problems: list[str]) -> None:
        self.problems = list(dict.fromkeys(problems))
        super().__init__("invalid configuration:\n" + "\n".join(f"  - {p}" for p in self.problems))

    def report(self, process: str) -> str:
        """The short text a process prints before exiting: the list, no traceback."""
        count = len(self.problems)
        head = f"connector {process}: invalid configuration ({count} problem{'s' if count != 1 else ''}):"
        return "\n".join([head, *(f"  - {p}" for p in self.problems), "Fix these and start again."])


def exit_on_config_error(exc: ConfigError, process: str) -> NoReturn:
    """Print the problems (once, readable, to stderr) and stop the process with status 2.

    A ``SystemExit`` raised while gunicorn preloads the app, or while Celery imports the worker
    module, ends those programs with this status and without their own traceback."""
    print(exc.report(process), file=sys.stderr, flush=True)
    raise SystemExit(2)


# Secrets must be usable as they are in a header or an HMAC.  Whitespace at either end (a
# trailing newline from `echo` or a copied file) or a control character would either fail every
# call or, worse, end up inside an exception text that quotes the header value.
_BAD_SECRET_RE = re.compile(r"^\s|\s$|[\x00-\x1f\x7f]")


def secret_problem(value: str) -> str | None:
    """Why ``value`` cannot be a secret, in words that never quote it; None when it can."""
    if _BAD_SECRET_RE.search(value):
        return "must not have leading or trailing whitespace or control characters (the value is not shown)"
    return None


@dataclass(frozen=True)
class VoucherifySettings:
    app_id: Secret
    secret_key: Secret
    region: str | None
    api_url: str | None
    mode: str
    base_url: str
    queue: str
    webhook_secret: Secret | None = None
    rate_limit_per_minute: int | None = None
    # Age beyond which an incoming Voucherify webhook is refused (replay protection, SPEC 4.1).
    max_event_age_seconds: int = 48 * 3600


@dataclass(frozen=True)
class SegmentSettings:
    write_key: Secret
    region: str | None
    api_url: str | None
    base_url: str
    queue: str
    # None: every customer.* event; otherwise only these Segment event names / Voucherify types
    # beyond the twelve catalog events (SPEC 4.2).
    extra_events: tuple[str, ...] | None = None
    requests_per_second: int = 1000


@dataclass(frozen=True)
class DestinationSettings:
    identify_disabled: bool = False
    track_disabled: bool = False
    page_disabled: bool = False
    screen_disabled: bool = False
    group_disabled: bool = False
    ignore_anonymous: bool = False
    # Classic fallback: source_id = userId, else anonymousId.  False gives the Actions preset
    # exactly (an event without userId fails with the reference's message).
    anonymous_fallback: bool = True
    # Events that came from Voucherify through this connector (context.integration.name =
    # "voucherify") are not sent back, or a two-way setup would loop forever.
    skip_voucherify_origin: bool = True
    track_events_filter: tuple[str, ...] = ()
    group_metadata_prefix: str = "segment_group_"
    mappings: tuple[Mapping[str, Any], ...] = ()
    # "actions" (the Actions presets) or "classic" (the classic destination's default mappings).
    defaults: str = "actions"
    # The classic "Identify Mapping" / "Track Mapping" settings: ("src.path", "dest.path") pairs.
    identify_mapping: tuple[tuple[str, str], ...] = ()
    track_mapping: tuple[tuple[str, str], ...] = ()
    # "all", or "defined": only the customer metadata keys the project's metadata schema defines.
    metadata_schema: str = "all"


@dataclass(frozen=True)
class Connection:
    id: str
    write_keys: tuple[Secret, ...]
    voucherify: VoucherifySettings
    segment: SegmentSettings | None = None
    destination: DestinationSettings = field(default_factory=DestinationSettings)
    segment_webhook_secret: Secret | None = None
    # Without a secret, the Segment webhooks receiver refuses every request (401
    # signature_required) unless the operator opts out of signatures explicitly.
    segment_webhook_unsigned: bool = False
    retry_window_seconds: int = 4 * 3600
    # Bounds on queued work before ingest answers 429 (SPEC 5, backpressure): events, and the
    # bytes they occupy in Redis (fat events would otherwise fill Redis under the event bound).
    backlog_limit: int = 100_000
    backlog_bytes_limit: int = DEFAULT_BACKLOG_BYTES


@dataclass(frozen=True)
class Settings:
    redis_url: str
    connections: tuple[Connection, ...]
    port: int = 8000
    redis_tls_verify: str = "required"  # REDIS_TLS_VERIFY: applied to every Redis client
    # The status page and /status.json: off (404) when False, or when no STATUS_TOKEN is set
    # outside the sandbox.  /metrics asks for METRICS_TOKEN when it is set.
    status_page: bool = True
    status_token: Secret | None = None
    metrics_token: Secret | None = None
    sandbox: bool = False
    _by_key: Mapping[str, Connection] = field(default_factory=dict, repr=False)
    _by_id: Mapping[str, Connection] = field(default_factory=dict, repr=False)

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


# --------------------------------------------------------------------------------------------
# Reading


class _Reader:
    """Typed access to one table, recording problems instead of raising on the first.

    ``expand``: replace ``${NAME}`` from the environment -- for connections.toml only.  The
    environment shorthand's values are taken literally (a value that happens to contain
    ``${...}`` is not a reference to yet another variable).
    """

    def __init__(
        self,
        table: Mapping[str, Any],
        where: str,
        env: Mapping[str, str],
        problems: list[str],
        prefix: str = "",
        *,
        expand: bool = True,
        labels: Mapping[str, str] | None = None,
    ) -> None:
        self.table = table
        self.where = where
        self.env = env
        self.problems = problems
        self.prefix = f"{prefix}." if prefix else ""
        self.expand = expand
        self.labels = labels or {}
        # Keys whose ${VAR} could not be expanded: already reported, never reported again as
        # "is required" / "is empty" (one problem, said once).
        self._unexpanded: set[str] = set()

    def child(self, key: str) -> _Reader:
        return _Reader(
            self.table_at(key),
            self.where,
            self.env,
            self.problems,
            self.prefix + key,
            expand=self.expand,
            labels=self.labels,
        )

    def problem(self, key: str, message: str) -> None:
        path = f"{self.prefix}{key}"
        variable = self.labels.get(path.split("[", 1)[0])
        name = f"{variable} ({path})" if variable else path
        self.problems.append(f"{self.where}: {name}: {message}")

    def _expand(self, key: str, value: Any) -> Any:
        if not self.expand or not isinstance(value, str):
            return value

        def sub(m: re.Match[str]) -> str:
            name = m.group(1)
            if name not in self.env:
                if key not in self._unexpanded:
                    self.problem(key, f"environment variable {name} is not set")
                self._unexpanded.add(key)
                return ""
            return self.env[name]

        return VAR_RE.sub(sub, value)

    def text(self, key: str, *, required: bool = False, default: str | None = None) -> str | None:
        if key not in self.table or self.table[key] in (None, ""):
            if required:
                self.problem(key, "is required")
            return default
        value = self._expand(key, self.table[key])
        if not isinstance(value, str):
            self.problem(key, f"must be a string, not {type(value).__name__}")
            return default
        if value == "" and required and key not in self._unexpanded:
            self.problem(key, "is empty")
            return default
        return value or default

    def secret(self, key: str, *, required: bool = False) -> Secret | None:
        value = self.text(key, required=required)
        if value and (why := secret_problem(value)) is not None:
            self.problem(key, why)
            return None
        return Secret(value) if value else None

    def secret_list(self, key: str) -> tuple[Secret, ...]:
        values = self.str_list(key) or ()
        out: list[Secret] = []
        for index, value in enumerate(values):
            if not value:
                continue
            why = secret_problem(value)
            if why is not None:
                self.problem(f"{key}[{index}]", why)
                continue
            out.append(Secret(value))
        return tuple(out)

    def flag(self, key: str, default: bool = False) -> bool:
        value = self._expand(key, self.table.get(key, default))
        if isinstance(value, str) and value.lower() in ("true", "1", "yes", "false", "0", "no", ""):
            return value.lower() in ("true", "1", "yes")
        if not isinstance(value, bool):
            self.problem(key, "must be true or false")
            return default
        return value

    def integer(self, key: str, default: int | None = None, *, minimum: int = 0) -> int | None:
        value = self._expand(key, self.table.get(key, default))
        if value is None or value == "":
            return default
        try:
            number = int(value)
        except (TypeError, ValueError):
            self.problem(key, f"must be an integer, not {value!r}")
            return default
        if isinstance(value, bool) or number < minimum:
            self.problem(key, f"must be an integer >= {minimum}")
            return default
        return number

    def str_list(self, key: str) -> tuple[str, ...] | None:
        if key not in self.table:
            return None
        value = self.table[key]
        if isinstance(value, str):
            value = [v.strip() for v in self._expand(key, value).split(",") if v.strip()]
        elif isinstance(value, list) and all(isinstance(v, str) for v in value):
            value = [self._expand(key, v) for v in value]
        if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
            self.problem(key, "must be a list of strings")
            return None
        return tuple(value)

    def table_at(self, key: str) -> Mapping[str, Any]:
        value = self.table.get(key, {})
        if not isinstance(value, Mapping):
            self.problem(key, "must be a table")
            return {}
        return value

    def unknown_keys(self, known: set[str]) -> None:
        for key in self.table:
            if key not in known:
                self.problem(key, "unknown key")


SubscriptionValidator = Callable[[Mapping[str, Any]], list[str]]


def _default_subscription_validator() -> SubscriptionValidator:
    # The mapping language lives with the (pure) mapping code in workers/; importing it here
    # lets both processes reject a bad subscription at start-up.
    from workers.mapping.destination.subscriptions import validate_subscription

    return validate_subscription


def _voucherify(r: _Reader) -> VoucherifySettings | None:
    r.unknown_keys(
        {
            "app_id",
            "secret_key",
            "region",
            "api_url",
            "mode",
            "webhook_secret",
            "rate_limit_per_minute",
            "max_event_age_hours",
        }
    )
    # Every key is read (and its problems recorded) before anything can stop this section: a
    # bad region must not hide a missing ${VAR} further down.
    app_id = r.secret("app_id", required=True)
    secret_key = r.secret("secret_key", required=True)
    region = r.text("region")
    api_url = r.text("api_url")
    mode = r.text("mode", default="rest") or "rest"
    webhook_secret = r.secret("webhook_secret")
    rate = r.integer("rate_limit_per_minute", None, minimum=1)
    age_hours = r.integer("max_event_age_hours", 48, minimum=1) or 48
    if mode not in MODES:
        r.problem("mode", f"must be one of {', '.join(MODES)}, not {mode!r}")
        mode = "rest"
    if api_url and not re.match(r"^https?://", api_url):
        r.problem("api_url", "must start with http:// or https://")
    if not region and not api_url:
        r.problem(
            "region", f"is required (one of {', '.join(regions.VOUCHERIFY_REGIONS)}) unless api_url is set"
        )
        return None
    try:
        base_url = regions.voucherify_base_url(region, mode, api_url)
        queue = regions.voucherify_queue(region, api_url)
    except regions.UnknownRegion as exc:
        r.problem("region", str(exc))
        return None
    if app_id is None or secret_key is None:
        return None
    return VoucherifySettings(
        app_id=app_id,
        secret_key=secret_key,
        region=region,
        api_url=api_url,
        mode=mode,
        base_url=base_url,
        queue=queue,
        webhook_secret=webhook_secret,
        rate_limit_per_minute=rate,
        max_event_age_seconds=age_hours * 3600,
    )


def _segment(r: _Reader) -> SegmentSettings | None:
    r.unknown_keys({"write_key", "region", "api_url", "events", "requests_per_second"})
    if not r.table:
        return None
    write_key = r.secret("write_key", required=True)
    region = r.text("region", default=None)
    api_url = r.text("api_url")
    rps = r.integer("requests_per_second", 1000, minimum=1) or 1000
    extra_events = r.str_list("events")
    if not region and not api_url:
        region = "us"  # Voucherify's own integration defaults to US (Oregon).
    try:
        base_url = regions.segment_base_url(region, api_url)
        queue = regions.segment_queue(region, api_url)
    except regions.UnknownRegion as exc:
        r.problem("region", str(exc))
        return None
    if write_key is None:
        return None
    return SegmentSettings(
        write_key=write_key,
        region=region,
        api_url=api_url,
        base_url=base_url,
        queue=queue,
        extra_events=extra_events,
        requests_per_second=rps,
    )


def _destination(r: _Reader, validator: SubscriptionValidator | None) -> DestinationSettings:
    r.unknown_keys(
        {
            "identify_disabled",
            "track_disabled",
            "page_disabled",
            "screen_disabled",
            "group_disabled",
            "ignore_anonymous",
            "anonymous_fallback",
            "skip_voucherify_origin",
            "track_events_filter",
            "group_metadata_prefix",
            "mapping",
            "defaults",
            "identify_mapping",
            "track_mapping",
            "metadata_schema",
        }
    )
    raw_mappings = r.table.get("mapping", [])
    mappings: list[Mapping[str, Any]] = []
    if not isinstance(raw_mappings, list) or not all(isinstance(m, Mapping) for m in raw_mappings):
        r.problem("mapping", "must be an array of tables ([[connection.destination.mapping]])")
    else:
        if len(raw_mappings) > MAX_SUBSCRIPTIONS:
            r.problem("mapping", f"at most {MAX_SUBSCRIPTIONS} subscriptions, got {len(raw_mappings)}")
        for index, raw in enumerate(raw_mappings):
            errors = validator(raw) if validator else []
            name = raw.get("name")
            label = (
                f"mapping[{index}] ({name!r})"
                if isinstance(name, str) and name.strip()
                else f"mapping[{index}]"
            )
            for error in errors:
                r.problem(label, error)
            mappings.append(raw)
    # The classic tables' vocabulary lives with the (pure) mapping code, as the trigger language.
    from workers.mapping.destination.classic import DEFAULTS_CHOICES, flatten_table, validate_table

    defaults = r.text("defaults", default="actions") or "actions"
    if defaults not in DEFAULTS_CHOICES:
        r.problem("defaults", f"must be one of {', '.join(DEFAULTS_CHOICES)}, not {defaults!r}")
    tables: dict[str, tuple[tuple[str, str], ...]] = {}
    for key in ("identify_mapping", "track_mapping"):
        raw_table = r.table.get(key, {})
        errors = validate_table(raw_table, track=key == "track_mapping")
        for error in errors:
            r.problem(key, error)
        tables[key] = () if errors else tuple(flatten_table(raw_table).items())
    metadata_schema = r.text("metadata_schema", default="all") or "all"
    if metadata_schema not in ("all", "defined"):
        r.problem("metadata_schema", f'must be "all" or "defined", not {metadata_schema!r}')
    return DestinationSettings(
        defaults=defaults,
        identify_mapping=tables["identify_mapping"],
        track_mapping=tables["track_mapping"],
        metadata_schema=metadata_schema,
        identify_disabled=r.flag("identify_disabled"),
        track_disabled=r.flag("track_disabled"),
        page_disabled=r.flag("page_disabled"),
        screen_disabled=r.flag("screen_disabled"),
        group_disabled=r.flag("group_disabled"),
        ignore_anonymous=r.flag("ignore_anonymous"),
        anonymous_fallback=r.flag("anonymous_fallback", True),
        skip_voucherify_origin=r.flag("skip_voucherify_origin", True),
        track_events_filter=r.str_list("track_events_filter") or (),
        group_metadata_prefix=r.text("group_metadata_prefix", default="segment_group_") or "segment_group_",
        mappings=tuple(mappings),
    )


def _connection(
    raw: Mapping[str, Any],
    index: int,
    env: Mapping[str, str],
    problems: list[str],
    validator: SubscriptionValidator | None,
    *,
    expand: bool = True,
    labels: Mapping[str, str] | None = None,
) -> Connection | None:
    cid_raw = raw.get("id")
    cid = cid_raw if isinstance(cid_raw, str) else f"#{index}"
    where = f"connection {cid!r}"
    r = _Reader(raw, where, env, problems, expand=expand, labels=labels)
    r.unknown_keys(
        {
            "id",
            "write_keys",
            "segment_webhook_secret",
            "segment_webhook_unsigned",
            "voucherify",
            "segment",
            "destination",
            "retry_window_hours",
            "backlog_limit",
            "backlog_bytes_limit",
        }
    )
    if not isinstance(cid_raw, str) or not CONNECTION_ID_RE.match(cid_raw):
        r.problem("id", "is required and must match [a-z0-9-]+")
    write_keys = r.secret_list("write_keys")
    if "voucherify" not in raw:
        r.problem("voucherify", "section [connection.voucherify] is required")
    vf = _voucherify(r.child("voucherify"))
    seg = _segment(r.child("segment"))
    dest = _destination(r.child("destination"), validator)
    window = r.integer("retry_window_hours", 4, minimum=1) or 4
    backlog = r.integer("backlog_limit", 100_000, minimum=1) or 100_000
    backlog_bytes = (
        r.integer("backlog_bytes_limit", DEFAULT_BACKLOG_BYTES, minimum=MIN_BACKLOG_BYTES)
        or DEFAULT_BACKLOG_BYTES
    )
    webhook_secret = r.secret("segment_webhook_secret")
    unsigned = r.flag("segment_webhook_unsigned")
    if unsigned and webhook_secret is not None:
        r.problem(
            "segment_webhook_unsigned",
            "is true but segment_webhook_secret is set: keep one (signed, or explicitly unsigned)",
        )
    if vf is None:
        return None
    return Connection(
        id=cid,
        write_keys=write_keys,
        voucherify=vf,
        segment=seg,
        destination=dest,
        segment_webhook_secret=webhook_secret,
        segment_webhook_unsigned=unsigned,
        retry_window_seconds=window * 3600,
        backlog_limit=backlog,
        backlog_bytes_limit=backlog_bytes,
    )


# Where each key of the shorthand's connection comes from, so that a problem names the variable.
_SHORTHAND_LABELS = {
    "write_keys": "INGEST_WRITE_KEYS",
    "segment_webhook_secret": "SEGMENT_WEBHOOK_SECRET",
    "segment_webhook_unsigned": "SEGMENT_WEBHOOK_UNSIGNED",
    "voucherify.app_id": "VOUCHERIFY_APP_ID",
    "voucherify.secret_key": "VOUCHERIFY_SECRET_KEY",
    "voucherify.region": "VOUCHERIFY_REGION",
    "voucherify.api_url": "VOUCHERIFY_API_URL",
    "voucherify.mode": "VOUCHERIFY_MODE",
    "voucherify.webhook_secret": "VOUCHERIFY_WEBHOOK_SECRET",
    "voucherify.rate_limit_per_minute": "VOUCHERIFY_RATE_LIMIT_PER_MINUTE",
    "segment.write_key": "SEGMENT_WRITE_KEY",
    "segment.region": "SEGMENT_REGION",
    "segment.api_url": "SEGMENT_API_URL",
}


def _from_env_shorthand(env: Mapping[str, str]) -> dict[str, Any] | None:
    """The single-connection shorthand of SPEC 1, as the same table a TOML file would give."""
    if not env.get("INGEST_WRITE_KEYS") and not env.get("VOUCHERIFY_APP_ID"):
        return None
    vf: dict[str, Any] = {
        "app_id": env.get("VOUCHERIFY_APP_ID", ""),
        "secret_key": env.get("VOUCHERIFY_SECRET_KEY", ""),
        "mode": env.get("VOUCHERIFY_MODE", "rest"),
    }
    for key, var in (
        ("region", "VOUCHERIFY_REGION"),
        ("api_url", "VOUCHERIFY_API_URL"),
        ("webhook_secret", "VOUCHERIFY_WEBHOOK_SECRET"),
        ("rate_limit_per_minute", "VOUCHERIFY_RATE_LIMIT_PER_MINUTE"),
    ):
        if env.get(var):
            vf[key] = env[var]
    if "region" not in vf and "api_url" not in vf:
        vf["region"] = "eu"  # Voucherify's default API host (api.voucherify.io) is the EU cluster.
    conn: dict[str, Any] = {
        "id": "default",
        "write_keys": [k.strip() for k in env.get("INGEST_WRITE_KEYS", "").split(",") if k.strip()],
        "voucherify": vf,
    }
    if env.get("SEGMENT_WEBHOOK_SECRET"):
        conn["segment_webhook_secret"] = env["SEGMENT_WEBHOOK_SECRET"]
    if env.get("SEGMENT_WEBHOOK_UNSIGNED"):
        conn["segment_webhook_unsigned"] = env["SEGMENT_WEBHOOK_UNSIGNED"]
    if env.get("SEGMENT_WRITE_KEY"):
        seg: dict[str, Any] = {"write_key": env["SEGMENT_WRITE_KEY"]}
        if env.get("SEGMENT_REGION"):
            seg["region"] = env["SEGMENT_REGION"]
        if env.get("SEGMENT_API_URL"):
            seg["api_url"] = env["SEGMENT_API_URL"]
        conn["segment"] = seg
    return {"connection": [conn]}


def load_settings(
    env: Mapping[str, str] | None = None,
    *,
    validator: SubscriptionValidator | None = None,
    require_connections: bool = True,
) -> Settings:
    """Read the whole configuration; raise :class:`ConfigError` listing every problem."""
    env = os.environ if env is None else env
    problems: list[str] = []
    validator = validator or _default_subscription_validator()
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
        document = _from_env_shorthand(env)

    connections: list[Connection] = []
    raw_connections = (document or {}).get("connection", [])
    if not isinstance(raw_connections, list):
        problems.append("connection: must be an array of tables ([[connection]])")
        raw_connections = []
    for index, raw in enumerate(raw_connections):
        if not isinstance(raw, Mapping):
            problems.append(f"connection #{index}: must be a table")
            continue
        conn = _connection(
            raw,
            index,
            env,
            problems,
            validator,
            expand=bool(path),  # ${VAR} belongs to connections.toml, never to the shorthand
            labels=None if path else _SHORTHAND_LABELS,
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

    redis_url = env.get("REDIS_URL") or DEFAULT_REDIS_URL
    if not re.match(r"^(redis|rediss|unix)://", redis_url):
        problems.append("REDIS_URL: must be a redis://, rediss:// or unix:// URL")
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
    status_page = (env.get("STATUS_PAGE") or "on").strip().lower()
    if status_page not in ("on", "off", "1", "0", "true", "false", "yes", "no"):
        problems.append(f"STATUS_PAGE: must be on or off, not {status_page!r}")
    if problems:
        raise ConfigError(problems)
    return Settings(
        redis_url=redis_url,
        connections=tuple(connections),
        port=port,
        redis_tls_verify=tls_verify,
        status_page=status_page not in ("off", "0", "false", "no"),
        status_token=status_token,
        metrics_token=metrics_token,
        sandbox=bool(env.get(SANDBOX_ENV)),
        _by_key=by_key,
        _by_id=by_id,
    )


def redis_tls_verify(env: Mapping[str, str] | None = None, problems: list[str] | None = None) -> str:
    """``REDIS_TLS_VERIFY`` (``required`` | ``none``), for the processes and commands that read
    only the Redis settings.  An unknown value is a problem (listed, or raised as ConfigError)."""
    env = os.environ if env is None else env
    value = (env.get("REDIS_TLS_VERIFY") or "required").strip().lower()
    if value in TLS_VERIFY_MODES:
        return value
    problem = f"REDIS_TLS_VERIFY: must be one of {', '.join(TLS_VERIFY_MODES)}, not {value!r}"
    if problems is None:
        raise ConfigError([problem])
    problems.append(problem)
    return "required"


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


def redact_url(url: str) -> str:
    """redis://:password@host -> redis://:****@host, for log lines."""
    return re.sub(r"(//[^:/@]*:)[^@]*@", r"\1****@", url)
