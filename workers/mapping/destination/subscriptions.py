"""Subscriptions: which action runs for which event, with which field mapping (SPEC 3.1, 3.4).

A connection has the default subscriptions (the reference's presets) plus up to 50 custom ones::

    [[connection.destination.mapping]]
    name = "Orders"                                   # optional; shows in idempotency keys
    trigger = 'type = "track" and event = "Order Completed"'
    action = "add_custom_event"   # upsert_customer | add_custom_event | assign_customer_to_group
    [connection.destination.mapping.fields]           # optional; other fields keep the defaults
    event = "order_completed"
    metadata = { "@path" = "$.properties" }

The trigger language is :mod:`.triggers`; how subscriptions route events is :mod:`.routing`.
Every problem with a subscription is a configuration error that names it (index and name).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Final

from connector.errors import ConfigError
from workers.mapping.destination.actions import (
    ACTION_ALIASES,
    ACTIONS,
    MAPPED_TYPES,
    PRESET_NAMES,
    PRESETS,
    Action,
)
from workers.mapping.destination.fields import check_field_mapping
from workers.mapping.destination.triggers import Node, TriggerError, covered_types, parse_trigger

SUBSCRIPTION_KEYS: Final = ("name", "trigger", "action", "fields")


def subscription_label(raw: Any, index: int) -> str:
    """``mapping[3]`` or ``mapping[3] ("Orders")``: how errors name a custom subscription."""
    name = raw.get("name") if isinstance(raw, Mapping) else None
    return f"mapping[{index}] ({name!r})" if isinstance(name, str) and name.strip() else f"mapping[{index}]"


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
        raise ConfigError(f"{subscription_label(raw, index)}: " + "; ".join(errors))
    node = parse_trigger(raw["trigger"])
    action = ACTIONS[ACTION_ALIASES[raw["action"]]]
    return Subscription(
        index, raw.get("name"), action, node, dict(raw.get("fields", {})), covered_types(node)
    )


def preset_subscriptions() -> list[Subscription]:
    return [
        Subscription(None, preset.name, ACTIONS[preset.action], None, preset.overrides, (t,))
        for t, preset in PRESETS.items()
    ]


__all__ = [
    "PRESET_NAMES",
    "Subscription",
    "TriggerError",
    "parse_subscription",
    "preset_subscriptions",
    "subscription_label",
    "validate_subscription",
]
