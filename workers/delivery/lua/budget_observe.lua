-- Stores one answer's live state for a budget (budget_live.lua's live_store, which precedes
-- this in one script), or ends a probe call that brought no word on the window.
-- KEYS  [1] the budget's live state ({p}rl:{c}:{budget}:live)
-- ARGV  [1] credit: the calls the answer said remain, less the shop's reserve ('': the answer
--       had no such headers; '-': no answer of the window -- a refusal, a failure -- so the
--       probe grant it used is free again)  [2] the grant number of the call answered (0:
--       unknown)  [3] the end of the answer's window (epoch ms)
-- Returns 1 when stored, 0 when an answer already stored says as much or less.
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
if ARGV[1] == '-' then
  if tonumber(redis.call('HGET', KEYS[1], 'p') or '0') > 0 then redis.call('HINCRBY', KEYS[1], 'p', -1) end
  return 0
end
return live_store(KEYS[1], ARGV[1], ARGV[2], ARGV[3], now)
