"""The connections of the settings: ``connections.toml`` (or the environment shorthand) read
into typed, validated :class:`Connection` values (SPEC 1).

Every problem is recorded with the connection and the key it is about; :mod:`connector.config`
raises them all at once.  Secrets are wrapped in :class:`~connector.secrets.Secret` the moment
they are read.  The mapping language (subscriptions' triggers and fields, the classic tables)
belongs to the workers' mapping code: its checks are *passed in* (:class:`MappingChecks`) by
whoever loads the settings, so that this base package imports nothing above it.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from connector import regions
from connector.errors import UnknownRegion
from connector.quotas import QUOTA_KEYS, QuotaSettings, read_quota
from connector.reader import Reader
from connector.secrets import Secret

CONNECTION_ID_RE = re.compile(r"^[a-z0-9][a-z0-9-]{0,62}$")
MODES = ("rest", "segmentio")
MAX_SUBSCRIPTIONS = 50
DEFAULT_BACKLOG_BYTES = 128 * 1024 * 1024
MIN_BACKLOG_BYTES = 1024 * 1024  # below one full request (500 KB) plus room, nothing could pass
# Dead letters are data (never expired, never dropped): bounded per connection, the ingest pushes
# back (429 dead_letters_full) while they are over it, until an operator replays or purges them.
DEFAULT_DEAD_LETTER_BYTES = 256 * 1024 * 1024
MIN_DEAD_LETTER_BYTES = 1024 * 1024
# [connection.destination] defaults: the Actions presets, or the classic destination's tables.
DEFAULTS_CHOICES = ("actions", "classic")
# The names Segment's catalog gives Voucherify in an event's `integrations` object: the classic
# destination's and the Actions one's.  `integration_names` in [connection.destination] replaces them.
DEFAULT_INTEGRATION_NAMES = ("Voucherify", "Voucherify (Actions)")


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
    # The project's limits and the connector's share of them (SPEC 10).
    quota: QuotaSettings = field(default_factory=lambda: QuotaSettings(assumed=True))
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
    # The names this connection answers to in an event's `integrations` object (case-sensitive,
    # as Segment compares them): {"All": false} skips it unless one of them is true, and one of
    # them set to false skips it (workers.mapping.destination.gates).
    integration_names: tuple[str, ...] = DEFAULT_INTEGRATION_NAMES
    # Segment consent categories the event must consent to (when it carries preferences).
    consent_categories: tuple[str, ...] = ()


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
    dead_letter_bytes_limit: int = DEFAULT_DEAD_LETTER_BYTES

    @property
    def queues(self) -> list[str]:
        """The broker queues this connection's work travels on."""
        return [self.voucherify.queue, *([self.segment.queue] if self.segment is not None else [])]


@dataclass(frozen=True)
class MappingChecks:
    """The mapping language's own start-up checks of ``[connection.destination]``, passed in by
    the process that loads the settings (:mod:`workers.settings`).  Without them only the shape
    is checked, and a bad subscription fails later, when the workers compile it."""

    # One [[connection.destination.mapping]] table -> its problems.
    subscription: Callable[[Mapping[str, Any]], list[str]]
    # An identify_mapping / track_mapping table (and whether it is track's) -> its problems.
    table: Callable[[Any, bool], list[str]]


def flatten_table(value: Any, prefix: str = "") -> dict[str, Any]:
    """A TOML table of ``"src.path" = "dest.path"``; unquoted dotted keys nest, so nested tables
    are joined back with dots."""
    out: dict[str, Any] = {}
    if isinstance(value, Mapping):
        for key, item in value.items():
            name = f"{prefix}.{key}" if prefix else str(key)
            if isinstance(item, Mapping):
                out.update(flatten_table(item, name))
            else:
                out[name] = item
    return out


def _voucherify(r: Reader) -> VoucherifySettings | None:
    r.unknown_keys(
        {
            "app_id",
            "secret_key",
            "region",
            "api_url",
            "mode",
            "webhook_secret",
            "max_event_age_hours",
            *QUOTA_KEYS,
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
    quota = read_quota(r, rate)
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
    except UnknownRegion as exc:
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
        quota=quota,
        max_event_age_seconds=age_hours * 3600,
    )


def _segment(r: Reader) -> SegmentSettings | None:
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
    except UnknownRegion as exc:
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


def _destination(r: Reader, checks: MappingChecks | None) -> DestinationSettings:
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
            "integration_names",
            "consent_categories",
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
            errors = checks.subscription(raw) if checks else []
            name = raw.get("name")
            label = (
                f"mapping[{index}] ({name!r})"
                if isinstance(name, str) and name.strip()
                else f"mapping[{index}]"
            )
            for error in errors:
                r.problem(label, error)
            mappings.append(raw)
    defaults = r.text("defaults", default="actions") or "actions"
    if defaults not in DEFAULTS_CHOICES:
        r.problem("defaults", f"must be one of {', '.join(DEFAULTS_CHOICES)}, not {defaults!r}")
    tables: dict[str, tuple[tuple[str, str], ...]] = {}
    for key in ("identify_mapping", "track_mapping"):
        raw_table = r.table.get(key, {})
        errors = _table_problems(raw_table, key == "track_mapping", checks)
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
        integration_names=_names(r, "integration_names", DEFAULT_INTEGRATION_NAMES),
        consent_categories=_names(r, "consent_categories", ()),
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


def _names(r: Reader, key: str, default: tuple[str, ...]) -> tuple[str, ...]:
    """``integration_names`` / ``consent_categories``: a list of names, compared exactly as
    Segment does (case-sensitive), so a name that is blank or padded with spaces, a repeated
    one, or the ``All`` switch used as a name is a typo that would never match: refused."""
    raw = r.table.get(key)
    if isinstance(raw, str):  # "a, b" would split names that contain commas: a list only
        r.problem(
            key, f'must be a list of strings, e.g. {key} = ["{default[0] if default else "Analytics"}"]'
        )
        return default
    names = r.str_list(key)
    if names is None:
        return default
    problems_before = len(r.problems)
    for name in names:
        if not name.strip():
            r.problem(key, "a name is empty")
        elif name != name.strip():
            r.problem(key, f"{name!r} begins or ends with spaces (names are compared exactly)")
        elif key == "integration_names" and name == "All":
            r.problem(key, '"All" is the switch of every destination, not a destination\'s name')
    repeated = sorted({n for n in names if names.count(n) > 1})
    if repeated:
        r.problem(key, f"{', '.join(map(repr, repeated))} is listed more than once")
    if key == "integration_names" and not names:
        r.problem(key, "must name at least one destination name (default: Voucherify, Voucherify (Actions))")
    return default if len(r.problems) > problems_before else names


def _table_problems(raw: Any, track: bool, checks: MappingChecks | None) -> list[str]:
    if checks is not None:
        return checks.table(raw, track)
    return [] if isinstance(raw, Mapping) else ['must be a table of "src.path" = "dest.path"']


def read_connection(
    raw: Mapping[str, Any],
    index: int,
    env: Mapping[str, str],
    problems: list[str],
    checks: MappingChecks | None,
    *,
    expand: bool = True,
    labels: Mapping[str, str] | None = None,
) -> Connection | None:
    cid_raw = raw.get("id")
    cid = cid_raw if isinstance(cid_raw, str) else f"#{index}"
    where = f"connection {cid!r}"
    r = Reader(raw, where, env, problems, expand=expand, labels=labels)
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
            "dead_letter_bytes_limit",
        }
    )
    if not isinstance(cid_raw, str) or not CONNECTION_ID_RE.match(cid_raw):
        r.problem("id", "is required and must match [a-z0-9-]+")
    write_keys = r.secret_list("write_keys")
    if "voucherify" not in raw:
        r.problem("voucherify", "section [connection.voucherify] is required")
    vf = _voucherify(r.child("voucherify"))
    seg = _segment(r.child("segment"))
    dest = _destination(r.child("destination"), checks)
    window = r.integer("retry_window_hours", 4, minimum=1) or 4
    backlog = r.integer("backlog_limit", 100_000, minimum=1) or 100_000
    backlog_bytes = (
        r.integer("backlog_bytes_limit", DEFAULT_BACKLOG_BYTES, minimum=MIN_BACKLOG_BYTES)
        or DEFAULT_BACKLOG_BYTES
    )
    dead_bytes = (
        r.integer("dead_letter_bytes_limit", DEFAULT_DEAD_LETTER_BYTES, minimum=MIN_DEAD_LETTER_BYTES)
        or DEFAULT_DEAD_LETTER_BYTES
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
        dead_letter_bytes_limit=dead_bytes,
    )


def with_quota_period_scale(connection: Connection, scale: float) -> Connection:
    """``connection`` with its quota periods shortened by ``scale`` (a test clock)."""
    vf = connection.voucherify
    quota = dataclasses.replace(vf.quota, period_scale=scale)
    return dataclasses.replace(connection, voucherify=dataclasses.replace(vf, quota=quota))
