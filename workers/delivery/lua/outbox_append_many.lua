-- Append items to a connection's Segment outbox (workers.delivery.outbox.Outbox.append_many)
-- and register the outbox.  Atomic: the items and the registration that gets them flushed go
-- together.
--
-- KEYS[1]  outbox: the connection's outbox list
-- KEYS[2]  outboxes: the set of connections with an outbox
-- KEYS[3]  state: the outbox's state hash (its queue)
-- ARGV[1]  connection: the connection id (added to KEYS[2])
-- ARGV[2]  queue: the queue its flushes are published on
-- ARGV[3..]  the items' JSON
-- Returns the number of items appended.
local outbox, outboxes, state = KEYS[1], KEYS[2], KEYS[3]
local connection, queue = ARGV[1], ARGV[2]
for i = 3, #ARGV do redis.call('RPUSH', outbox, ARGV[i]) end
redis.call('SADD', outboxes, connection)
redis.call('HSET', state, 'queue', queue)
return #ARGV - 2
