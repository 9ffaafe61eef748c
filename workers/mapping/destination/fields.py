"""Field declarations of the Actions framework, and a mapped payload validated against them.

An *action* declares *fields* (name, label, type, required, allow-null, nested properties).
Mapping an event for one action (the directives are :mod:`.mapping`'s) then drops ``null`` where
a field does not allow it and ``""`` only for top-level fields, coerces declared string fields
(``123 -> "123"``, ``true -> "true"``, ``["x"] -> "x"``), removes keys an object field does not
declare, and reports what is wrong in the reference's words, every problem at once, e.g.
``The root value is missing the required field 'source_id'.``  A user's mapping is checked
against the same declarations at start-up (:func:`check_field_mapping`).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from connector.errors import MappingError
from workers.mapping.destination.mapping import (
    MISSING,
    Resolver,
    compile_mapping,
    is_directive,
    js_string,
    js_type_phrase,
)

# ---------------------------------------------------------------------------------------------
# Field declarations


@dataclass(frozen=True)
class Field:
    """One input field of an action, as Segment declares it (``fields`` of an ActionDefinition)."""

    name: str
    label: str
    type: str  # "string" | "object"
    required: bool = False
    allow_null: bool = False
    # Declared properties of an object field: other keys are removed. None: free-form object.
    properties: tuple[Field, ...] | None = None
    default: Any = None  # the default mapping (a JSON value with directives)
    description: str = ""

    def __post_init__(self) -> None:
        if self.type not in ("string", "object"):
            raise ValueError(f"field {self.name}: unsupported type {self.type!r}")

    @property
    def property_names(self) -> tuple[str, ...]:
        return tuple(p.name for p in self.properties or ())

    def type_phrase(self) -> str:
        base = "a string" if self.type == "string" else "an object"
        return f"{base} or null" if self.allow_null else base


def coerce_string(value: Any) -> Any:
    """ajv ``coerceTypes: 'array'`` towards ``string``; MISSING when it cannot."""
    if value is True:
        return "true"
    if value is False:
        return "false"
    if isinstance(value, int | float):
        return js_string(value)
    if isinstance(value, list) and len(value) == 1 and not isinstance(value[0], list | Mapping):
        inner = value[0]
        return inner if isinstance(inner, str) else ("" if inner is None else coerce_string(inner))
    return MISSING


@dataclass(frozen=True)
class _CompiledField:
    spec: Field
    resolve: Resolver
    # For object fields with properties: name -> nested spec, and the nested required names.
    props: Mapping[str, Field] = field(default_factory=dict)
    nested_required: tuple[str, ...] = ()


class CompiledFields:
    """An action's fields with their (default or overridden) mappings, ready to run."""

    __slots__ = ("_fields", "_required")

    def __init__(self, fields: Sequence[Field], overrides: Mapping[str, Any] | None = None) -> None:
        errors: list[str] = []
        compiled: list[_CompiledField] = []
        overrides = overrides or {}
        for spec in fields:
            mapping = overrides.get(spec.name, spec.default)
            resolve = compile_mapping(mapping, f"fields.{spec.name}", errors)
            props = {p.name: p for p in spec.properties} if spec.properties is not None else {}
            nested_required = tuple(p.name for p in spec.properties or () if p.required)
            compiled.append(_CompiledField(spec, resolve, props, nested_required))
        if errors:
            raise ValueError("; ".join(errors))
        self._fields = tuple(compiled)
        self._required = tuple(f.name for f in fields if f.required)

    def apply(self, event: Mapping[str, Any]) -> dict[str, Any]:
        """The payload for ``event``; raises :class:`MappingError` in the reference's words."""
        out: dict[str, Any] = {}
        problems: list[str] | None = None  # per-field problems, in field order
        for cf in self._fields:
            spec = cf.spec
            value = cf.resolve(event)
            if value is MISSING:
                continue
            if value is None:
                if spec.allow_null:
                    out[spec.name] = None
                continue  # removeEmptyValues: null is dropped where the field does not take it
            if type(value) is str:
                if not value:
                    continue  # "" is dropped at the top level only
                if spec.type == "string":
                    out[spec.name] = value
                    continue
            if spec.type == "string":
                coerced = coerce_string(value)
                if coerced is MISSING:
                    problems = problems if problems is not None else []
                    problems.append(_type_problem(spec, value))
                elif coerced != "":
                    out[spec.name] = coerced
                continue
            if not isinstance(value, Mapping):
                problems = problems if problems is not None else []
                problems.append(_type_problem(spec, value))
            elif spec.properties is None:
                out[spec.name] = value  # free-form: passed through untouched (no copy)
            else:
                out[spec.name], nested_problems = _declared_object(cf, value)
                if nested_problems:
                    problems = problems if problems is not None else []
                    problems.extend(nested_problems)
        missing = [name for name in self._required if name not in out]
        if missing or problems:
            # ajv reports the root's `required` keyword before the properties' own errors.
            messages = [f"The root value is missing the required field '{name}'." for name in missing]
            raise MappingError(" ".join(messages + (problems or [])))
        return out


def _type_problem(spec: Field, value: Any) -> str:
    return f"{spec.label} must be {spec.type_phrase()} but it was {js_type_phrase(value)}."


def _declared_object(cf: _CompiledField, value: Mapping[str, Any]) -> tuple[dict[str, Any], list[str] | None]:
    """A new dict with the declared properties of ``value`` only (the input is not mutated)."""
    props = cf.props
    obj: dict[str, Any] = {}
    type_problems: list[str] | None = None
    for key, item in value.items():
        nested = props.get(key)
        if nested is None:
            continue  # ajv removeAdditional: undeclared keys are removed
        if item is None:
            if nested.allow_null:
                obj[key] = None
            continue
        if nested.type == "string":
            if type(item) is str:
                obj[key] = item  # a nested "" is kept, as in the reference
                continue
            coerced = coerce_string(item)
            if coerced is not MISSING:
                obj[key] = coerced
                continue
        elif isinstance(item, Mapping):
            obj[key] = item
            continue
        type_problems = type_problems if type_problems is not None else []
        type_problems.append(_type_problem(nested, item))
    # A required property that is "" is missing (the reference keeps a nested "" and would send
    # `source_id: ""` for `userId: ""`, an accident not reproduced: docs/choices.md).
    missing = [name for name in cf.nested_required if obj.get(name, "") == ""]
    if missing:
        # Within the object too, ajv reports `required` before the properties' types.
        label = cf.spec.label
        return obj, [f"{label} is missing the required field '{name}'." for name in missing] + (
            type_problems or []
        )
    return obj, type_problems


# ---------------------------------------------------------------------------------------------
# Validation of user mappings against field declarations


def check_field_mapping(spec: Field, value: Any, where: str) -> list[str]:
    """Problems with ``value`` as the mapping of ``spec`` (start-up validation, not per event)."""
    errors: list[str] = []
    compile_mapping(value, where, errors)
    if errors:
        return errors
    if is_directive(value) or value is None:
        return errors
    # A raw (literal) value: its shape must suit the field, or every event would fail.
    if spec.type == "string":
        if isinstance(value, Mapping) or (isinstance(value, list) and len(value) != 1):
            errors.append(f"{where}: must be a string (or a directive), not {js_type_phrase(value)}")
        return errors
    if not isinstance(value, Mapping):
        errors.append(f"{where}: must be a table (or a directive), not {js_type_phrase(value)}")
        return errors
    if spec.properties is not None:
        known = spec.property_names
        for key in value:
            if key not in known:
                errors.append(f"{where}.{key}: unknown property of {spec.label} (known: {', '.join(known)})")
            else:
                nested = next(p for p in spec.properties if p.name == key)
                errors.extend(check_field_mapping(nested, value[key], f"{where}.{key}"))
        for p in spec.properties:
            if p.required and p.name not in value:
                errors.append(f"{where}: {spec.label} needs a mapping for its required property '{p.name}'")
    return errors
