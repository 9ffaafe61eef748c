-- Reserve a request's events and bytes in a connection's backlog unless that passes a bound
-- (connector.backlog.reserve).  Atomic: the check and the increments are one step, so two
-- ingest processes can never both pass a bound the two of them together exceed.
--
-- KEYS[1]  events: the connection's counter of accepted, unfinished events
-- KEYS[2]  stored: the bytes those events occupy in Redis
-- KEYS[3]  flow: this hour's flow counters (optional; counted as arrivals, 'in')
-- ARGV[1]  n: events to reserve
-- ARGV[2]  bytes: bytes to reserve
-- ARGV[3]  limit: the event bound
-- ARGV[4]  bytes_limit: the byte bound
-- ARGV[5]  flow_ttl: the flow counters' TTL (seconds; with KEYS[3])
-- Returns 1 when admitted, 0 when over a bound (nothing changed).
local events, stored, flow = KEYS[1], KEYS[2], KEYS[3]
local n, b = tonumber(ARGV[1]), tonumber(ARGV[2])
local limit, bytes_limit, flow_ttl = ARGV[3], ARGV[4], ARGV[5]
local cur = tonumber(redis.call('GET', events) or '0') or 0
local cur_bytes = tonumber(redis.call('GET', stored) or '0') or 0
-- An empty backlog always admits one request, or a request larger than a bound never could.
if cur > 0 and cur + n > tonumber(limit) then return 0 end
if cur_bytes > 0 and cur_bytes + b > tonumber(bytes_limit) then return 0 end
redis.call('INCRBY', events, n)
redis.call('PERSIST', events)
if b > 0 then
  redis.call('INCRBY', stored, b)
  redis.call('PERSIST', stored)
end
-- The hour's TTL is set by the first write of its field (a command, not one per batch): the
-- count lives flow_ttl from then, past the hour by far more than anyone reads it.
if flow and redis.call('HINCRBY', flow, 'in', n) == n then redis.call('EXPIRE', flow, tonumber(flow_ttl)) end
return 1
