-- Library of hold_take.lua, hold_drop.lua and hold_release.lua (workers.delivery.holdscripts):
-- what one customer holds, removed.  Local functions only; they use no KEYS or ARGV of their
-- own (the scripts pass the keys).
--
-- expand(bases, line, cache, used): a held line made whole again from the base it refers to
--   (bases: the bases hash; cache: reference -> base text, per call; used: reference -> lines).
-- take_one(held_hash, marks, bases, customer, key, zset, cache, used): the customer's items'
--   JSON, in order, the field's before the list's (key); removed from the hold (the field, the
--   list's mark in marks, the due in zset).
-- take_many(held_hash, marks, bases, customers, lists, zset, cache, used): take_one of several
--   customers (lists[j]: customers[j]'s list key), their items per customer; the fields read
--   and deleted and the dues dropped in one command each per thousand (Redis counts commands).
-- release_bases(bases, used): the references counted in `used` given up (once per call); a
--   base no line refers to any more is deleted.
local function expand(bases, line, cache, used)
  local ref, tail = string.match(line, '^{"b":"([^"]+)","request":{(.*)$')
  if not ref then return line end
  if cache[ref] == nil then cache[ref] = redis.call('HGET', bases, ref) or false end
  used[ref] = (used[ref] or 0) + 1
  local base = cache[ref]
  if not base then return line end
  local nl = string.find(base, '\n', 1, true)
  return '{' .. string.sub(base, 1, nl - 1) .. ',"request":{' .. string.sub(base, nl + 1) .. ',' .. tail
end
local function take_many(held_hash, marks, bases, customers, lists, zset, cache, used)
  local out, seen = {}, {}
  for c = 1, #customers, 1000 do
    local e = math.min(c + 999, #customers)
    local fields = redis.call('HMGET', held_hash, unpack(customers, c, e))
    for j = c, e do
      local items, field = {}, fields[j - c + 1]
      if seen[customers[j]] then field = false end -- listed twice: taken once
      for line in string.gmatch(field or '', '[^\n]+') do items[#items + 1] = expand(bases, line, cache, used) end
      local listed = redis.call('LRANGE', lists[j], 0, -1)
      for _, line in ipairs(listed) do items[#items + 1] = expand(bases, line, cache, used) end
      if #listed > 0 then redis.call('DEL', lists[j]) end
      out[j], seen[customers[j]] = items, true
    end
    redis.call('HDEL', held_hash, unpack(customers, c, e))
    redis.call('HDEL', marks, unpack(customers, c, e))
    redis.call('ZREM', zset, unpack(customers, c, e))
  end
  return out
end
local function take_one(held_hash, marks, bases, customer, key, zset, cache, used)
  return take_many(held_hash, marks, bases, {customer}, {key}, zset, cache, used)[1]
end
local function release_bases(bases, used)
  for ref, n in pairs(used) do
    if redis.call('HINCRBY', bases, 'n:' .. ref, -n) <= 0 then
      redis.call('HDEL', bases, ref, 'n:' .. ref)
    end
  end
end
