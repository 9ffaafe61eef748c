-- Drop the first items of an outbox, only while the flusher's lock is ours
-- (workers.delivery.outbox.Outbox.trim).  Atomic: a flusher whose lock expired (and was taken
-- by another) never trims items it did not send.
--
-- KEYS[1]  outbox: the connection's outbox list
-- KEYS[2]  lock: the outbox's flusher lock
-- ARGV[1]  token: our lock token
-- ARGV[2]  count: items to drop from the head
-- Returns the items left, or -1 when the lock is not ours (nothing done).
local outbox, lock = KEYS[1], KEYS[2]
local token, count = ARGV[1], ARGV[2]
if redis.call('GET', lock) ~= token then return -1 end
redis.call('LTRIM', outbox, tonumber(count), -1)
return redis.call('LLEN', outbox)
