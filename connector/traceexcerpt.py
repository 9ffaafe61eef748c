"""What a trace keeps of ids, errors and Voucherify's answers (:mod:`connector.trace`): short,
and without customer data beyond ids."""

from __future__ import annotations

import re
from typing import Any, Final

import orjson

EXCERPT_CHARS: Final = 300
MAX_ID_CHARS: Final = 200
NON_JSON_CHARS: Final = 80


def clean_id(event_id: Any) -> str | None:
    if event_id is None or event_id == "":
        return None
    return str(event_id)[:MAX_ID_CHARS]


def excerpt(text: str | None) -> str | None:
    if not text:
        return None
    return text if len(text) <= EXCERPT_CHARS else text[:EXCERPT_CHARS] + "…"


# What an answer excerpt keeps of a JSON answer: its error fields and ids (a field named ``id``
# or ending in ``_id``).  Everything else -- a customer's name, email, address, metadata, the
# echo of what was sent -- is left out: a trace is kept for a day and shown on the status page.
_ANSWER_FIELDS: Final = frozenset(
    {"code", "key", "message", "details", "status", "error", "error_code", "request_id", "object", "errors"}
)
_EMAIL = re.compile(r"[^\s@\"'<>]+@[^\s@\"'<>]+")
_DIGITS = re.compile(r"\d{5,}")


def _kept(value: Any, depth: int = 0) -> Any:
    if depth > 4:
        return None
    if isinstance(value, dict):
        out: dict[str, Any] = {}
        for key, item in value.items():
            name = str(key)
            wanted = name in _ANSWER_FIELDS or name == "id" or name.endswith("_id")
            if wanted and (isinstance(item, str | int | float | bool) or item is None):
                out[name] = item if not isinstance(item, str) else item[:200]
                continue
            kept = _kept(item, depth + 1) if isinstance(item, dict | list) else None
            if kept:
                out[name] = kept
        return out or None
    if isinstance(value, list):
        items = [k for k in (_kept(v, depth + 1) for v in value[:10]) if k]
        return items or None
    return None


def answer_excerpt(text: str | None) -> str | None:
    """An answer as a trace keeps it: for JSON, its error fields and ids only; for anything
    else, a short start with emails and long digit runs masked."""
    if not text:
        return None
    try:
        data = orjson.loads(text)
    except orjson.JSONDecodeError:
        short = _DIGITS.sub("<digits>", _EMAIL.sub("<email>", text[: NON_JSON_CHARS * 2]))
        return excerpt(short[:NON_JSON_CHARS] + ("…" if len(text) > NON_JSON_CHARS else ""))
    kept = _kept(data)
    return excerpt(orjson.dumps(kept).decode()) if kept else "(JSON without error fields or ids)"
