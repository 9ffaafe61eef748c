-- Append one item to a connection's Segment outbox (workers.delivery.outbox.Outbox.append),
-- with a dedupe mark: only the first append of its key counts.  Atomic: the mark and the append
-- are one step (a retried task never appends its item twice).
--
-- KEYS[1]  outbox: the connection's outbox list
-- KEYS[2]  outboxes: the set of connections with an outbox
-- KEYS[3]  state: the outbox's state hash (its queue)
-- KEYS[4]  dedupe: the dedupe mark (a ledger key)
-- ARGV[1]  item: the item's JSON
-- ARGV[2]  connection: the connection id (added to KEYS[2])
-- ARGV[3]  queue: the queue its flushes are published on
-- ARGV[4]  keep: the dedupe mark's TTL (seconds; '0': no dedupe)
-- Returns 1 when appended, 0 when a duplicate.
local outbox, outboxes, state, dedupe = KEYS[1], KEYS[2], KEYS[3], KEYS[4]
local item, connection, queue, keep = ARGV[1], ARGV[2], ARGV[3], ARGV[4]
if keep ~= '0' then
  if redis.call('EXISTS', dedupe) == 1 then return 0 end
  redis.call('SET', dedupe, 'done', 'EX', keep)
end
redis.call('RPUSH', outbox, item)
redis.call('SADD', outboxes, connection)
redis.call('HSET', state, 'queue', queue)
return 1
