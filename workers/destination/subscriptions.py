"""Subscriptions: which action runs for which event, with which field mapping (SPEC 3.1, 3.4).

A connection has the default subscriptions (the reference's presets) plus up to 50 custom ones::

    [[connection.destination.mapping]]
    name = "Orders"                                   # optional; shows in idempotency keys
    trigger = 'type = "track" and event = "Order Completed"'
    action = "add_custom_event"   # upsert_customer | add_custom_event | assign_customer_to_group
    [connection.destination.mapping.fields]           # optional; other fields keep the defaults
    event = "order_completed"
    metadata = { "@path" = "$.properties" }

Trigger language (a subset of Segment's subscription syntax)::

    expr       := and_expr ("or" and_expr)*
    and_expr   := term ("and" term)*
    term       := "(" expr ")" | field "exists" | field ("=" | "!=" | "contains") literal
    field      := type | event | name | userId | anonymousId | groupId
                | (properties | traits | context) ("." segment)*    segment: name or "quoted"
    literal    := "string" | 'string' | number | true | false | null

``=`` is JSON equality (``1`` is not ``"1"``, ``true`` is not ``1``); ``!=`` is its negation, so
it holds when the field is missing; ``contains`` is a substring test on strings and a membership
test on arrays; ``exists`` means present and not null (as ``@if exists``).

A custom subscription *covers* the event types its trigger can match; for those types it replaces
the default subscription.  Coverage is decided once, by evaluating the trigger for each type with
everything but the type unknown, knowing that only ``track`` calls carry ``event`` and only
``page``/``screen`` calls carry ``name``.  So ``event = "Order Completed"`` covers ``track`` only,
while a trigger that says nothing about the type (``userId exists``) covers every type.
"""

from __future__ import annotations

import re
import threading
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Final

from workers.destination.actions import (
    ACTION_ALIASES,
    ACTIONS,
    CLASSIC_EXTRAS,
    MAPPED_TYPES,
    PRESETS,
    Action,
    default_mappings,
)
from workers.destination.mapping import (
    MISSING,
    CompiledFields,
    Resolver,
    check_field_mapping,
    parse_path,
    path_getter,
)
from workers.destination.requests import RequestBuilder
from workers.errors import ConfigurationError, MappingError, SkipEvent
from workers.outbound import OutboundRequest

if TYPE_CHECKING:
    from connector.config import Connection

Predicate = Callable[[Mapping[str, Any]], bool]

SUBSCRIPTION_KEYS: Final = ("name", "trigger", "action", "fields")
SCALAR_ROOTS: Final = ("type", "event", "name", "userId", "anonymousId", "groupId")
OBJECT_ROOTS: Final = ("properties", "traits", "context")
MAX_TRIGGER_LENGTH: Final = 2000
PRESET_NAMES: Final[Mapping[str, str]] = {
    "identify": "Create Or Update Customer",
    "track": "Add Custom Event (Track Event)",
    "page": "Add Custom Event (Page Event)",
    "screen": "Add Custom Event (Screen Event)",
    "group": "Assign Customer To Group",
}


class TriggerError(ValueError):
    pass


# ---------------------------------------------------------------------------------------------
# Trigger language: tokens, AST, parser

_QUOTED = r'"(?:[^"\\]|\\.)*"|\'(?:[^\'\\]|\\.)*\''
_TOKEN_RE: Final = re.compile(
    rf"""\s*(?:
        (?P<lparen>\()|(?P<rparen>\))|
        (?P<op>!=|==|=)|
        (?P<string>{_QUOTED})|
        (?P<number>-?\d+(?:\.\d+)?(?:[eE][+-]?\d+)?)(?![\w.$])|
        (?P<word>[A-Za-z_$][\w$-]*(?:\.(?:[\w$-]+|"(?:[^"\\]|\\.)*"))*)
    )""",
    re.VERBOSE,
)
_ESCAPE_RE: Final = re.compile(r"\\(.)")
_SEGMENT_RE: Final = re.compile(r'"((?:[^"\\]|\\.)*)"|([^.]+)')


def _unescape(body: str) -> str:
    return _ESCAPE_RE.sub(lambda m: {"n": "\n", "t": "\t"}.get(m.group(1), m.group(1)), body)


@dataclass(frozen=True)
class _Token:
    kind: str  # lparen rparen op string number word end
    text: str
    col: int  # 1-based column, for messages

    @property
    def keyword(self) -> str:
        return self.text.lower() if self.kind == "word" else ""


def _tokenize(text: str) -> list[_Token]:
    tokens: list[_Token] = []
    pos = 0
    while pos < len(text):
        if text[pos:].strip() == "":
            break
        m = _TOKEN_RE.match(text, pos)
        if not m or m.end() == pos:
            col = pos + len(text[pos:]) - len(text[pos:].lstrip()) + 1
            raise TriggerError(f"unexpected character {text[col - 1]!r} at column {col}")
        kind = m.lastgroup or ""
        tokens.append(_Token(kind, m.group(kind), m.start(kind) + 1))
        pos = m.end()
    tokens.append(_Token("end", "", len(text) + 1))
    return tokens


class Node:
    def predicate(self) -> Predicate:
        raise NotImplementedError

    def covers(self, event_type: str) -> bool | None:
        """Three-valued: can this trigger hold for an event of ``event_type``?"""
        raise NotImplementedError


@dataclass(frozen=True)
class Comparison(Node):
    field: tuple[str, ...]
    op: str  # "=" | "!=" | "contains" | "exists"
    literal: Any = None

    def predicate(self) -> Predicate:
        get = path_getter(self.field)
        op, lit = self.op, self.literal
        if op == "exists":

            def exists(event: Mapping[str, Any]) -> bool:
                value = get(event)
                return value is not MISSING and value is not None

            return exists
        eq = _equality(lit)
        if op == "=":
            return lambda event: eq(get(event))
        if op == "!=":
            return lambda event: not eq(get(event))

        def contains(event: Mapping[str, Any]) -> bool:
            value = get(event)
            if type(value) is str:
                return type(lit) is str and lit in value
            if type(value) is list:
                return any(eq(item) for item in value)
            return False

        return contains

    def covers(self, event_type: str) -> bool | None:
        root = self.field[0]
        if root == "type" and len(self.field) == 1:
            return self.predicate()({"type": event_type})
        # Fields that Segment's spec gives to some call types only are absent from the others.
        if (root == "event" and event_type != "track") or (
            root == "name" and event_type not in ("page", "screen")
        ):
            return self.predicate()({})
        return None


@dataclass(frozen=True)
class BoolOp(Node):
    op: str  # "and" | "or"
    items: tuple[Node, ...]

    def predicate(self) -> Predicate:
        preds = tuple(item.predicate() for item in self.items)
        if self.op == "and":
            return lambda event: all(p(event) for p in preds)
        return lambda event: any(p(event) for p in preds)

    def covers(self, event_type: str) -> bool | None:
        results = [item.covers(event_type) for item in self.items]
        if self.op == "and":
            if False in results:
                return False
            return True if all(r is True for r in results) else None
        if True in results:
            return True
        return False if all(r is False for r in results) else None


def _equality(lit: Any) -> Callable[[Any], bool]:
    """JSON equality with ``lit``: no bool/number confusion, no string/number coercion."""
    if lit is None:
        return lambda value: value is None
    if isinstance(lit, bool):
        return lambda value: value is lit
    if isinstance(lit, int | float):
        return lambda value: type(value) in (int, float) and value == lit
    return lambda value: value == lit


class _Parser:
    def __init__(self, text: str) -> None:
        self.tokens = _tokenize(text)
        self.i = 0

    def peek(self) -> _Token:
        return self.tokens[self.i]

    def take(self) -> _Token:
        tok = self.tokens[self.i]
        self.i += 1
        return tok

    def parse(self) -> Node:
        node = self.expr()
        tok = self.peek()
        if tok.kind != "end":
            raise TriggerError(
                f"unexpected {tok.text!r} at column {tok.col} (expected `and`, `or` or the end)"
            )
        return node

    def expr(self) -> Node:
        items = [self.and_expr()]
        while self.peek().keyword == "or":
            self.take()
            items.append(self.and_expr())
        return items[0] if len(items) == 1 else BoolOp("or", tuple(items))

    def and_expr(self) -> Node:
        items = [self.term()]
        while self.peek().keyword == "and":
            self.take()
            items.append(self.term())
        return items[0] if len(items) == 1 else BoolOp("and", tuple(items))

    def term(self) -> Node:
        tok = self.take()
        if tok.kind == "lparen":
            node = self.expr()
            close = self.take()
            if close.kind != "rparen":
                raise TriggerError(f"expected ')' at column {close.col} to close '(' of column {tok.col}")
            return node
        if tok.kind != "word" or tok.keyword in ("and", "or", "contains", "exists", "true", "false", "null"):
            shown = tok.text or "the end"
            raise TriggerError(
                f"expected a field (type, event, properties.x...) at column {tok.col}, got {shown!r}"
            )
        field = _field(tok)
        op_tok = self.take()
        if op_tok.keyword == "exists":
            return Comparison(field, "exists")
        if op_tok.kind == "op":
            op = "=" if op_tok.text == "==" else op_tok.text
        elif op_tok.keyword == "contains":
            op = "contains"
        else:
            shown = op_tok.text or "the end"
            raise TriggerError(
                f"expected an operator (=, !=, contains, exists) after {tok.text!r} at column {op_tok.col}, got {shown!r}"
            )
        return Comparison(field, op, self.literal(op_tok))

    def literal(self, after: _Token) -> Any:
        tok = self.take()
        if tok.kind == "string":
            return _unescape(tok.text[1:-1])
        if tok.kind == "number":
            return float(tok.text) if any(c in tok.text for c in ".eE") else int(tok.text)
        if tok.kind == "word" and tok.text in ("true", "false", "null"):
            return {"true": True, "false": False, "null": None}[tok.text]
        shown = tok.text or "the end"
        raise TriggerError(
            f'expected a value ("string", number, true, false, null) after {after.text!r} at column {tok.col}, '
            f"got {shown!r}"
        )


def _field(tok: _Token) -> tuple[str, ...]:
    segments = tuple(
        _unescape(m.group(1)) if m.group(1) is not None else m.group(2)
        for m in _SEGMENT_RE.finditer(tok.text)
    )
    root = segments[0]
    if root in SCALAR_ROOTS:
        if len(segments) > 1:
            raise TriggerError(f"{root!r} has no sub-fields (column {tok.col})")
        return segments
    if root in OBJECT_ROOTS:
        return segments
    known = ", ".join([*SCALAR_ROOTS, *(f"{r}.<x>" for r in OBJECT_ROOTS)])
    raise TriggerError(f"unknown field {tok.text!r} at column {tok.col} (known: {known})")


def parse_trigger(text: str) -> Node:
    """Parse a trigger; raises :class:`TriggerError` with a column number."""
    if not text.strip():
        raise TriggerError("is empty")
    if len(text) > MAX_TRIGGER_LENGTH:
        raise TriggerError(f"is longer than {MAX_TRIGGER_LENGTH} characters")
    return _Parser(text).parse()


def covered_types(node: Node) -> tuple[str, ...]:
    return tuple(t for t in MAPPED_TYPES if node.covers(t) is not False)


# ---------------------------------------------------------------------------------------------
# Subscriptions: validation and parsing


@dataclass(frozen=True)
class Subscription:
    index: int | None  # position among the connection's custom subscriptions; None for presets
    name: str | None  # as configured (custom) or the reference's preset name
    action: Action
    trigger: Node | None  # None: a preset, whose trigger is its type
    fields: Mapping[str, Any]
    types: tuple[str, ...]

    @property
    def label(self) -> str:
        """How messages and reports name the subscription."""
        return self.name or f"mapping[{self.index}]"


def _action_key(raw: Any) -> str | None:
    return ACTION_ALIASES.get(raw) if isinstance(raw, str) else None


def validate_subscription(raw: Mapping[str, Any]) -> list[str]:
    """Problems with one ``[[connection.destination.mapping]]`` table; empty when valid."""
    if not isinstance(raw, Mapping):
        return ["must be a table"]
    errors: list[str] = []
    for key in raw:
        if key not in SUBSCRIPTION_KEYS:
            errors.append(f"{key}: unknown key (known: {', '.join(SUBSCRIPTION_KEYS)})")
    name = raw.get("name")
    if "name" in raw and (not isinstance(name, str) or not name.strip() or len(name) > 200):
        errors.append("name: must be a non-empty string of at most 200 characters")
    trigger = raw.get("trigger")
    if not isinstance(trigger, str):
        errors.append(
            'trigger: is required, a string such as \'type = "track" and event = "Order Completed"\''
        )
    else:
        try:
            node = parse_trigger(trigger)
        except TriggerError as exc:
            errors.append(f"trigger: {exc}")
        else:
            if not covered_types(node):
                errors.append(
                    f"trigger: can match none of the event types that are mapped ({', '.join(MAPPED_TYPES)})"
                )
    action_raw = raw.get("action")
    action_key = _action_key(action_raw)
    if action_key is None:
        known = "upsert_customer, add_custom_event, assign_customer_to_group"
        errors.append(
            f"action: {'unknown action ' + repr(action_raw) if 'action' in raw else 'is required'} (known: {known})"
        )
    fields = raw.get("fields", {})
    if not isinstance(fields, Mapping):
        errors.append("fields: must be a table of field = mapping")
    elif action_key is not None:
        action = ACTIONS[action_key]
        for field_name, value in fields.items():
            spec = action.field(field_name)
            if spec is None:
                errors.append(
                    f"fields.{field_name}: unknown field for {action.key} (known: {', '.join(action.field_names)})"
                )
                continue
            errors.extend(check_field_mapping(spec, value, f"fields.{field_name}"))
    return errors


def parse_subscription(raw: Mapping[str, Any], index: int) -> Subscription:
    errors = validate_subscription(raw)
    if errors:
        raise ConfigurationError(f"mapping[{index}]: " + "; ".join(errors))
    node = parse_trigger(raw["trigger"])
    action = ACTIONS[ACTION_ALIASES[raw["action"]]]
    return Subscription(
        index, raw.get("name"), action, node, dict(raw.get("fields", {})), covered_types(node)
    )


def preset_subscriptions() -> list[Subscription]:
    return [
        Subscription(None, PRESET_NAMES[t], ACTIONS[action], None, overrides, (t,))
        for t, (action, overrides) in PRESETS.items()
    ]


# ---------------------------------------------------------------------------------------------
# Compiled form, per connection


@dataclass(frozen=True)
class MappingResult:
    requests: list[OutboundRequest]
    # Matching subscriptions whose mapping failed, with the error (the others still deliver).
    failures: list[tuple[str, MappingError]]


class Route:
    """One subscription, compiled for one connection."""

    __slots__ = ("builder", "extras", "fields", "matches", "name")

    def __init__(
        self,
        name: str,
        matches: Predicate | None,
        fields: CompiledFields,
        builder: RequestBuilder,
        extras: tuple[tuple[str, Resolver], ...],
    ) -> None:
        self.name = name
        self.matches = matches
        self.fields = fields
        self.builder = builder
        self.extras = extras

    def apply(self, event: Mapping[str, Any]) -> OutboundRequest:
        payload = self.fields.apply(event)
        extras: dict[str, Any] = {}
        for extra_name, get in self.extras:
            value = get(event)
            if value is not MISSING:
                extras[extra_name] = value
        return self.builder.build(payload, event, extras)


def _slug(text: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-")[:60]


class CompiledDestination:
    """A connection's destination settings, ready for :meth:`map`."""

    def __init__(self, connection: Connection) -> None:
        dest = connection.destination
        mode = connection.voucherify.mode
        anonymous_fallback = dest.anonymous_fallback
        problems: list[str] = []
        customs: list[Subscription] = []
        for index, raw in enumerate(dest.mappings):
            try:
                customs.append(parse_subscription(raw, index))
            except ConfigurationError as exc:
                problems.append(str(exc))
        if problems:
            raise ConfigurationError(f"connection {connection.id!r}: " + " | ".join(problems))
        # Idempotency-key suffixes: the name's slug when unique (readable in dead letters and stable
        # when subscriptions are reordered), else the position.
        slugs = [_slug(s.name) if s.name else "" for s in customs]

        def route(sub: Subscription) -> Route:
            overrides = sub.fields
            mappings = default_mappings(sub.action, anonymous_fallback=anonymous_fallback)
            mappings.update(overrides)
            fields = CompiledFields(sub.action.fields, mappings)
            suffix = ""
            if sub.index is not None:
                slug = slugs[sub.index]
                unique = slug and slugs.count(slug) == 1
                suffix = f":{slug}" if unique else f":m{sub.index}"
            builder = RequestBuilder(
                sub.action,
                mode=mode,
                connection_id=connection.id,
                key_suffix=suffix,
                group_prefix=dest.group_metadata_prefix,
            )
            extras: list[tuple[str, Resolver]] = []
            if mode == "rest":
                for field_name, paths in CLASSIC_EXTRAS.get(sub.action.key, {}).items():
                    if field_name not in overrides:  # classic spellings only back default mappings
                        extras.extend((n, path_getter(parse_path(p))) for n, p in paths.items())
            matches = sub.trigger.predicate() if sub.trigger is not None else None
            return Route(sub.label, matches, fields, builder, tuple(extras))

        compiled_customs = [(sub, route(sub)) for sub in customs]
        routes: dict[str, tuple[Route, ...]] = {}
        for preset in preset_subscriptions():
            event_type = preset.types[0]
            covering = tuple(r for sub, r in compiled_customs if event_type in sub.types)
            routes[event_type] = covering or (route(preset),)
        self.routes = routes
        self.disabled = frozenset(t for t in MAPPED_TYPES if getattr(dest, f"{t}_disabled", False))
        self.ignore_anonymous = dest.ignore_anonymous
        self.skip_voucherify_origin = dest.skip_voucherify_origin
        self.track_filter = frozenset(dest.track_events_filter) if dest.track_events_filter else None

    def map_detailed(self, event: Mapping[str, Any]) -> MappingResult:
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
            and event.get("event") not in self.track_filter
        ):
            raise SkipEvent("track_filtered", "the event name is not in track_events_filter")
        requests: list[OutboundRequest] = []
        failures: list[tuple[str, MappingError]] = []
        for r in routes:
            if r.matches is not None and not r.matches(event):
                continue
            try:
                requests.append(r.apply(event))
            except MappingError as exc:
                failures.append((r.name, exc))
        if not requests and not failures:
            raise SkipEvent("no_subscription", "no subscription matches the event")
        return MappingResult(requests, failures)

    def map(self, event: Mapping[str, Any]) -> list[OutboundRequest]:
        result = self.map_detailed(event)
        if result.requests or not result.failures:
            return result.requests
        if len(result.failures) == 1:
            raise result.failures[0][1]
        raise MappingError(" ".join(f"[{name}] {exc.message}" for name, exc in result.failures))


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


def clear_cache() -> None:
    with _CACHE_LOCK:
        _CACHE.clear()


def describe(connection: Connection) -> dict[str, list[str]]:
    """Event type -> names of the subscriptions that may fire (for `connector check`, docs)."""
    return {t: [r.name for r in routes] for t, routes in compiled_for(connection).routes.items()}


__all__: Sequence[str] = [
    "CompiledDestination",
    "MappingResult",
    "Subscription",
    "TriggerError",
    "compiled_for",
    "covered_types",
    "parse_trigger",
    "validate_subscription",
]
