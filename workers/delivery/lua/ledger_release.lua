-- Give back a ledger claim if it is still ours (workers.delivery.ledger).  Atomic: a claim that
-- expired and was taken by another worker, or a call marked done, is not deleted.
--
-- KEYS[1]  ledger: the ledger key
-- ARGV[1]  token: our claim's token
-- Returns 1 when deleted, else 0.
local ledger = KEYS[1]
local token = ARGV[1]
if redis.call('GET', ledger) == 'inflight:' .. token then
  return redis.call('DEL', ledger)
end
return 0
