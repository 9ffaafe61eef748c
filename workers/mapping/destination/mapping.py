"""The mapping framework of Segment's Actions destinations, reproduced for the connector: the
directives (field declarations and their validation are :mod:`.fields`).

A *mapping* is a JSON value made of raw values and directives (``@path``, ``@if``,
``@template``, ``@literal``).  An *action* declares *fields* (name, label, type, required,
allow-null, nested properties).  Mapping an event for one action is, as in Segment's
``actions-core``:

1. resolve every field's mapping against the event; a path that is missing yields *nothing*
   (the key is omitted), while an object mapping always yields an object, possibly ``{}``;
2. drop ``null`` where the field does not allow it, and ``""`` only for top-level fields;
3. validate with type coercion: declared string fields take ``123 -> "123"``,
   ``true -> "true"``, ``["x"] -> "x"``; keys not declared inside an object field that declares
   properties are removed (free-form objects such as ``metadata`` are left alone);
4. report what is wrong in the reference's words, every problem at once, e.g.
   ``The root value is missing the required field 'source_id'.``

Everything is compiled once (per connection and subscription) into closures, so mapping an event
is a handful of dictionary look-ups and no parsing: this is the hot path of the workers.  Nothing
here copies the event: free-form objects are passed through by reference, objects that need
filtering are rebuilt, and the input is never mutated.

Deliberate deviation from the reference: ``get`` in actions-core returns a ``null`` or falsy
*intermediate* value as the result (``traits: null`` makes ``$.traits.name`` ``null``, which would
clear the customer's name).  Here a path through a non-container is simply missing.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Mapping, Sequence
from typing import Any, Final


class _Missing:
    """JavaScript's ``undefined``: the value of a path that does not exist."""

    __slots__ = ()

    def __repr__(self) -> str:
        return "MISSING"

    def __bool__(self) -> bool:
        return False


MISSING: Final = _Missing()

Resolver = Callable[[Any], Any]
"""A compiled mapping: event -> value, or ``MISSING``."""

DIRECTIVES: Final = ("@path", "@if", "@template", "@literal", "@merge")
_PATH_SEGMENT_RE: Final = re.compile(r"[^\[.\]]+")
_TEMPLATE_RE: Final = re.compile(r"\{\{\{([^}]+)\}\}\}|\{\{([^}]+)\}\}")


# ---------------------------------------------------------------------------------------------
# JavaScript-compatible helpers


def js_string(value: Any) -> str:
    """``String(value)`` as JavaScript computes it, for JSON values."""
    if value is None:
        return "null"
    if value is True:
        return "true"
    if value is False:
        return "false"
    if isinstance(value, str):
        return value
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        if math.isnan(value):
            return "NaN"
        if math.isinf(value):
            return "Infinity" if value > 0 else "-Infinity"
        if value.is_integer() and abs(value) < 1e21:
            return str(int(value))
        return repr(value)
    if isinstance(value, list):
        return ",".join("" if item is None else js_string(item) for item in value)
    if isinstance(value, Mapping):
        return "[object Object]"
    return str(value)


def js_type_phrase(value: Any) -> str:
    """How ajv-human-errors names the type of a value: ``an object``, ``a string``, ``null``..."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, int | float):
        return "a number"
    if isinstance(value, list):
        return "an array"
    return "an object"


def js_loosely_empty(value: Any) -> bool:
    """``value == ''`` in JavaScript (loose equality), for JSON values: "", 0, false, [] and [""]."""
    if isinstance(value, str):
        return value == ""
    if isinstance(value, bool):
        return value is False
    if isinstance(value, int | float):
        return value == 0
    if isinstance(value, list):
        return js_string(value) == ""
    return False


def is_js_falsy(value: Any) -> bool:
    """JavaScript truthiness of a *raw* mapping value (directives are objects, always truthy)."""
    return value is None or value is False or value == "" or (isinstance(value, int | float) and value == 0)


# ---------------------------------------------------------------------------------------------
# Paths


def parse_path(path: str) -> tuple[str, ...]:
    """``$.a.b[0].c`` -> ``("a", "b", "0", "c")``.

    Like mapping-kit: the first ``$.`` is removed, then the path is split on ``.``, ``[`` and
    ``]``. An empty path (``$`` or ``""``) is the whole event.
    """
    if path in ("$", ""):
        return ()
    return tuple(_PATH_SEGMENT_RE.findall(path.replace("$.", "", 1)))


def _step(current: Any, key: str) -> Any:
    if isinstance(current, Mapping):
        return current.get(key, MISSING)
    if isinstance(current, list) and key.isdigit():
        index = int(key)
        return current[index] if index < len(current) else MISSING
    return MISSING


def path_getter(segments: Sequence[str]) -> Resolver:
    """A fast getter for a parsed path; specialised for the short paths the defaults use."""
    segs = tuple(segments)
    if not segs:
        return lambda data: data
    if len(segs) == 1:
        (k1,) = segs

        def get1(data: Any) -> Any:
            if type(data) is dict:
                return data.get(k1, MISSING)
            return _step(data, k1)

        return get1
    if len(segs) == 2:
        k1, k2 = segs

        def get2(data: Any) -> Any:
            if type(data) is dict:
                cur = data.get(k1, MISSING)
                if type(cur) is dict:
                    return cur.get(k2, MISSING)
                return MISSING if cur is MISSING else _step(cur, k2)
            return _step(_step(data, k1), k2)

        return get2

    def getn(data: Any) -> Any:
        cur = data
        for key in segs:
            if type(cur) is dict:
                cur = cur.get(key, MISSING)
            elif cur is MISSING:
                return MISSING
            else:
                cur = _step(cur, key)
        return cur

    return getn


def get_path(data: Any, path: str) -> Any:
    """Convenience (not for hot paths): the value at ``path`` or ``MISSING``."""
    return path_getter(parse_path(path))(data)


# ---------------------------------------------------------------------------------------------
# Compiling mappings


def is_directive(value: Any) -> bool:
    return isinstance(value, Mapping) and any(isinstance(k, str) and k.startswith("@") for k in value)


def _constant(value: Any) -> Resolver:
    return lambda data: value


def _compile_template(template: str) -> Resolver:
    """``{{a.b}}`` and ``{{{a.b}}}`` replaced by the value at that path, without any escaping.

    As actions-core 3.170.0's render(): no HTML escaping (older versions escaped ``{{x}}``; that
    code is gone), a missing or null value renders as "", numbers and booleans as JavaScript's
    ``String()`` does.  Two of its accidents are not reproduced (docs/choices.md): an object or an array
    renders as "" (not ``[object Object]`` / ``a,b``), and the template is rendered in one pass
    (the reference renders ``{{{x}}}`` first and then re-scans the result for ``{{y}}``, so event
    data containing braces could pull in other fields).
    """
    # Parts are literal strings or getters, found once here rather than per event.
    parts: list[str | Resolver] = []
    pos = 0
    for m in _TEMPLATE_RE.finditer(template):
        if m.start() > pos:
            parts.append(template[pos : m.start()])
        expr = (m.group(1) if m.group(1) is not None else m.group(2)).strip()
        # Template placeholders are plain dot paths relative to the event (no ``$.``), as in
        # mapping-kit's render(); ``{{$.name}}`` therefore renders as "".
        getter = (
            path_getter(tuple(_PATH_SEGMENT_RE.findall(expr))) if expr not in ("", ".") else (lambda d: d)
        )
        parts.append(getter)
        pos = m.end()
    if pos < len(template):
        parts.append(template[pos:])
    if all(isinstance(p, str) for p in parts):
        return _constant(template)
    frozen = tuple(parts)

    def render(data: Any) -> str:
        out: list[str] = []
        for part in frozen:
            if isinstance(part, str):
                out.append(part)
                continue
            value = part(data)
            if type(value) is str:
                out.append(value)
            elif value is not MISSING and value is not None and not isinstance(value, Mapping | list):
                out.append(js_string(value))
        return "".join(out)

    return render


def compile_mapping(value: Any, where: str, errors: list[str]) -> Resolver:
    """Compile a mapping value; problems are appended to ``errors`` (prefixed with ``where``)."""
    if isinstance(value, Mapping):
        directive_keys = [k for k in value if isinstance(k, str) and k.startswith("@")]
        if directive_keys:
            if len(value) != 1:
                if len(directive_keys) > 1:
                    errors.append(
                        f"{where}: a directive object has exactly one @-key, got {', '.join(directive_keys)}"
                    )
                else:
                    errors.append(
                        f"{where}: a directive ({directive_keys[0]}) cannot be mixed with other keys"
                    )
                return _constant(MISSING)
            return _compile_directive(directive_keys[0], value[directive_keys[0]], where, errors)
        items = tuple((str(k), compile_mapping(v, f"{where}.{k}", errors)) for k, v in value.items())

        def build_object(data: Any) -> dict[str, Any]:
            out: dict[str, Any] = {}
            for key, resolve in items:
                resolved = resolve(data)
                if resolved is not MISSING:
                    out[key] = resolved
            return out

        return build_object
    if isinstance(value, list):
        elements = tuple(compile_mapping(v, f"{where}[{i}]", errors) for i, v in enumerate(value))

        def build_list(data: Any) -> list[Any]:
            return [r for r in (e(data) for e in elements) if r is not MISSING]

        return build_list
    if value is MISSING:  # "no mapping at all" (a field the classic tables leave out)
        return _constant(MISSING)
    if value is None or isinstance(value, str | int | float | bool):
        return _constant(value)
    errors.append(f"{where}: unsupported value of type {type(value).__name__}")
    return _constant(MISSING)


def _compile_directive(name: str, arg: Any, where: str, errors: list[str]) -> Resolver:
    if name == "@path":
        if not isinstance(arg, str):
            errors.append(f'{where}: @path must be a string like "$.properties.email"')
            return _constant(MISSING)
        if arg not in ("$", "") and not arg.startswith("$.") and not re.match(r"^[A-Za-z_]", arg):
            errors.append(f'{where}: @path {arg!r} must start with "$."')
            return _constant(MISSING)
        return path_getter(parse_path(arg))
    if name == "@template":
        if not isinstance(arg, str):
            errors.append(f'{where}: @template must be a string like "Viewed {{{{name}}}} Page"')
            return _constant(MISSING)
        return _compile_template(arg)
    if name == "@literal":
        # mapping-kit resolves the argument of @literal too.
        return compile_mapping(arg, f"{where}.@literal", errors)
    if name == "@if":
        return _compile_if(arg, where, errors)
    if name == "@merge":
        return _compile_merge(arg, where, errors)
    errors.append(f"{where}: unknown directive {name} (known: {', '.join(DIRECTIVES)})")
    return _constant(MISSING)


def _compile_merge(arg: Any, where: str, errors: list[str]) -> Resolver:
    """``{"@merge": {"objects": [m1, m2...], "direction": "right" | "left"}}``: one object.

    As mapping-kit: ``Object.assign({}, ...objects)``, later objects winning (``left``: earlier
    ones win).  Values that are not objects add nothing (JavaScript would copy a string's
    characters in as "0", "1"...: not reproduced).
    """
    if not isinstance(arg, Mapping) or "objects" not in arg or "direction" not in arg:
        errors.append(f'{where}: @merge requires "objects" (a list) and "direction" ("left" or "right")')
        return _constant(MISSING)
    objects, direction = arg["objects"], arg["direction"]
    if not isinstance(objects, list):
        errors.append(f"{where}: @merge objects must be a list")
        return _constant(MISSING)
    if direction not in ("left", "right"):
        errors.append(f'{where}: @merge direction must be "left" or "right"')
        return _constant(MISSING)
    parts = [compile_mapping(o, f"{where}.@merge[{i}]", errors) for i, o in enumerate(objects)]
    if direction == "left":
        parts.reverse()

    def merge(data: Any) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for part in parts:
            value = part(data)
            if isinstance(value, Mapping):
                out.update(value)
        return out

    return merge


def _compile_if(arg: Any, where: str, errors: list[str]) -> Resolver:
    if not isinstance(arg, Mapping):
        errors.append(f"{where}: @if must be a table with `exists` (or `blank`) and `then` and/or `else`")
        return _constant(MISSING)
    unknown = [k for k in arg if k not in ("exists", "blank", "then", "else")]
    if unknown:
        errors.append(
            f"{where}: @if has unknown keys {', '.join(map(str, unknown))} (known: exists, blank, then, else)"
        )
    has_exists = "exists" in arg and not is_js_falsy(arg["exists"])
    has_blank = "blank" in arg and not is_js_falsy(arg["blank"])
    if not has_exists and not has_blank:
        errors.append(f"{where}: @if requires an `exists` or a `blank` condition")
        return _constant(MISSING)
    if "then" not in arg and "else" not in arg:
        errors.append(f"{where}: @if requires a `then` or an `else` branch")
        return _constant(MISSING)
    blank = not has_exists
    condition = compile_mapping(arg["blank" if blank else "exists"], f"{where}.@if", errors)
    then = compile_mapping(arg["then"], f"{where}.@if.then", errors) if "then" in arg else None
    # mapping-kit tests `opts.else` for truthiness: a falsy literal `else` (0, "", false) is ignored.
    has_else = "else" in arg and not is_js_falsy(arg["else"])
    otherwise = compile_mapping(arg["else"], f"{where}.@if.else", errors) if has_else else None

    def resolve_if(data: Any) -> Any:
        value = condition(data)
        # mapping-kit: `value != ''` is JavaScript's loose comparison, so 0 and false are blank too.
        ok = value is not MISSING and value is not None and not (blank and js_loosely_empty(value))
        if ok:
            return then(data) if then is not None else MISSING
        return otherwise(data) if otherwise is not None else MISSING

    return resolve_if
