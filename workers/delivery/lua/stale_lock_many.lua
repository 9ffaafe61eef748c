-- Take the send locks of the customers of a call that writes several at once (a bulk upsert),
-- in the order given (sorted by the caller), up to the first one another attempt holds
-- (workers.delivery.stale.StaleGuard.lock_many).  The caller asks again with the same token
-- until it holds them all, or gives up and releases its own.  In one order, two bulks with
-- customers in common never each hold a lock the other waits for (the first shared one is
-- taken by one of them); a single upsert holds one lock and waits for none.  While the call
-- holds them, no single upsert of those customers is sent, and the stale records it reads
-- under them cannot move.
--
-- KEYS[1..]  lock: each customer's send lock (holds the owner's token), in lock order
-- ARGV[1]  token: this attempt's token
-- ARGV[2]  lock_ms: the locks' TTL (ms)
-- Returns {0, 0} when every lock is ours now, else {i, pttl}: KEYS[i] is another attempt's
-- for pttl ms more (the locks before it are ours, those after it untouched).
local token, lock_ms = ARGV[1], ARGV[2]
for i, lock in ipairs(KEYS) do
  local owner = redis.call('GET', lock)
  if owner and owner ~= token then
    return {i, math.max(1, redis.call('PTTL', lock))}
  end
  redis.call('SET', lock, token, 'PX', lock_ms)
end
return {0, 0}
