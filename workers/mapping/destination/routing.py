"""Routing: a connection's subscriptions compiled once, and an event mapped through them.

For each mapped call type the connection has either its default subscription (the Actions
preset, or the classic defaults and tables of :mod:`.classic` for identify and track) or the
custom subscriptions whose trigger can match that type (:mod:`.triggers`).  The classic settings
(``*_disabled``, ``track_events_filter``, ``ignore_anonymous``) and loop prevention are checked
first and skip the event with a reason; before them, Segment's own gates (:mod:`.gates`: the
``integrations`` object and consent), which decide whether the destination sees the event at all.
"""

from __future__ import annotations

import re
import threading
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from connector.errors import ConfigError, MappingError, SkipEvent
from workers.mapping.destination.actions import CLASSIC_EXTRAS, MAPPED_TYPES, UPSERT, default_mappings
from workers.mapping.destination.classic import (
    carries_attributes,
    identify_mappings,
    targeted_fields,
    track_plan,
)
from workers.mapping.destination.fields import CompiledFields
from workers.mapping.destination.gates import CONSENT, INTEGRATIONS, consent_verdict, integrations_verdict
from workers.mapping.destination.mapping import (
    MISSING,
    Resolver,
    js_string,
    parse_path,
    path_getter,
)
from workers.mapping.destination.requests import RequestBuilder
from workers.mapping.destination.subscriptions import Subscription, parse_subscription, preset_subscriptions
from workers.mapping.destination.triggers import Predicate
from workers.outbound import OutboundRequest

if TYPE_CHECKING:
    from connector.config import Connection


@dataclass(frozen=True)
class MappingResult:
    requests: list[OutboundRequest]
    # Matching subscriptions whose mapping failed, with the error (the others still deliver).
    failures: list[tuple[str, MappingError]]
    # Names of the subscriptions (of the event's call type) whose trigger matched, and of those
    # whose trigger did not: what ``connector trace`` shows of the mapping.
    matched: tuple[str, ...] = ()
    not_matched: tuple[str, ...] = ()


class Route:
    """One subscription, compiled for one connection."""

    __slots__ = ("attributes", "builder", "extras", "fields", "matches", "name", "upsert_builder")

    def __init__(
        self,
        name: str,
        matches: Predicate | None,
        fields: CompiledFields,
        builder: RequestBuilder,
        extras: tuple[tuple[str, Resolver], ...],
        attributes: tuple[CompiledFields, RequestBuilder | None] | None = None,
    ) -> None:
        self.name = name
        self.matches = matches
        self.fields = fields
        self.builder = builder
        self.extras = extras
        # Customer attributes a track call carries (classic tables): their fields, and in
        # segmentio mode the builder of the customer-processing call that sends them.
        self.attributes = attributes[0] if attributes else None
        self.upsert_builder = attributes[1] if attributes else None

    def apply(self, event: Mapping[str, Any]) -> list[OutboundRequest]:
        payload = self.fields.apply(event)
        extras: dict[str, Any] = {}
        for extra_name, get in self.extras:
            value = get(event)
            if value is not MISSING:
                extras[extra_name] = value
        if self.attributes is None:
            return [self.builder.build(payload, event, extras)]
        attributes = self.attributes.apply(event)
        if not carries_attributes(attributes):
            return [self.builder.build(payload, event, extras)]
        if self.upsert_builder is None:  # rest: the custom event carries them in its customer
            return [self.builder.build(payload, event, extras, attributes=attributes)]
        # segmentio: the customer first, then the event (one customer's requests keep their order).
        return [self.upsert_builder.build(attributes, event, {}), self.builder.build(payload, event, extras)]


def _slug(text: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-")[:60]


class CompiledDestination:
    """A connection's destination settings, ready for :meth:`map`."""

    def __init__(self, connection: Connection) -> None:
        dest = connection.destination
        mode = connection.voucherify.mode
        anonymous_fallback = dest.anonymous_fallback
        classic = dest.defaults == "classic"
        problems: list[str] = []
        customs: list[Subscription] = []
        for index, raw in enumerate(dest.mappings):
            try:
                customs.append(parse_subscription(raw, index))
            except ConfigError as exc:
                problems.extend(exc.problems)
        if problems:
            raise ConfigError(f"connection {connection.id!r}: " + " | ".join(problems))
        # Idempotency-key suffixes: the name's slug when unique (readable in dead letters and stable
        # when subscriptions are reordered), else the position.
        slugs = [_slug(s.name) if s.name else "" for s in customs]

        def builder(sub: Subscription, suffix: str, action: Any = None) -> RequestBuilder:
            return RequestBuilder(
                action or sub.action,
                mode=mode,
                connection_id=connection.id,
                key_suffix=suffix,
                group_prefix=dest.group_metadata_prefix,
            )

        def route(sub: Subscription, event_type: str | None = None) -> Route:
            overrides = sub.fields
            attributes: tuple[CompiledFields, RequestBuilder | None] | None = None
            if event_type == "identify":
                mappings = identify_mappings(
                    classic, dest.identify_mapping, anonymous_fallback=anonymous_fallback
                )
                # Classic spellings back only the fields the defaults and tables leave to the preset.
                overrides = {f: True for f in targeted_fields(classic, dest.identify_mapping)}
            elif event_type == "track":
                plan = track_plan(
                    classic, dest.track_mapping, sub.action, anonymous_fallback=anonymous_fallback
                )
                mappings = plan.event_fields
                if plan.attributes is not None:
                    upsert = builder(sub, ":customer", UPSERT) if mode == "segmentio" else None
                    attributes = (CompiledFields(UPSERT.fields, plan.attributes), upsert)
            else:
                mappings = default_mappings(sub.action, anonymous_fallback=anonymous_fallback)
                mappings.update(overrides)
            fields = CompiledFields(sub.action.fields, mappings)
            suffix = ""
            if sub.index is not None:
                slug = slugs[sub.index]
                unique = slug and slugs.count(slug) == 1
                suffix = f":{slug}" if unique else f":m{sub.index}"
            extras: list[tuple[str, Resolver]] = []
            if mode == "rest":
                for field_name, paths in CLASSIC_EXTRAS.get(sub.action.key, {}).items():
                    if field_name not in overrides:  # classic spellings only back default mappings
                        extras.extend((n, path_getter(parse_path(p))) for n, p in paths.items())
            matches = sub.trigger.predicate() if sub.trigger is not None else None
            return Route(sub.label, matches, fields, builder(sub, suffix), tuple(extras), attributes)

        compiled_customs = [(sub, route(sub)) for sub in customs]
        routes: dict[str, tuple[Route, ...]] = {}
        for preset in preset_subscriptions():
            event_type = preset.types[0]
            covering = tuple(r for sub, r in compiled_customs if event_type in sub.types)
            routes[event_type] = covering or (route(preset, event_type),)
        self.routes = routes
        self.disabled = frozenset(t for t in MAPPED_TYPES if getattr(dest, f"{t}_disabled", False))
        self.ignore_anonymous = dest.ignore_anonymous
        self.skip_voucherify_origin = dest.skip_voucherify_origin
        self.track_filter = frozenset(dest.track_events_filter) if dest.track_events_filter else None
        self.integration_names = dest.integration_names
        self.consent_categories = dest.consent_categories

    def gate(self, event: Mapping[str, Any]) -> None:
        """Segment's gates, first: in Segment a destination the event's ``integrations`` or
        consent keeps out never receives it, whatever its type (an alias too)."""
        why = integrations_verdict(event, self.integration_names)
        if why is not None:
            raise SkipEvent(INTEGRATIONS, why)
        why = consent_verdict(event, self.consent_categories)
        if why is not None:
            raise SkipEvent(CONSENT, why)

    def map_detailed(self, event: Mapping[str, Any]) -> MappingResult:
        self.gate(event)
        event_type = event.get("type")
        routes = self.routes.get(event_type) if isinstance(event_type, str) else None
        if routes is None:
            if event_type == "alias":
                raise SkipEvent("alias_no_effect", "alias calls have no Voucherify effect")
            raise SkipEvent("unsupported_type", f"events of type {event_type!r} are not mapped")
        if event_type in self.disabled:
            raise SkipEvent(f"{event_type}_disabled", f"{event_type} calls are disabled for this connection")
        if self.skip_voucherify_origin and _from_voucherify(event):
            raise SkipEvent("voucherify_origin", "the event came from Voucherify; sending it back would loop")
        if self.ignore_anonymous:
            user_id = event.get("userId")
            if user_id is None or user_id == "":
                raise SkipEvent("anonymous_ignored", "the event has no userId and ignore_anonymous is set")
        if (
            self.track_filter is not None
            and event_type == "track"
            and _track_name(event) not in self.track_filter
        ):
            raise SkipEvent("track_filtered", "the event name is not in track_events_filter")
        requests: list[OutboundRequest] = []
        failures: list[tuple[str, MappingError]] = []
        matched: list[str] = []
        not_matched: list[str] = []
        for r in routes:
            if r.matches is not None and not r.matches(event):
                not_matched.append(r.name)
                continue
            matched.append(r.name)
            try:
                requests.extend(r.apply(event))
            except MappingError as exc:
                failures.append((r.name, exc))
        if not requests and not failures:
            raise SkipEvent("no_subscription", "no subscription matches the event")
        return MappingResult(requests, failures, tuple(matched), tuple(not_matched))

    def map(self, event: Mapping[str, Any]) -> list[OutboundRequest]:
        result = self.map_detailed(event)
        if result.requests or not result.failures:
            return result.requests
        if len(result.failures) == 1:
            raise result.failures[0][1]
        raise MappingError(" ".join(f"[{name}] {exc.message}" for name, exc in result.failures))


def _track_name(event: Mapping[str, Any]) -> str | None:
    """The name a track call is known by: ``event`` (a number as its text), else ``name``."""
    for key in ("event", "name"):
        value = event.get(key)
        if value is not None and not isinstance(value, Mapping | list):
            return value if isinstance(value, str) else js_string(value)
    return None


def _from_voucherify(event: Mapping[str, Any]) -> bool:
    """True for events the Voucherify -> Segment direction produced (it marks them so)."""
    context = event.get("context")
    if not isinstance(context, Mapping):
        return False
    integration = context.get("integration")
    return isinstance(integration, Mapping) and integration.get("name") == "voucherify"


_CACHE: dict[str, tuple[Connection, CompiledDestination]] = {}
_CACHE_LOCK = threading.Lock()


def _same_settings(a: Connection, b: Connection) -> bool:
    return a.destination == b.destination and a.voucherify.mode == b.voucherify.mode


def compiled_for(connection: Connection) -> CompiledDestination:
    """The compiled destination of ``connection``: compiled once per connection id and settings."""
    entry = _CACHE.get(connection.id)
    if entry is not None and entry[0] is connection:
        return entry[1]
    with _CACHE_LOCK:
        entry = _CACHE.get(connection.id)
        if entry is not None and (entry[0] is connection or _same_settings(entry[0], connection)):
            compiled = entry[1]
        else:
            compiled = CompiledDestination(connection)
        _CACHE[connection.id] = (connection, compiled)
        return compiled


__all__: Sequence[str] = [
    "CompiledDestination",
    "MappingResult",
    "compiled_for",
]
