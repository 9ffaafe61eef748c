-- TAKE customers out of the hold into one delayed entry, due after a lease
-- (workers.delivery.holds).  Customers with a bulk still out (their ``out`` marker) stay held
-- and are answered busy.  Atomic: an item is in the hold or in the entry, never both or
-- neither.  Needs hold_take_one.lua before it.  Two commands per thousand customers, not
-- four per customer: most hold nothing (a custom event's customer seldom has upserts held).
--
-- KEYS[1]  zset: the connection's held customers (customer -> due, ms)
-- KEYS[2]  delayed: the delayed zset (entry id -> due, ms)
-- KEYS[3]  delayed_data: the delayed hash (entry id -> entry JSON)
-- KEYS[4]  held: the connection's held hash
-- KEYS[5]  bases: the connection's bases hash
-- KEYS[6]  lists: the connection's list marks
-- ARGV[1]  entry_id: the new entry's id
-- ARGV[2]  head: the entry head (JSON up to the items)
-- ARGV[3]  lease_ms: the entry's due from now (ms)
-- ARGV[4..]  per customer: customer, list key, out key
-- Returns {entry id or '', items..., '|', busy customers...}.
local zset, delayed, delayed_data, held, bases, marks = KEYS[1], KEYS[2], KEYS[3], KEYS[4], KEYS[5], KEYS[6]
local entry_id, head, lease_ms = ARGV[1], ARGV[2], ARGV[3]
local items, busy, cache, used = {}, {}, {}, {}
-- Who is held (ZMSCORE: held items always have their due) and who has a marker (MGET).
local customers, outs = {}, {}
for i = 4, #ARGV, 3 do
  customers[#customers + 1] = ARGV[i]
  outs[#outs + 1] = ARGV[i + 2]
end
local dues, marked = {}, {}
for c = 1, #customers, 1000 do -- in chunks, under Lua's unpack limit
  local e = math.min(c + 999, #customers)
  for j, d in ipairs(redis.call('ZMSCORE', zset, unpack(customers, c, e))) do dues[c + j - 1] = d end
  for j, m in ipairs(redis.call('MGET', unpack(outs, c, e))) do marked[c + j - 1] = m end
end
local taking, lists = {}, {}
for j, customer in ipairs(customers) do
  if marked[j] then
    busy[#busy + 1] = customer
  elseif dues[j] then
    taking[#taking + 1], lists[#lists + 1] = customer, ARGV[3 * j + 2]
  end
end
for _, mine in ipairs(take_many(held, marks, bases, taking, lists, zset, cache, used)) do
  for _, item in ipairs(mine) do items[#items + 1] = item end
end
release_bases(bases, used)
local out = {}
if #items > 0 then
  local t = redis.call('TIME')
  local due = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000) + tonumber(lease_ms)
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
