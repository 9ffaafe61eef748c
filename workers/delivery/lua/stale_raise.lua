-- Raise a customer's stale record to an applied upsert's event time, never lower it
-- (workers.delivery.stale.StaleGuard.applied), and count the customer against the connection's
-- kept records (connector.kept).  Atomic: a compare-and-set, right whatever order concurrent
-- workers finish in.
--
-- KEYS[1]  record: the customer's stale record (event ms of its newest applied upsert)
-- KEYS[2]  customers: the connection's customers of the day (a HyperLogLog, connector.kept)
-- ARGV[1]  event_ms: the applied upsert's event time (ms)
-- ARGV[2]  ttl: the record's TTL (seconds)
-- ARGV[3]  customer: the customer (counted in KEYS[2])
-- ARGV[4]  count_ttl: the TTL KEYS[2] has at least (seconds)
-- Returns 1 when raised, 0 when the record was as new or newer (its TTL renewed).
local record, customers = KEYS[1], KEYS[2]
local event_ms, ttl, customer, count_ttl = ARGV[1], ARGV[2], ARGV[3], ARGV[4]
redis.call('PFADD', customers, customer)
if redis.call('TTL', customers) < tonumber(count_ttl) then redis.call('EXPIRE', customers, count_ttl) end
local cur = tonumber(redis.call('GET', record) or '-1') or -1
if tonumber(event_ms) > cur then
  redis.call('SET', record, event_ms, 'EX', ttl)
  return 1
end
redis.call('EXPIRE', record, ttl)
return 0
