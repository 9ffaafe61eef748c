-- Mark the customers of a call that may only be queued (a bulk upsert) before it is sent
-- (workers.delivery.holds.Holds.mark_sending): each ``out`` marker says ``sending:<ms>``, the
-- newest event time of the customer's upserts in the call.  Should the process die with the
-- call on the wire, Voucherify may still run it later: until the marker expires (or the call,
-- sent again, is read back) a newer upsert of the customer waits, an upsert not newer goes.
-- A marker ``queued`` (an older bulk of the customer's still runs) stays as it is.
--
-- KEYS[1..]  marker: each customer's ``out`` marker
-- ARGV[1]  ttl_ms: the markers' TTL (ms)
-- ARGV[2..]  value: KEYS[i]'s value is ARGV[i + 1]
-- Returns how many markers were set.
local ttl_ms = ARGV[1]
local set = 0
for i, marker in ipairs(KEYS) do
  if redis.call('GET', marker) ~= 'queued' then
    redis.call('SET', marker, ARGV[i + 1], 'PX', ttl_ms)
    set = set + 1
  end
end
return set
