-- Extend the outbox flusher's lock if it is still ours (workers.delivery.outbox.Outbox.refresh).
-- Atomic: a lock taken by another flusher is never extended.
--
-- KEYS[1]  lock: the outbox's flusher lock
-- ARGV[1]  token: our lock token
-- ARGV[2]  ttl_ms: its new TTL (ms)
-- Returns 1 when extended, else 0.
local lock = KEYS[1]
local token, ttl_ms = ARGV[1], ARGV[2]
if redis.call('GET', lock) == token then return redis.call('PEXPIRE', lock, ttl_ms) end
return 0
