-- TAKE customers out of the hold into one delayed entry, due after a lease
-- (workers.delivery.holds).  Customers with a bulk still out (their ``out`` marker) stay held
-- and are answered busy.  Atomic: an item is in the hold or in the entry, never both or
-- neither.  Needs hold_take_one.lua before it.
--
-- KEYS[1]  zset: the connection's held customers (customer -> due, ms)
-- KEYS[2]  delayed: the delayed zset (entry id -> due, ms)
-- KEYS[3]  delayed_data: the delayed hash (entry id -> entry JSON)
-- KEYS[4]  held: the connection's held hash
-- KEYS[5]  bases: the connection's bases hash
-- ARGV[1]  entry_id: the new entry's id
-- ARGV[2]  head: the entry head (JSON up to the items)
-- ARGV[3]  lease_ms: the entry's due from now (ms)
-- ARGV[4..]  per customer: customer, list key, out key
-- Returns {entry id or '', items..., '|', busy customers...}.
local zset, delayed, delayed_data, held, bases = KEYS[1], KEYS[2], KEYS[3], KEYS[4], KEYS[5]
local entry_id, head, lease_ms = ARGV[1], ARGV[2], ARGV[3]
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local items, busy, cache, used = {}, {}, {}, {}
for i = 4, #ARGV, 3 do
  local customer, key, out = ARGV[i], ARGV[i + 1], ARGV[i + 2]
  if redis.call('EXISTS', out) == 1 then
    busy[#busy + 1] = customer
  else
    for _, item in ipairs(take_one(held, bases, customer, key, zset, cache, used)) do
      items[#items + 1] = item
    end
  end
end
release_bases(bases, used)
local out = {}
if #items > 0 then
  local due = now + tonumber(lease_ms)
  local entry = head .. ',"items":[' .. table.concat(items, ',') .. '],"due":' .. (due / 1000) .. ',"reason":"held"}'
  redis.call('HSET', delayed_data, entry_id, entry)
  redis.call('ZADD', delayed, due, entry_id)
  out[1] = entry_id
else
  out[1] = ''
end
for _, item in ipairs(items) do out[#out + 1] = item end
out[#out + 1] = '|'
for _, c in ipairs(busy) do out[#out + 1] = c end
return out
