-- Reset a connection's backlog counters if neither moved since the first look
-- (connector.backlog.reconcile).  Atomic: an ingest that reserved between the two looks changes
-- a counter, and then nothing is reset.
--
-- KEYS[1]  events: the connection's event counter
-- KEYS[2]  stored: its byte counter
-- ARGV[1]  seen_events: the events seen at the first look ('0' for none)
-- ARGV[2]  seen_bytes: the bytes seen at the first look ('0' for none)
-- Returns 1 when reset, 0 when a counter moved.
local events, stored = KEYS[1], KEYS[2]
local seen_events, seen_bytes = ARGV[1], ARGV[2]
local e = redis.call('GET', events) or '0'
local b = redis.call('GET', stored) or '0'
if e ~= seen_events or b ~= seen_bytes then return 0 end
redis.call('DEL', events, stored)
return 1
