-- Release finished events and their bytes from a connection's backlog (connector.backlog.release),
-- each counter clamped at zero (and then deleted), and count them in this hour's flow.  Atomic:
-- a decrement and its clamp are one step, and the reply is the counter after this release.
--
-- KEYS[1]  events: the connection's counter of accepted, unfinished events
-- KEYS[2]  stored: the bytes those events occupy in Redis
-- KEYS[3]  flow: this hour's flow counters (optional; 'out' events and 'calls' made)
-- ARGV[1]  n: events finished
-- ARGV[2]  bytes: bytes freed
-- ARGV[3]  calls: calls made for them (with KEYS[3])
-- ARGV[4]  flow_ttl: the flow counters' TTL (seconds; with KEYS[3])
-- Returns the events left.
local flow = KEYS[3]
local n_events, calls, flow_ttl = ARGV[1], ARGV[3], ARGV[4]
local left = 0
if flow then -- the TTL set by a field's first write (see backlog_reserve.lua)
  local first = false
  if tonumber(n_events) > 0 then first = redis.call('HINCRBY', flow, 'out', n_events) == tonumber(n_events) end
  if tonumber(calls) > 0 and redis.call('HINCRBY', flow, 'calls', calls) == tonumber(calls) then first = true end
  if first then redis.call('EXPIRE', flow, tonumber(flow_ttl)) end
end
-- i = 1: the events (KEYS[1], ARGV[1]); i = 2: the bytes (KEYS[2], ARGV[2]).
for i = 1, 2 do
  local n = tonumber(ARGV[i])
  if n > 0 then
    local v = redis.call('DECRBY', KEYS[i], n)
    if v <= 0 then redis.call('DEL', KEYS[i]) elseif i == 1 then left = v end
  elseif i == 1 then
    left = tonumber(redis.call('GET', KEYS[1]) or '0') or 0
  end
end
return left
