"""The hold window's storage (workers.delivery.holds): its Lua (hold, take, release), its items.

A customer's held upserts are one field of the connection's ``{p}held:{c}`` hash (the items'
JSON, one per line, oldest first), not a list key per customer: a key costs Redis ~150 B of its
own (key, object, list header and node) and 2,000 customers of one batch made 2,000 of them
(SPEC 16: a batch's per-event records near the event's own size).  Two cases still use the
customer's list ``{p}hold:{c}:{customer}``, always read after the field (it holds the newer
items): a customer whose field passed ``MAX_FIELD_BYTES`` (appending rewrites the field: the
list bounds that cost), and lists written by a version before the hash (an upgrade keeps them;
while one exists, new items go behind it so that order is kept).  A list this version starts
is marked in ``{p}heldlist:{c}`` (customer -> 1, while it may exist), so that holding a customer
again needs no look for it: Redis counts commands, and every identify is held.

A line leaves out what the items of its batch repeat (``lines``): they refer to a base in
``{p}heldbase:{c}`` (reference -> text, ``n:``reference -> lines referring it), which the
scripts put back when the items leave the hold (TAKE, RELEASE, DROP) and delete with the last
line referring it.  Lines without a base (an older version's, or a shape it cannot shorten)
are read as they are.
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any, cast

import orjson

from connector.contract import DeliveryItem
from connector.lua import Lua

# Past this, a customer's further held items go to its list (each append rewrites the field).
MAX_FIELD_BYTES = 64 * 1024

# The scripts (workers/delivery/lua/hold_*.lua name their keys and arguments): HOLD items, TAKE
# customers into an entry, DROP a customer's items (a forgotten subject, SPEC 14), RELEASE the due
# customers, MARK a bulk's customers ``sending`` and DEL_IF (``out`` markers still as set).  hold_take_one.lua is their library
# (what one customer holds, removed), hold_release_batch.lua RELEASE's (its entries).
_LUA = Path(__file__).parent / "lua"
HOLD = Lua.files(_LUA, "hold_hold.lua")
TAKE = Lua.files(_LUA, "hold_take_one.lua", "hold_take.lua")
DROP = Lua.files(_LUA, "hold_take_one.lua", "hold_drop.lua")
RELEASE = Lua.files(_LUA, "hold_take_one.lua", "hold_release_batch.lua", "hold_release.lua")
MARK = Lua.files(_LUA, "hold_mark.lua")
DEL_IF = Lua.files(_LUA, "hold_del_if.lua")


# An item's fields at these values are left out of the hold (``.get`` reads them back alike):
# with thousands of customers held at once, they were ~90 B of every one's record.
_DEFAULTS: dict[str, Any] = {
    "first_attempt_at": None,
    "attempts": 0,
    "history": [],
    "last_delay": None,
    "parked": False,
}


def compact(item: DeliveryItem) -> dict[str, Any]:
    """``item`` as held: its fields at their defaults left out."""
    return {k: v for k, v in item.items() if k not in _DEFAULTS or v != _DEFAULTS[k]}


# What the items of one task's batch repeat (when they were received, their batch objects, the
# request's method, path, action and headers): stored once per connection as a base the lines
# refer to, counted, and made whole again by the scripts when the items leave the hold.
# ``replay`` first: a held line made whole again starts with it (the RELEASE script looks there).
_BASE_TOP = ("replay", "received_at", "backlog", "shared", "held")
_BASE_REQUEST = ("method", "path", "action", "headers")


def lines(items: list[DeliveryItem], bases: dict[str, list[Any]]) -> list[bytes]:
    """``items`` as held lines; the bases they refer to added to ``bases`` (reference ->
    [text, items referring it])."""
    out = []
    for item in items:
        data = compact(item)
        request = dict(data.pop("request", None) or {})
        top = {k: data.pop(k) for k in _BASE_TOP if k in data}
        common = {k: request.pop(k) for k in _BASE_REQUEST if k in request}
        if not (top and common and request and data):  # the line's shape needs all four
            out.append(orjson.dumps(compact(item)))
            continue
        text = orjson.dumps(top)[1:-1] + b"\n" + orjson.dumps(common)[1:-1]
        ref = "b" + hashlib.sha256(text).hexdigest()[:16]
        bases.setdefault(ref, [text, 0])[1] += 1
        rest = orjson.dumps(data)[1:-1]
        out.append(
            b'{"b":"' + ref.encode() + b'","request":{' + orjson.dumps(request)[1:-1] + b"}," + rest + b"}"
        )
    return out


def held_items(raw: bytes | str) -> list[DeliveryItem]:
    """Held items as the scripts return them (whole: one JSON item per line), defaults filled back in."""
    text = raw.encode() if isinstance(raw, str) else raw
    found = [line for line in text.split(b"\n") if line]
    return [cast(DeliveryItem, {**_DEFAULTS, "history": [], **orjson.loads(line)}) for line in found]
