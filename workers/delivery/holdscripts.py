"""The hold window's storage (workers.delivery.holds): its Lua (hold, take, release), its items.

A customer's held upserts are one field of the connection's ``{p}held:{c}`` hash (the items'
JSON, one per line, oldest first), not a list key per customer: a key costs Redis ~150 B of its
own (key, object, list header and node) and 2,000 customers of one batch made 2,000 of them
(SPEC 16: a batch's per-event records near the event's own size).  Two cases still use the
customer's list ``{p}hold:{c}:{customer}``, always read after the field (it holds the newer
items): a customer whose field passed ``MAX_FIELD_BYTES`` (appending rewrites the field: the
list bounds that cost), and lists written by a version before the hash (an upgrade keeps them;
while one exists, new items go behind it so that order is kept).
"""

from __future__ import annotations

from typing import Any, cast

import orjson

from connector.contract import DeliveryItem
from connector.lua import Lua

# Past this, a customer's further held items go to its list (each append rewrites the field).
MAX_FIELD_BYTES = 64 * 1024

# KEYS: the connection's zset, the index, the held hash.  ARGV: window ms, connection id, index
# head, max field bytes, then per customer: customer, list key, n, item1..itemn.  Returns each
# customer's due (ms).
HOLD = Lua(
    """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local due = now + tonumber(ARGV[1])
local most = tonumber(ARGV[4])
redis.call('HSET', KEYS[2], ARGV[2], ARGV[3])
local i, dues = 5, {}
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

# What one customer holds, removed: (its items as parts of a JSON array, how many, the raw
# parts: a field's lines as one).  KEYS[held] is the held hash's index in KEYS.
_TAKE_ONE = """
local function take_one(held_hash, customer, key, zset)
  local parts, raws, n = {}, {}, 0
  local field = redis.call('HGET', held_hash, customer)
  if field then
    local joined, lines = string.gsub(field, '\\n', ',')
    parts[1], raws[1], n = joined, field, lines + 1
    redis.call('HDEL', held_hash, customer)
  end
  local listed = redis.call('LRANGE', key, 0, -1)
  for _, raw in ipairs(listed) do
    parts[#parts + 1], raws[#raws + 1], n = raw, raw, n + 1
  end
  if #listed > 0 then redis.call('DEL', key) end
  redis.call('ZREM', zset, customer)
  return parts, raws, n
end
"""

# TAKE: KEYS: the connection's zset, delayed zset, delayed hash, held hash.  ARGV: entry id,
# entry head (JSON up to the items), lease ms, then per customer: customer, list key, out key.
# Returns {entry id or '', raw parts (a part may be several lines)..., '|', busy customers...}.
TAKE = Lua(
    _TAKE_ONE
    + """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local parts, raws, busy = {}, {}, {}
for i = 4, #ARGV, 3 do
  local customer, key, out = ARGV[i], ARGV[i + 1], ARGV[i + 2]
  if redis.call('EXISTS', out) == 1 then
    busy[#busy + 1] = customer
  else
    local p, r, n = take_one(KEYS[4], customer, key, KEYS[1])
    for _, x in ipairs(p) do parts[#parts + 1] = x end
    for _, x in ipairs(r) do raws[#raws + 1] = x end
  end
end
local out = {}
if #parts > 0 then
  local due = now + tonumber(ARGV[3])
  local entry = ARGV[2] .. ',"items":[' .. table.concat(parts, ',') .. '],"due":' .. (due / 1000) .. ',"reason":"held"}'
  redis.call('HSET', KEYS[3], ARGV[1], entry)
  redis.call('ZADD', KEYS[2], due, ARGV[1])
  out[1] = ARGV[1]
else
  out[1] = ''
end
for _, raw in ipairs(raws) do out[#out + 1] = raw end
out[#out + 1] = '|'
for _, c in ipairs(busy) do out[#out + 1] = c end
return out
"""
)

# RELEASE one connection's due customers.  KEYS: the connection's zset, delayed zset, delayed
# hash, the index, the held hash.  ARGV: connection id, key prefix, entry id base, max
# customers, max items per entry, out marker ms, recheck ms.  Each item carries its "held" flag.
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
local entries, batch, count, released = 0, {}, 0, 0
local function emit()
  if #batch == 0 then return end
  entries = entries + 1
  local id = ARGV[3] .. '-' .. entries
  local entry = head .. ',"items":[' .. table.concat(batch, ',') .. '],"due":' .. (now / 1000) .. ',"reason":"held"}'
  redis.call('HSET', KEYS[3], id, entry)
  redis.call('ZADD', KEYS[2], now, id)
  batch, count = {}, 0
end
for _, customer in ipairs(due) do
  local out = prefix .. 'holdout:' .. cid .. ':' .. customer
  if redis.call('EXISTS', out) == 1 then
    redis.call('ZADD', KEYS[1], now + tonumber(ARGV[7]), customer)
  else
    local parts, _, n = take_one(KEYS[5], customer, prefix .. 'hold:' .. cid .. ':' .. customer, KEYS[1])
    if n > 0 then
      if count + n > tonumber(ARGV[5]) then emit() end
      for _, part in ipairs(parts) do batch[#batch + 1] = part end
      count = count + n
      redis.call('SET', out, 'released', 'PX', tonumber(ARGV[6]))
      released = released + 1
    end
  end
end
emit()
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


def held_items(raw: bytes | str) -> list[DeliveryItem]:
    """Held items from a stored part: one JSON item per line, defaults filled back in."""
    text = raw.encode() if isinstance(raw, str) else raw
    lines = [line for line in text.split(b"\n") if line]
    return [cast(DeliveryItem, {**_DEFAULTS, "history": [], **orjson.loads(line)}) for line in lines]
