-- Give back a customer's send lock if it is still ours (workers.delivery.stale.StaleGuard
-- .unlock).  Atomic: a lock that expired and was taken by another attempt is not deleted.
--
-- KEYS[1]  lock: the customer's send lock
-- ARGV[1]  token: our token
-- Returns 0.
local lock = KEYS[1]
local token = ARGV[1]
if redis.call('GET', lock) == token then
  redis.call('DEL', lock)
end
return 0
