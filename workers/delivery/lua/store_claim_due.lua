-- Claim the delayed entries due by now (workers.delivery.store): each is moved to a lease
-- (its score set to the lease's end), an entry without data is dropped.  Atomic: two workers
-- never claim one entry.
--
-- KEYS[1]  delayed: the delayed zset (entry id -> due, ms)
-- KEYS[2]  data: the delayed hash (entry id -> entry JSON)
-- ARGV[1]  now: the time (ms); entries due by then are claimed
-- ARGV[2]  limit: entries claimed at most
-- ARGV[3]  lease: the claimed entries' new due (ms), when an unfinished claim comes due again
-- Returns {id, data, id, data, ...}.
local delayed, data_hash = KEYS[1], KEYS[2]
local now, limit, lease = ARGV[1], ARGV[2], ARGV[3]
local ids = redis.call('ZRANGEBYSCORE', delayed, '-inf', now, 'LIMIT', 0, tonumber(limit))
local out = {}
for _, id in ipairs(ids) do
  local data = redis.call('HGET', data_hash, id)
  if data then
    redis.call('ZADD', delayed, lease, id)
    out[#out + 1] = id
    out[#out + 1] = data
  else
    redis.call('ZREM', delayed, id)
  end
end
return out
