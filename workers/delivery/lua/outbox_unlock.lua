-- Give back the outbox flusher's lock if it is still ours (workers.delivery.outbox.Outbox
-- .unlock).  Atomic: a lock taken by another flusher is never deleted.
--
-- KEYS[1]  lock: the outbox's flusher lock
-- ARGV[1]  token: our lock token
-- Returns 1 when deleted, else 0.
local lock = KEYS[1]
local token = ARGV[1]
if redis.call('GET', lock) == token then return redis.call('DEL', lock) end
return 0
