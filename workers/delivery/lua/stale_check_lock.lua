-- Check an upsert against its customer's stale record and take the customer's send lock, in one
-- step (workers.delivery.stale.StaleGuard.check_and_lock).  Atomic: two attempts with upserts of
-- one customer never both pass and send (the older could be applied last).
--
-- KEYS[1]  record: the customer's stale record (event ms of its newest applied upsert)
-- KEYS[2]  lock: the customer's send lock (holds the owner's token)
-- KEYS[3]  out: the customer's hold ``out`` marker ('queued': a bulk of it runs at Voucherify;
--   'sending:<ms>': a bulk with its upsert of that time was sent, perhaps never answered)
-- ARGV[1]  event_ms: the upsert's event time (ms; -1: no time to compare)
-- ARGV[2]  token: this attempt's token
-- ARGV[3]  lock_ms: the lock's TTL (ms)
-- ARGV[4]  newest_ms: the request's newest event time (ms; -1: none)
-- Returns {0, 0} locked | {1, 0} stale | {2, pttl} another attempt holds the lock | {3, pttl} a
-- bulk of the customer's is (or may be) still running and this upsert is newer than it.
local record, lock, out = KEYS[1], KEYS[2], KEYS[3]
local token, lock_ms = ARGV[2], ARGV[3]
local ms = tonumber(ARGV[1])
local cur = tonumber(redis.call('GET', record) or '-1') or -1
if ms >= 0 and ms < cur then return {1, 0} end
local newest = tonumber(ARGV[4])
local marker = redis.call('GET', out)
if marker and newest > cur then
  local sent = string.match(marker, '^sending:(-?%d+)$')
  if marker == 'queued' or (sent and newest > tonumber(sent)) then
    return {3, redis.call('PTTL', out)}
  end
end
local owner = redis.call('GET', lock)
if owner and owner ~= token then
  return {2, redis.call('PTTL', lock)}
end
redis.call('SET', lock, token, 'PX', lock_ms)
return {0, 0}
