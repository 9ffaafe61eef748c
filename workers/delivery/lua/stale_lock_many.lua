-- Take the send locks of every customer of a call that writes several customers at once (a
-- bulk upsert), all or none (workers.delivery.stale.StaleGuard.lock_many).  Atomic: while the
-- call holds them, no single upsert of those customers is sent, and the stale records the call
-- reads under them cannot move until it has been answered.
--
-- KEYS[1..]  lock: each customer's send lock (holds the owner's token)
-- ARGV[1]  token: this attempt's token
-- ARGV[2]  lock_ms: the locks' TTL (ms)
-- Returns 0 when every lock is now ours, else the PTTL (ms, at least 1) of a lock another
-- attempt holds (and no lock is taken).
local token, lock_ms = ARGV[1], ARGV[2]
for _, lock in ipairs(KEYS) do
  local owner = redis.call('GET', lock)
  if owner and owner ~= token then
    return math.max(1, redis.call('PTTL', lock))
  end
end
for _, lock in ipairs(KEYS) do
  redis.call('SET', lock, token, 'PX', lock_ms)
end
return 0
