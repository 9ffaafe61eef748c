-- Whether one connection's outbox wants a flush task now (workers.delivery.outbox.sweep): items
-- waiting, no flusher running, not backing off, and not marked by another sweep a moment ago
-- (then it marks it).  An empty outbox is unregistered.  Atomic: concurrent schedulers
-- publish one flush, not many.
--
-- KEYS[1]  outbox: the connection's outbox list
-- KEYS[2]  outboxes: the set of connections with an outbox
-- KEYS[3]  lock: the outbox's flusher lock
-- KEYS[4]  state: the outbox's state hash (queue, next_at)
-- KEYS[5]  mark: the sweep's mark
-- ARGV[1]  connection: the connection id (in KEYS[2])
-- ARGV[2]  now: the time (epoch seconds), against the state's next_at
-- ARGV[3]  mark_ms: the mark's TTL (ms)
-- Returns the queue to publish the flush on ('' if none recorded), or nil: no flush now.
local outbox, outboxes, lock, state, mark = KEYS[1], KEYS[2], KEYS[3], KEYS[4], KEYS[5]
local connection, now, mark_ms = ARGV[1], ARGV[2], ARGV[3]
if redis.call('LLEN', outbox) == 0 then
  redis.call('SREM', outboxes, connection)
  return false
end
if redis.call('EXISTS', lock) == 1 then return false end
local nxt = tonumber(redis.call('HGET', state, 'next_at') or '0') or 0
if nxt > tonumber(now) then return false end
if not redis.call('SET', mark, '1', 'NX', 'PX', mark_ms) then return false end
return redis.call('HGET', state, 'queue') or ''
