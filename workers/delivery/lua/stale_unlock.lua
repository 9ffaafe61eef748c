-- Give back customers' send locks that are still ours (workers.delivery.stale.StaleGuard
-- .unlock).  Atomic per lock: a lock that expired and was taken by another attempt is not
-- deleted.
--
-- KEYS[1..]  lock: the customers' send locks
-- ARGV[1]  token: our token
-- Returns 0.
local token = ARGV[1]
for _, lock in ipairs(KEYS) do
  if redis.call('GET', lock) == token then
    redis.call('DEL', lock)
  end
end
return 0
