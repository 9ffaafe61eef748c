-- Hold customers' upserts in a connection's hold window (workers.delivery.holds): each one's
-- lines appended to its field (or its list, see holdscripts), the bases they refer to counted,
-- and its due set unless it has one.  Atomic: a concurrent TAKE or RELEASE sees all of a
-- call's items or none.  The caller passes at most MAX_HOLD_CUSTOMERS (Lua's unpack limit).
--
-- KEYS[1]  zset: the connection's held customers (customer -> due, ms)
-- KEYS[2]  index: the hold index (connection id -> entry head)
-- KEYS[3]  held: the connection's held hash (customer -> lines)
-- KEYS[4]  bases: the connection's bases hash (reference -> text, n:reference -> count)
-- KEYS[5]  lists: the connection's list marks (customer -> 1: its list exists)
-- ARGV[1]  window_ms: the hold window (ms)
-- ARGV[2]  connection: the connection id (its field in KEYS[2])
-- ARGV[3]  head: the entry head (JSON up to the items)
-- ARGV[4]  most: a field's bytes past which further items go to the customer's list
-- ARGV[5]  n_bases: the number of bases that follow
-- ARGV[6]  align: due rounded up to a multiple of it (ms; 0: none): held over that long, due together
-- ARGV[7..]  per base: reference, text, items referring it; then per customer: customer, list key, n, lines
-- Returns each customer's due (ms).
local zset, index, held, bases, lists = KEYS[1], KEYS[2], KEYS[3], KEYS[4], KEYS[5]
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
-- Reads in one ZMSCORE and two HMGETs, writes in one HSET and one ZADD (Redis counts commands;
-- every identify is held).  A list is marked; only an older version's (held, no field) is looked for.
local customers, groups = {}, {}
while i <= #ARGV do
  local n = tonumber(ARGV[i + 2])
  customers[#customers + 1], groups[#groups + 1] = ARGV[i], {ARGV[i + 1], i + 3, i + 2 + n}
  i = i + 3 + n
end
local scores, got = redis.call('ZMSCORE', zset, unpack(customers)), redis.call('HMGET', held, unpack(customers))
local marked = redis.call('HMGET', lists, unpack(customers))
local cur, listed, dues, out, adds, reply = {}, {}, {}, {}, {}, {}
for j, c in ipairs(customers) do
  if dues[c] == nil then cur[c], listed[c], dues[c] = got[j], marked[j], scores[j] end
  local old, key, from, to = cur[c], groups[j][1], groups[j][2], groups[j][3]
  if listed[c] or (old and #old > most) or (dues[c] and not old and redis.call('EXISTS', key) == 1) then
    for k = from, to do redis.call('RPUSH', key, ARGV[k]) end
    if not listed[c] then listed[c] = redis.call('HSET', lists, c, 1) end
  else
    local mine = {old or nil}
    for k = from, to do mine[#mine + 1] = ARGV[k] end
    cur[c] = table.concat(mine, '\n')
    out[#out + 1], out[#out + 2] = c, cur[c]
  end
  if not dues[c] then adds[#adds + 1], adds[#adds + 2], dues[c] = due, c, due end
  reply[j] = tostring(dues[c])
end
if #out > 0 then redis.call('HSET', held, unpack(out)) end
if #adds > 0 then redis.call('ZADD', zset, 'NX', unpack(adds)) end
return reply
