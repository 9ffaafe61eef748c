"""The hold window's storage (workers.delivery.holds): its Lua (hold, take, release), its items.

A customer's held upserts are one field of the connection's ``{p}held:{c}`` hash (the items'
JSON, one per line, oldest first), not a list key per customer: a key costs Redis ~150 B of its
own (key, object, list header and node) and 2,000 customers of one batch made 2,000 of them
(SPEC 16: a batch's per-event records near the event's own size).  Two cases still use the
customer's list ``{p}hold:{c}:{customer}``, always read after the field (it holds the newer
items): a customer whose field passed ``MAX_FIELD_BYTES`` (appending rewrites the field: the
list bounds that cost), and lists written by a version before the hash (an upgrade keeps them;
while one exists, new items go behind it so that order is kept).

A line leaves out what the items of its batch repeat (``lines``): they refer to a base in
``{p}heldbase:{c}`` (reference -> text, ``n:``reference -> lines referring it), which the
scripts put back when the items leave the hold (TAKE, RELEASE, DROP) and delete with the last
line referring it.  Lines without a base (an older version's, or a shape it cannot shorten)
are read as they are.
"""

from __future__ import annotations

import hashlib
from typing import Any, cast

import orjson

from connector.contract import DeliveryItem
from connector.lua import Lua

# Past this, a customer's further held items go to its list (each append rewrites the field).
MAX_FIELD_BYTES = 64 * 1024

# KEYS: the connection's zset, the index, the held hash, the bases hash.  ARGV: window ms,
# connection id, index head, max field bytes, number of bases, align ms (0: none), then per
# base: reference, text, items referring it; then per customer: customer, list key, n,
# line1..linen.  Returns each customer's due (ms).  ``align``: the due rounded up to a multiple
# of it, so that customers held over a stretch of that long fall due at the same instant.
HOLD = Lua(
    """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local due, align = now + tonumber(ARGV[1]), tonumber(ARGV[6])
if align > 0 then due = math.ceil(due / align) * align end
local most = tonumber(ARGV[4])
redis.call('HSET', KEYS[2], ARGV[2], ARGV[3])
local i, dues = 7, {}
for _ = 1, tonumber(ARGV[5]) do
  redis.call('HSETNX', KEYS[4], ARGV[i], ARGV[i + 1])
  redis.call('HINCRBY', KEYS[4], 'n:' .. ARGV[i], tonumber(ARGV[i + 2]))
  i = i + 3
end
while i <= #ARGV do
  local customer, key, n = ARGV[i], ARGV[i + 1], tonumber(ARGV[i + 2])
  local cur = redis.call('HGET', KEYS[3], customer)
  if redis.call('EXISTS', key) == 1 or (cur and string.len(cur) > most) then
    for j = 1, n do redis.call('RPUSH', key, ARGV[i + 2 + j]) end
  else
    local mine = {}
    if cur then mine[1] = cur end
    for j = 1, n do mine[#mine + 1] = ARGV[i + 2 + j] end
    redis.call('HSET', KEYS[3], customer, table.concat(mine, '\\n'))
  end
  redis.call('ZADD', KEYS[1], 'NX', due, customer)
  dues[#dues + 1] = redis.call('ZSCORE', KEYS[1], customer)
  i = i + 3 + n
end
return dues
"""
)

# What one customer holds, removed: its items' JSON (a line with a base made whole again), in
# order, the field's before the list's.  ``used`` counts the bases' references given up
# (``release_bases`` once per call).
_TAKE_ONE = """
local function expand(bases, line, cache, used)
  local ref, tail = string.match(line, '^{"b":"([^"]+)","request":{(.*)$')
  if not ref then return line end
  if cache[ref] == nil then cache[ref] = redis.call('HGET', bases, ref) or false end
  used[ref] = (used[ref] or 0) + 1
  local base = cache[ref]
  if not base then return line end
  local nl = string.find(base, '\\n', 1, true)
  return '{' .. string.sub(base, 1, nl - 1) .. ',"request":{' .. string.sub(base, nl + 1) .. ',' .. tail
end
local function take_one(held_hash, bases, customer, key, zset, cache, used)
  local items = {}
  local field = redis.call('HGET', held_hash, customer)
  if field then
    for line in string.gmatch(field, '[^\\n]+') do items[#items + 1] = expand(bases, line, cache, used) end
    redis.call('HDEL', held_hash, customer)
  end
  local listed = redis.call('LRANGE', key, 0, -1)
  for _, line in ipairs(listed) do items[#items + 1] = expand(bases, line, cache, used) end
  if #listed > 0 then redis.call('DEL', key) end
  redis.call('ZREM', zset, customer)
  return items
end
local function release_bases(bases, used)
  for ref, n in pairs(used) do
    if redis.call('HINCRBY', bases, 'n:' .. ref, -n) <= 0 then
      redis.call('HDEL', bases, ref, 'n:' .. ref)
    end
  end
end
"""

# TAKE: KEYS: the connection's zset, delayed zset, delayed hash, held hash, bases hash.  ARGV:
# entry id, entry head (JSON up to the items), lease ms, then per customer: customer, list key,
# out key.  Returns {entry id or '', items..., '|', busy customers...}.
TAKE = Lua(
    _TAKE_ONE
    + """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local items, busy, cache, used = {}, {}, {}, {}
for i = 4, #ARGV, 3 do
  local customer, key, out = ARGV[i], ARGV[i + 1], ARGV[i + 2]
  if redis.call('EXISTS', out) == 1 then
    busy[#busy + 1] = customer
  else
    for _, item in ipairs(take_one(KEYS[4], KEYS[5], customer, key, KEYS[1], cache, used)) do
      items[#items + 1] = item
    end
  end
end
release_bases(KEYS[5], used)
local out = {}
if #items > 0 then
  local due = now + tonumber(ARGV[3])
  local entry = ARGV[2] .. ',"items":[' .. table.concat(items, ',') .. '],"due":' .. (due / 1000) .. ',"reason":"held"}'
  redis.call('HSET', KEYS[3], ARGV[1], entry)
  redis.call('ZADD', KEYS[2], due, ARGV[1])
  out[1] = ARGV[1]
else
  out[1] = ''
end
for _, item in ipairs(items) do out[#out + 1] = item end
out[#out + 1] = '|'
for _, c in ipairs(busy) do out[#out + 1] = c end
return out
"""
)

# DROP one customer's held items (a forgotten subject, SPEC 14).  KEYS: the connection's zset,
# held hash, bases hash.  ARGV: customer, list key.  Returns the items.
DROP = Lua(
    _TAKE_ONE
    + """
local cache, used = {}, {}
local items = take_one(KEYS[2], KEYS[3], ARGV[1], ARGV[2], KEYS[1], cache, used)
release_bases(KEYS[3], used)
return items
"""
)

# RELEASE one connection's due customers.  KEYS: the connection's zset, delayed zset, delayed
# hash, the index, the held hash, the bases hash.  ARGV: connection id, key prefix, entry id
# base, max customers, max items per entry, out marker ms, recheck ms, max customers per
# replay entry, max items per replay entry.  Each item carries its "held" flag.  A customer
# whose first item starts with the replay mark (``new_item`` puts it first) goes into entries
# of their own, with bounds of their own: one such entry is what one big bulk of a backfill is
# made of.
RELEASE = Lua(
    _TAKE_ONE
    + """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local cid, prefix = ARGV[1], ARGV[2]
local head = redis.call('HGET', KEYS[4], cid)
local due = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', now, 'LIMIT', 0, tonumber(ARGV[4]))
if not head then
  if redis.call('ZCARD', KEYS[1]) == 0 then return 0 end
  return -1
end
local entries, released, cache, used = 0, 0, {}, {}
local live, replay = {items = {}, n = 0}, {items = {}, n = 0}
local function emit(b)
  if #b.items == 0 then return end
  entries = entries + 1
  local id = ARGV[3] .. '-' .. entries
  local entry = head .. ',"items":[' .. table.concat(b.items, ',') .. '],"due":' .. (now / 1000) .. ',"reason":"held"}'
  redis.call('HSET', KEYS[3], id, entry)
  redis.call('ZADD', KEYS[2], now, id)
  b.items, b.n = {}, 0
end
for _, customer in ipairs(due) do
  local out = prefix .. 'holdout:' .. cid .. ':' .. customer
  if redis.call('EXISTS', out) == 1 then
    redis.call('ZADD', KEYS[1], now + tonumber(ARGV[7]), customer)
  else
    local key = prefix .. 'hold:' .. cid .. ':' .. customer
    local items = take_one(KEYS[5], KEYS[6], customer, key, KEYS[1], cache, used)
    if #items > 0 then
      local b, most = live, tonumber(ARGV[5])
      if string.sub(items[1], 1, 15) == '{"replay":true,' then b, most = replay, tonumber(ARGV[9]) end
      if #b.items + #items > most or b.n >= tonumber(ARGV[8]) then emit(b) end
      for _, item in ipairs(items) do b.items[#b.items + 1] = item end
      b.n = b.n + 1
      redis.call('SET', out, 'released', 'PX', tonumber(ARGV[6]))
      released = released + 1
    end
  end
end
emit(live)
emit(replay)
release_bases(KEYS[6], used)
return released
"""
)

DEL_IF = Lua(
    """
for _, key in ipairs(KEYS) do
  if redis.call('GET', key) == ARGV[1] then redis.call('DEL', key) end
end
return 0
"""
)


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
