"""The trigger language of subscriptions: Segment's subscription syntax (SPEC 3.4b).

::

    expr        := and_expr ("or" and_expr)*
    and_expr    := unary ("and" unary)*
    unary       := "!" "(" expr ")" | "!" call | primary
    primary     := "(" expr ")" | call | field "exists" | field op literal | field "contains" literal
    call        := ("contains" | "match") "(" field "," literal ")"
    op          := "=" | "==" | "!=" | "<" | "<=" | ">" | ">="
    field       := type | event | name | userId | anonymousId | groupId
                 | (properties | traits | context) ("." segment)*     segment: name or "quoted"
    literal     := "string" | 'string' | number | true | false | null

What a condition means is what ``@segment/destination-subscriptions`` (the matcher of
actions-core 3.170.0) decides, row by row in ``tests/mapping_cases/triggers/``:

* ``=`` / ``!=`` with a string compare strings exactly (``!=`` also holds when the field is
  missing).  On ``type``, ``event``, ``name``, ``userId`` any literal is compared as a string
  (``event = 42`` matches ``"42"``, not the number 42).
* On the other fields ``= 5`` / ``!= 5`` need a number (``!= 5`` is false when the field is missing
  or not a number), ``= true`` / ``= false`` need that boolean, ``= null`` means missing or null
  and ``!= null`` present and not null (like ``exists``).
* ``<``, ``<=``, ``>``, ``>=`` take a number and hold only for numbers.
* ``contains(f, "x")`` is a substring test and ``match(f, "x*")`` a glob (``*`` any run, ``?`` one
  character), both on strings only; ``!contains(...)`` / ``!match(...)`` also need a string.

Deliberate differences from that matcher (each a row of the table; docs/choices.md):

* ``!( ... )`` negates (the reference ignores a ``!`` before a parenthesis);
* ``and`` binds tighter than ``or`` (the reference applies a group's last connective to all of
  its terms, so ``a and b or c`` means ``a or b or c`` there);
* ``match`` takes any glob (the reference only understands ``"x*"`` and ``"*x"``: ``"a*c"`` ends
  with ``"*c"`` there);
* ``type = null`` / ``event = null`` test existence (the reference compares with ``"null"``);
* ``anonymousId`` and ``groupId`` are fields, an unknown field is an error (the reference drops
  both silently, so the condition disappears);
* the connector's earlier forms still work: ``field exists``, ``field contains "x"`` (a
  substring of a string or a member of an array), single-quoted strings, ``==``, ``AND``/``OR``.

A custom subscription *covers* the event types its trigger can match; for those types it replaces
the default subscription.  Coverage is decided once, by evaluating the trigger for each type with
everything but the type unknown, knowing that only ``track`` calls carry ``event`` and only
``page``/``screen`` calls carry ``name``, in three-valued logic (so negation stays correct).
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Final

from workers.mapping.destination.actions import MAPPED_TYPES
from workers.mapping.destination.mapping import MISSING, js_string, path_getter

Predicate = Callable[[Mapping[str, Any]], bool]

# Fields the reference compares with String(literal); the connector adds anonymousId and groupId
# to them (same rules as userId).
SCALAR_ROOTS: Final = ("type", "event", "name", "userId", "anonymousId", "groupId")
OBJECT_ROOTS: Final = ("properties", "traits", "context")
# Where `= null` / `!= null` / `= true` / `= false` / `= 5` have their special meanings.
_SPECIAL_ROOTS: Final = ("name", "userId", "anonymousId", "groupId", *OBJECT_ROOTS)
MAX_TRIGGER_LENGTH: Final = 2000
ORDERING: Final = ("<", "<=", ">", ">=")
_KEYWORDS: Final = ("and", "or", "contains", "match", "exists", "true", "false", "null")


class TriggerError(ValueError):
    pass


# ---------------------------------------------------------------------------------------------
# Tokens

_QUOTED = r'"(?:[^"\\]|\\.)*"|\'(?:[^\'\\]|\\.)*\''
_TOKEN_RE: Final = re.compile(
    rf"""\s*(?:
        (?P<lparen>\()|(?P<rparen>\))|(?P<comma>,)|
        (?P<op>!=|==|<=|>=|=|<|>)|(?P<bang>!)|
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
    kind: str  # lparen rparen comma op bang string number word end
    text: str
    col: int  # 1-based column, for messages

    @property
    def keyword(self) -> str:
        return self.text.lower() if self.kind == "word" else ""

    def shown(self) -> str:
        return repr(self.text) if self.text else "the end"


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


# ---------------------------------------------------------------------------------------------
# Conditions


def _is_number(value: Any) -> bool:
    return type(value) in (int, float)


def _glob(pattern: str) -> re.Pattern[str]:
    parts = ("." if c == "?" else ".*" if c == "*" else re.escape(c) for c in pattern)
    return re.compile("".join(parts), re.DOTALL)


def _test(op: str, literal: Any, root: str) -> Callable[[Any], bool]:
    """The test one condition applies to a field's value (``MISSING`` when absent)."""
    if op == "exists":
        return lambda v: v is not MISSING and v is not None
    special = root in _SPECIAL_ROOTS or root in ("type", "event")
    if op in ("=", "!=") and literal is None and special:
        if op == "=":
            return lambda v: v is MISSING or v is None
        return lambda v: v is not MISSING and v is not None
    if op == "=" and isinstance(literal, bool) and root in _SPECIAL_ROOTS and root != "name":
        return lambda v: v is literal
    if op in ("=", "!=") and _is_number(literal) and root not in SCALAR_ROOTS:
        if op == "=":
            return lambda v: _is_number(v) and v == literal
        return lambda v: _is_number(v) and v != literal
    if op in ("=", "!="):
        text = literal if isinstance(literal, str) else js_string(literal)
        if op == "=":
            return lambda v: type(v) is str and v == text
        return lambda v: not (type(v) is str and v == text)
    if op in ORDERING:
        compare: Callable[[Any, Any], bool] = {
            "<": lambda a, b: a < b,
            "<=": lambda a, b: a <= b,
            ">": lambda a, b: a > b,
            ">=": lambda a, b: a >= b,
        }[op]
        return lambda v: _is_number(v) and compare(v, literal)
    if op in ("contains()", "!contains()"):
        sub = literal if isinstance(literal, str) else js_string(literal)
        if op == "contains()":
            return lambda v: type(v) is str and sub in v
        return lambda v: type(v) is str and sub not in v
    if op in ("match()", "!match()"):
        regex = _glob(literal if isinstance(literal, str) else js_string(literal))
        if op == "match()":
            return lambda v: type(v) is str and regex.fullmatch(v) is not None
        return lambda v: type(v) is str and regex.fullmatch(v) is None
    if op == "contains":  # the connector's earlier form: substring, or member of an array
        equal = _json_equality(literal)

        def contains(v: Any) -> bool:
            if type(v) is str:
                return type(literal) is str and literal in v
            if type(v) is list:
                return any(equal(item) for item in v)
            return False

        return contains
    raise TriggerError(f"unknown operator {op!r}")  # pragma: no cover - the parser only makes these


def _json_equality(lit: Any) -> Callable[[Any], bool]:
    """JSON equality with ``lit``: no bool/number confusion, no string/number coercion."""
    if lit is None:
        return lambda value: value is None
    if isinstance(lit, bool):
        return lambda value: value is lit
    if isinstance(lit, int | float):
        return lambda value: _is_number(value) and value == lit
    return lambda value: value == lit


class Node:
    def predicate(self) -> Predicate:
        raise NotImplementedError

    def covers(self, event_type: str) -> bool | None:
        """Three-valued: can this trigger hold for an event of ``event_type``?"""
        raise NotImplementedError


@dataclass(frozen=True)
class Condition(Node):
    field: tuple[str, ...]
    op: str  # = != < <= > >= exists contains contains() !contains() match() !match()
    literal: Any = None

    def predicate(self) -> Predicate:
        get = path_getter(self.field)
        test = _test(self.op, self.literal, self.field[0])
        return lambda event: test(get(event))

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
class Not(Node):
    item: Node

    def predicate(self) -> Predicate:
        inner = self.item.predicate()
        return lambda event: not inner(event)

    def covers(self, event_type: str) -> bool | None:
        inner = self.item.covers(event_type)
        return None if inner is None else not inner


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


# ---------------------------------------------------------------------------------------------
# Parser


class _Parser:
    def __init__(self, text: str) -> None:
        self.tokens = _tokenize(text)
        self.i = 0

    def peek(self, ahead: int = 0) -> _Token:
        return self.tokens[min(self.i + ahead, len(self.tokens) - 1)]

    def take(self) -> _Token:
        tok = self.tokens[self.i]
        self.i = min(self.i + 1, len(self.tokens) - 1)
        return tok

    def expect(self, kind: str, what: str) -> _Token:
        tok = self.take()
        if tok.kind != kind:
            raise TriggerError(f"expected {what} at column {tok.col}, got {tok.shown()}")
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
        items = [self.unary()]
        while self.peek().keyword == "and":
            self.take()
            items.append(self.unary())
        return items[0] if len(items) == 1 else BoolOp("and", tuple(items))

    def unary(self) -> Node:
        tok = self.peek()
        if tok.kind != "bang":
            return self.primary()
        self.take()
        nxt = self.peek()
        if nxt.kind == "lparen":
            return Not(self.group())
        if self._is_call():
            return self.call(negate=True)
        raise TriggerError(
            f"'!' at column {tok.col} must be followed by '(', contains( or match(, got {nxt.shown()}"
        )

    def group(self) -> Node:
        open_tok = self.take()
        node = self.expr()
        close = self.take()
        if close.kind != "rparen":
            raise TriggerError(f"expected ')' at column {close.col} to close '(' of column {open_tok.col}")
        return node

    def _is_call(self) -> bool:
        return self.peek().keyword in ("contains", "match") and self.peek(1).kind == "lparen"

    def primary(self) -> Node:
        tok = self.peek()
        if tok.kind == "lparen":
            return self.group()
        if self._is_call():
            return self.call(negate=False)
        self.take()
        if tok.kind != "word" or tok.keyword in _KEYWORDS:
            raise TriggerError(
                f"expected a field (type, event, properties.x...) at column {tok.col}, got {tok.shown()}"
            )
        field = _field(tok)
        op_tok = self.take()
        if op_tok.keyword == "exists":
            return Condition(field, "exists")
        if op_tok.kind == "op":
            op = "=" if op_tok.text == "==" else op_tok.text
        elif op_tok.keyword == "contains":
            op = "contains"
        else:
            raise TriggerError(
                f"expected an operator (=, !=, <, <=, >, >=, contains, exists) after {tok.text!r} "
                f"at column {op_tok.col}, got {op_tok.shown()}"
            )
        literal = self.literal(op_tok)
        if op in ORDERING and not _is_number(literal):
            raise TriggerError(f"{op} at column {op_tok.col} compares numbers: got {literal!r}")
        return Condition(field, op, literal)

    def call(self, *, negate: bool) -> Node:
        name_tok = self.take()
        name = name_tok.keyword
        self.expect("lparen", f"'(' after {name}")
        field_tok = self.take()
        if field_tok.kind != "word" or field_tok.keyword in _KEYWORDS:
            raise TriggerError(
                f"{name}() takes a field first (column {field_tok.col}), got {field_tok.shown()}"
            )
        field = _field(field_tok)
        self.expect("comma", f"',' after the field of {name}()")
        literal = self.literal(name_tok)
        if not isinstance(literal, str):
            raise TriggerError(f'{name}() at column {name_tok.col} takes a "string", got {literal!r}')
        self.expect("rparen", f"')' to close {name}(")
        return Condition(field, ("!" if negate else "") + name + "()", literal)

    def literal(self, after: _Token) -> Any:
        tok = self.take()
        if tok.kind == "string":
            return _unescape(tok.text[1:-1])
        if tok.kind == "number":
            return float(tok.text) if any(c in tok.text for c in ".eE") else int(tok.text)
        if tok.kind == "word" and tok.text in ("true", "false", "null"):
            return {"true": True, "false": False, "null": None}[tok.text]
        raise TriggerError(
            f'expected a value ("string", number, true, false, null) after {after.text!r} at column '
            f"{tok.col}, got {tok.shown()}"
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


__all__ = ["Node", "Predicate", "TriggerError", "covered_types", "parse_trigger"]
