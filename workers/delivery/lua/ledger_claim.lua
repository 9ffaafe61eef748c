-- Claim ledger keys, many at once (workers.delivery.ledger; the claims of concurrent greenlets,
-- workers.delivery.batching).  Atomic per key: two workers never both claim one call; two
-- claims of one key in one call behave as two calls (the second finds the first's, ours).
--
-- KEYS[1..]  ledger: the ledger keys (one per outbound call's idempotency key)
-- ARGV[1..]  (token, ttl_ms) per key: the claim's token and its TTL (ms)
-- Returns {state, ms} per key: {1, 0} claimed (absent or ours) | {2, 0} done | {3, PTTL}
-- another claim holds it.
local out = {}
for i, key in ipairs(KEYS) do
  local mine = 'inflight:' .. ARGV[2 * i - 1]
  -- A first claim (the common case) is one command: SET NX; only a key already there is read.
  local v = false
  if not redis.call('SET', key, mine, 'NX', 'PX', ARGV[2 * i]) then v = redis.call('GET', key) end
  if not v or v == mine then
    if v then redis.call('SET', key, mine, 'PX', ARGV[2 * i]) end
    out[#out + 1] = 1
    out[#out + 1] = 0
  elseif v == 'done' then
    out[#out + 1] = 2
    out[#out + 1] = 0
  else
    out[#out + 1] = 3
    out[#out + 1] = redis.call('PTTL', key)
  end
end
return out
