-- Dead-letter records and trim them from a list's head, only while the list's lock is ours
-- (workers.delivery.flusher: the Segment outbox).  All or nothing: a dead-lettered item is
-- never both lost (trimmed first, then a Redis error) and left behind for another flusher to
-- send (dead-lettered, then the lock lost).  Needs dlq_release.lua and dlq_add_one.lua.
--
-- KEYS[1..6]  as dlq_release.lua (dlq, data, counts, bytes, shared, refs)
-- KEYS[7]  list: the list the items are trimmed from
-- KEYS[8]  lock: its lock
-- ARGV[1]  token: our lock token
-- ARGV[2]  count: items to trim from the list's head
-- ARGV[3..]  8 values per record (as ARGV[1..8] of dlq_add.lua)
-- Returns the items left in the list, or -1 when the lock is not ours (nothing done).
local list, lock = KEYS[7], KEYS[8]
local token, count = ARGV[1], ARGV[2]
if redis.call('GET', lock) ~= token then return -1 end
for i = 3, #ARGV, 8 do
  add_one(ARGV[i], ARGV[i + 1], ARGV[i + 2], ARGV[i + 3], ARGV[i + 4], ARGV[i + 5], ARGV[i + 6], ARGV[i + 7])
end
redis.call('LTRIM', list, tonumber(count), -1)
return redis.call('LLEN', list)
