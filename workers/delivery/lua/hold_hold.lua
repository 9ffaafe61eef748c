-- Hold customers' upserts in a connection's hold window (workers.delivery.holds): each one's
-- lines appended to its field (or its list, see holdscripts), the bases they refer to counted,
-- and its due set unless it has one.  Atomic: a concurrent TAKE or RELEASE sees all of a
-- batch's items or none.
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
-- ARGV[6]  align: due rounded up to a multiple of it (ms; 0: none), so that customers held
--          over a stretch of that long fall due at the same instant
-- ARGV[7..]  per base: reference, text, items referring it; then per customer: customer,
--          list key, n, line1..linen
-- Returns each customer's due (ms).
local zset, index, held, bases = KEYS[1], KEYS[2], KEYS[3], KEYS[4]
local connection, head = ARGV[2], ARGV[3]
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local due, align = now + tonumber(ARGV[1]), tonumber(ARGV[6])
if align > 0 then due = math.ceil(due / align) * align end
local most = tonumber(ARGV[4])
redis.call('HSET', index, connection, head)
local i, dues = 7, {}
for _ = 1, tonumber(ARGV[5]) do
  redis.call('HSETNX', bases, ARGV[i], ARGV[i + 1])
  redis.call('HINCRBY', bases, 'n:' .. ARGV[i], tonumber(ARGV[i + 2]))
  i = i + 3
end
while i <= #ARGV do
  local customer, key, n = ARGV[i], ARGV[i + 1], tonumber(ARGV[i + 2])
  local cur = redis.call('HGET', held, customer)
  if redis.call('EXISTS', key) == 1 or (cur and string.len(cur) > most) then
    for j = 1, n do redis.call('RPUSH', key, ARGV[i + 2 + j]) end
  else
    local mine = {}
    if cur then mine[1] = cur end
    for j = 1, n do mine[#mine + 1] = ARGV[i + 2 + j] end
    redis.call('HSET', held, customer, table.concat(mine, '\n'))
  end
  redis.call('ZADD', zset, 'NX', due, customer)
  dues[#dues + 1] = redis.call('ZSCORE', zset, customer)
  i = i + 3 + n
end
return dues
