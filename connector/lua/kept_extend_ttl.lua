-- Extend a count's TTL, never shorten it (connector.kept): a count lives at least as long as the
-- longest-kept record it counts.  In Lua, not EXPIRE ... GT/NX: those need Redis 7, and Redis
-- 6.2 is supported.  Atomic: the TTL read and the EXPIRE are one step.  TTL answers -1 (no
-- expiry) or -2 (no key), below any seconds asked for.
--
-- KEYS[1]  count: the counting key (a hash or a HyperLogLog)
-- ARGV[1]  seconds: the TTL it must have at least
-- Returns 1 when extended, 0 when it already lived that long.
local count = KEYS[1]
local seconds = ARGV[1]
if redis.call('TTL', count) < tonumber(seconds) then return redis.call('EXPIRE', count, seconds) end
return 0
