-- Hold customers' upserts in a connection's hold window (workers.delivery.holds): each one's
-- lines appended to its field (or its list, see holdscripts), the bases they refer to counted,
-- and its due set unless it has one.  Atomic: a concurrent TAKE or RELEASE sees all of a
-- call's items or none.  The caller passes at most MAX_HOLD_CUSTOMERS (Lua's unpack limit).
--
-- KEYS[1]  zset: the connection's held customers (customer -> due, ms)
-- KEYS[2]  index: the hold index (connection id -> entry head)
-- KEYS[3]  held: the connection's held hash (customer -> lines)
-- KEYS[4]  bases: the connection's bases hash (reference -> text, n:reference -> count)
-- ARGV[1]  window_ms: the hold window (ms)
-- ARGV[2]  connection: the connection id (its field in KEYS[2])
-- ARGV[3]  head: the entry head (JSON up to the items)
-- ARGV[4]  most: a field's bytes past which further items go to the customer's list
-- ARGV[5]  n_bases: the number of bases that follow
-- ARGV[6]  align: due rounded up to a multiple of it (ms; 0: none): held over that long, due together
-- ARGV[7..]  per base: reference, text, items referring it; then per customer: customer,
--          list key, n, line1..linen
-- Returns each customer's due (ms).
local zset, index, held, bases = KEYS[1], KEYS[2], KEYS[3], KEYS[4]
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local due, align, most = now + tonumber(ARGV[1]), tonumber(ARGV[6]), tonumber(ARGV[4])
if align > 0 then due = math.ceil(due / align) * align end
redis.call('HSET', index, ARGV[2], ARGV[3]) -- the connection's entry head
local i = 7
for _ = 1, tonumber(ARGV[5]) do
  redis.call('HSETNX', bases, ARGV[i], ARGV[i + 1])
  redis.call('HINCRBY', bases, 'n:' .. ARGV[i], tonumber(ARGV[i + 2]))
  i = i + 3
end
-- Reads in one ZMSCORE and one HMGET, writes in one HSET and one ZADD (Redis counts commands;
-- every identify is held).  A list exists only for a held customer (dropped with its due), so
-- only those with a short field (or none: an older version's) need their list looked for.
local customers, groups = {}, {}
while i <= #ARGV do
  local n = tonumber(ARGV[i + 2])
  customers[#customers + 1] = ARGV[i]
  groups[#groups + 1] = {ARGV[i + 1], i + 3, i + 2 + n}
  i = i + 3 + n
end
local scores = redis.call('ZMSCORE', zset, unpack(customers))
local got = redis.call('HMGET', held, unpack(customers))
local cur, dues, out, adds, reply = {}, {}, {}, {}, {}
for j, customer in ipairs(customers) do
  if dues[customer] == nil then cur[customer], dues[customer] = got[j], scores[j] end
  local old, key, from, to = cur[customer], groups[j][1], groups[j][2], groups[j][3]
  if (old and string.len(old) > most) or (dues[customer] and redis.call('EXISTS', key) == 1) then
    for k = from, to do redis.call('RPUSH', key, ARGV[k]) end
  else
    local mine = {old or nil}
    for k = from, to do mine[#mine + 1] = ARGV[k] end
    cur[customer] = table.concat(mine, '\n')
    out[#out + 1], out[#out + 2] = customer, cur[customer]
  end
  if not dues[customer] then adds[#adds + 1], adds[#adds + 2], dues[customer] = due, customer, due end
  reply[j] = tostring(dues[customer])
end
if #out > 0 then redis.call('HSET', held, unpack(out)) end
if #adds > 0 then redis.call('ZADD', zset, 'NX', unpack(adds)) end
return reply
