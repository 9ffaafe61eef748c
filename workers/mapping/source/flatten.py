"""Flattening and size rules for the Segment track calls built from Voucherify events (SPEC 4.3).

Flattening
    Each event object (``order``, ``voucher``, ``redemption``...) becomes one property holding a
    flat object, so a track call is never nested deeper than ``properties.<object>.<field>``:

    * nested objects are folded into ``parent_child`` keys: ``voucher.discount.percent_off`` ->
      ``properties.voucher.discount_percent_off``; ``order.metadata.region`` ->
      ``properties.order.metadata_region``.  A key the object already has wins over a folded one
      (``order.customer_id`` beats ``order.customer.id`` folded into the same name);
    * arrays of objects are kept only as ``<name>_count`` and, when their elements have ids,
      ``<name>_ids``; objects keyed by Voucherify ids (``order.redemptions`` is
      ``{"r_0e29...": {...}}``) are treated the same way, rather than becoming one column per id;
    * arrays of scalars are kept as they are; empty arrays, empty objects and ``null`` values are
      left out (a warehouse cannot tell them from a missing key anyway);
    * a nested copy of an object the call already carries in full (``redemption.order`` when the
      event also has ``order`` with the same id, ``publication.customer``) is reduced to
      ``<name>_id``: the same data once, not three times.

Size
    Segment refuses events over 32 KB.  The budget is 31 KB of compact, ASCII-escaped JSON (an
    upper bound of what any JSON encoder produces), leaving room for what the batcher adds.  A
    call over the budget is shrunk deterministically:

    1. every string longer than 256 characters is cut to 256, every scalar array longer than 50
       items to its first 50;
    2. if still too large, property fields are dropped, largest serialized size first (ties by
       name), never the protected ones (``email``, ``customer``, ``campaign.id/name``, the event
       id and type), until the call fits with room for a note;
    3. ``context.truncation`` then records what was done (counts and the first dropped fields).

    If it still cannot fit (a gigantic user id), :class:`~connector.errors.MappingError`.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Mapping
from typing import Any, Final

from connector.contract import SEGMENT_MAX_EVENT_BYTES
from connector.errors import MappingError

TRACK_BYTES_BUDGET: Final = SEGMENT_MAX_EVENT_BYTES - 1024
SHORT_STRING: Final = 256
SHORT_LIST: Final = 50
# Room kept for context.truncation when fields had to be dropped.
_NOTE_RESERVE: Final = 1024
_NOTE_MAX_PATHS: Final = 10
_NOTE_MAX_PATH_LENGTH: Final = 64
# Voucherify data is shallow; deeper structures (only from custom metadata) are cut here rather
# than producing keys hundreds of characters long.
MAX_FOLD_DEPTH: Final = 6

# A Voucherify id used as a key: a short lower-case prefix, "_", then 10+ characters with a digit
# (r_0e2905d4e6985a04b5, ern_FQxftbKUq9E93k00Z3qkC0sX).  Ordinary keys (order_details) do not match.
_ID_KEY = re.compile(r"^[a-z]{1,10}_(?=[A-Za-z0-9]*[0-9])[A-Za-z0-9]{10,}$")

Scalar = str | int | float | bool


def flatten_object(obj: Mapping[str, Any], known: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """One event object as a flat mapping of scalars and scalar arrays.

    ``known`` maps names of objects sent in full elsewhere to their ids: a nested object of that
    name and id is reduced to ``<name>_id``.
    """
    out: dict[str, Any] = {}
    _fold(obj, "", out, 1, known or {})
    return out


def flatten_properties(
    objects: Iterable[tuple[str, Any]], known: Mapping[str, Any] | None = None
) -> dict[str, Any]:
    """Top-level properties from ``(name, value)`` pairs: objects flattened, arrays summarised."""
    known = known or {}
    out: dict[str, Any] = {}
    for key, value in objects:
        if value is None:
            continue
        if isinstance(value, Mapping):
            if _is_id_keyed(value):
                _put_collection(key, list(value.keys()), len(value), out)
                continue
            flat = flatten_object(value, known)
            if flat:
                out.setdefault(key, flat)
        elif isinstance(value, list):
            _put_list(key, value, out)
        elif isinstance(value, Scalar):
            out.setdefault(key, value)
    return out


def serialized_size(value: Any) -> int:
    """Bytes of ``value`` as compact JSON with non-ASCII escaped: an upper bound for any encoder."""
    return len(json.dumps(value, separators=(",", ":"), ensure_ascii=True))


def fit_track(
    track: dict[str, Any],
    *,
    budget: int = TRACK_BYTES_BUDGET,
    protected: frozenset[tuple[str, ...]] = frozenset(),
) -> dict[str, Any]:
    """``track`` itself when it fits ``budget``; otherwise a shrunk copy (see the module doc).

    ``protected`` holds property paths never dropped: ``("customer",)`` protects the whole
    object, ``("campaign", "id")`` one field.
    """
    if serialized_size(track) <= budget:
        return track
    properties: dict[str, Any] = {
        key: dict(value) if isinstance(value, dict) else value
        for key, value in track.get("properties", {}).items()
    }
    shortened_strings, shortened_lists = _shorten(properties)
    shrunk = {**track, "properties": properties}
    size = serialized_size(shrunk)
    dropped: list[str] = []
    # Measured against the budget less room for the note, so adding the note never overflows.
    if size > budget - _NOTE_RESERVE:
        dropped = _drop_largest(shrunk, properties, budget - _NOTE_RESERVE, protected)
    note: dict[str, Any] = {"strings_shortened": shortened_strings, "lists_shortened": shortened_lists}
    if dropped:
        note["fields_dropped"] = len(dropped)
        note["dropped"] = [path[:_NOTE_MAX_PATH_LENGTH] for path in dropped[:_NOTE_MAX_PATHS]]
    shrunk["context"] = {**track.get("context", {}), "truncation": note}
    if serialized_size(shrunk) > budget:
        raise MappingError(
            f"the Segment track call cannot be brought under {budget} bytes (its ids are too long)"
        )
    return shrunk


# --------------------------------------------------------------------------------------------


def _fold(
    obj: Mapping[str, Any], prefix: str, out: dict[str, Any], depth: int, known: Mapping[str, Any]
) -> None:
    nested: list[tuple[str, Mapping[str, Any]]] = []
    # The object's own fields first, so they win over folded keys of the same name.
    for key, value in obj.items():
        name = f"{prefix}{key}"
        if value is None:
            continue
        if isinstance(value, Mapping):
            nested.append((key, value))
        elif isinstance(value, list):
            _put_list(name, value, out)
        elif isinstance(value, Scalar):
            out.setdefault(name, value)
    for key, value in nested:
        name = f"{prefix}{key}"
        object_id = value.get("id")
        if object_id is not None and known.get(key) == object_id:
            out.setdefault(f"{name}_id", object_id)
        elif _is_id_keyed(value):
            _put_collection(name, list(value.keys()), len(value), out)
        elif depth < MAX_FOLD_DEPTH:
            _fold(value, f"{name}_", out, depth + 1, known)


def _put_list(name: str, values: list[Any], out: dict[str, Any]) -> None:
    if not values:
        return
    if any(isinstance(v, Mapping | list) for v in values):
        ids = [v["id"] for v in values if isinstance(v, Mapping) and isinstance(v.get("id"), str | int)]
        _put_collection(name, ids, len(values), out)
    else:
        out.setdefault(name, list(values))


def _put_collection(name: str, ids: list[Any], count: int, out: dict[str, Any]) -> None:
    out.setdefault(f"{name}_count", count)
    if ids:
        out.setdefault(f"{name}_ids", ids)


def _is_id_keyed(value: Mapping[str, Any]) -> bool:
    return bool(value) and all(
        isinstance(k, str) and _ID_KEY.match(k) and isinstance(v, Mapping) for k, v in value.items()
    )


def _shorten(properties: dict[str, Any]) -> tuple[int, int]:
    """Step 1 of the size rules, in place.  Returns (strings shortened, lists shortened)."""
    counts = [0, 0]

    def short(value: Any) -> Any:
        if isinstance(value, str) and len(value) > SHORT_STRING:
            counts[0] += 1
            return value[:SHORT_STRING]
        if isinstance(value, list):
            if len(value) > SHORT_LIST:
                counts[1] += 1
                value = value[:SHORT_LIST]
            return [short(v) for v in value]
        return value

    for key, value in properties.items():
        if isinstance(value, dict):
            for sub, sub_value in value.items():
                value[sub] = short(sub_value)
        else:
            properties[key] = short(value)
    return counts[0], counts[1]


def _drop_largest(
    track: dict[str, Any],
    properties: dict[str, Any],
    target: int,
    protected: frozenset[tuple[str, ...]],
) -> list[str]:
    """Step 2 of the size rules, in place on ``properties``.  Returns the dropped paths."""
    candidates: list[tuple[int, tuple[str, ...]]] = []
    for key, value in properties.items():
        if (key,) in protected:
            continue
        if isinstance(value, dict):
            for sub, sub_value in value.items():
                if (key, sub) not in protected:
                    candidates.append((_entry_cost(sub, sub_value), (key, sub)))
        else:
            candidates.append((_entry_cost(key, value), (key,)))
    candidates.sort(key=lambda c: (-c[0], c[1]))

    dropped: list[str] = []
    size = serialized_size(track)
    index = 0
    while size > target and index < len(candidates):
        # Drop by estimate (the entry's bytes plus its comma), then measure exactly: cheap even
        # for thousands of fields, and exact where it matters.
        while size > target and index < len(candidates):
            cost, path = candidates[index]
            index += 1
            parent: dict[str, Any] = properties
            for part in path[:-1]:
                parent = parent[part]
            del parent[path[-1]]
            if len(path) == 2 and not parent:
                del properties[path[0]]
            dropped.append(".".join(path))
            size -= cost
        size = serialized_size(track)
    return dropped


def _entry_cost(key: str, value: Any) -> int:
    return serialized_size(key) + 1 + serialized_size(value) + 1
