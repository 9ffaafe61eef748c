-- Account a trace class's buckets against its budget (connector.tracestore.write): add what each
-- bucket was charged now, forget the buckets expired by now and, over the budget, give up the
-- oldest.  Atomic: the zset, the sizes and the total always agree.  A script touches only the
-- keys it is passed: the buckets given up are the caller's to delete.
--
-- KEYS[1]  buckets: the class's zset (bucket -> its expiry, ms)
-- KEYS[2]  sizes: the class's hash (bucket -> bytes charged)
-- KEYS[3]  total: the class's byte total
-- ARGV[1]  budget: the class's budget (bytes)
-- ARGV[2]  now: the time (ms); buckets expired by then are forgotten
-- ARGV[3..]  (bucket, bytes charged now, its expiry in ms) triples
-- Returns the buckets given up (at most connector.tracestore.MAX_EVICTED_PER_WRITE).
local buckets, sizes, total_key = KEYS[1], KEYS[2], KEYS[3]
local budget, now = tonumber(ARGV[1]), ARGV[2]
local max_evicted = 64 -- connector.tracestore.MAX_EVICTED_PER_WRITE
local total = 0
for i = 3, #ARGV, 3 do
  redis.call('ZADD', buckets, ARGV[i + 2], ARGV[i])
  redis.call('HINCRBY', sizes, ARGV[i], ARGV[i + 1])
  total = redis.call('INCRBY', total_key, ARGV[i + 1])
end
if #ARGV < 3 then total = tonumber(redis.call('GET', total_key) or '0') end
local function forget(member)
  local size = tonumber(redis.call('HGET', sizes, member) or '0')
  redis.call('HDEL', sizes, member)
  redis.call('ZREM', buckets, member)
  total = redis.call('DECRBY', total_key, size)
end
for _, m in ipairs(redis.call('ZRANGEBYSCORE', buckets, '-inf', now, 'LIMIT', 0, 1000)) do
  forget(m)
end
local evicted = {}
while total > budget and #evicted < max_evicted do
  local oldest = redis.call('ZRANGE', buckets, 0, 0)
  if #oldest == 0 then break end
  forget(oldest[1])
  evicted[#evicted + 1] = oldest[1]
end
if total <= 0 then redis.call('DEL', total_key) end
return evicted
