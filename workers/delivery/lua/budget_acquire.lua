-- Grants a call (or a lease of up to `want`) from ALL the budgets of the call at once, or says
-- until when to wait; atomic on Redis's clock for every worker.  Preceded, in one script, by
-- budget_counts.lua, budget_live.lua, budget_check.lua and budget_slots.lua (their functions).
-- KEYS  [1] the connection's pause; per budget i (k = 5i + 1): k+1 counters, k+2 hint (next
--       parking slot, epoch ms), k+3 pause (epoch ms), k+4 slow (factor), k+5 live state
-- ARGV  [1] n budgets  [2] want  [3] lease_ms  [4] mode: '0' fresh (waits behind the hint),
--       '1' back from a slot, '2' a try that parks nothing  [5] refund (grants handed back)
--       [6] probe_max  [7] probe_round_ms  [8] probe_wait_ms; per budget i (a = 9 + 13i):
--       a limit (0: unbounded)  a+1 window_ms  a+2 granule_ms (0: a cycle)  a+3 cycle field now
--       a+4 cycle field at the lease's end  a+5 cycle end ms  a+6, a+7 refund fields
--       a+8 expects live headers ('1'/'0')  a+9 an answer to store first: credit ('-': none,
--       '': no headers)  a+10 its grant number  a+11 its window's end (epoch ms)  a+12 the
--       first number of the refunded grants (0: none numbered)
-- Returns {granted, now, due ms, paused, slotted (a denial's parking slot), then per budget:
--         counter field, first grant's number, probing (1: no answer of the window known)}
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local n, want, lease, mode = tonumber(ARGV[1]), tonumber(ARGV[2]), tonumber(ARGV[3]), ARGV[4]
local refund, pmax, pround, pwait = tonumber(ARGV[5]), tonumber(ARGV[6]), tonumber(ARGV[7]), tonumber(ARGV[8])
for i = 0, n - 1 do
  local k, a = 1 + i * 5, 9 + i * 13
  for _, f in ipairs(refund > 0 and {ARGV[a + 6], ARGV[a + 7]} or {}) do
    local v = f ~= '' and tonumber(redis.call('HGET', KEYS[k + 1], f) or '0') or 0
    if v > 0 then redis.call('HINCRBY', KEYS[k + 1], f, -math.min(v, refund)) end
  end
  if ARGV[a + 9] ~= '-' then live_store(KEYS[k + 5], ARGV[a + 9], ARGV[a + 10], ARGV[a + 11], now) end
  -- Refunded grants never reached the server: credit again if numbered after its answer's.
  local from = tonumber(ARGV[a + 12]) or 0
  local st = refund > 0 and from > 0 and redis.call('HMGET', KEYS[k + 5], 's', 'e', 'h') or {}
  if st[3] == '1' and from > (tonumber(st[1]) or 0) and (tonumber(st[2]) or 0) > now then
    redis.call('HINCRBYFLOAT', KEYS[k + 5], 'c', refund) end
end
if redis.call('EXISTS', KEYS[1]) == 1 then return {0, now, now, 1, 0} end
local wait, room, slotted, probing, worst, eff_w, window_w, a_w = 0, want, false, {}, 0, 1, 1, 9
for i = 0, n - 1 do
  local w, r, slot, p, eff, window = budget_check(1 + i * 5, 9 + i * 13, mode, want, lease, now, pmax,
                                                  pround, pwait)
  room, probing[i] = math.min(room, r), p
  if w > wait then wait, slotted, worst, eff_w, window_w, a_w = w, slot, 1 + i * 5, eff, window, 9 + i * 13 end
end
if wait > 0 and (not slotted or mode == '2') then return {0, now, now + wait, 0, 0} end
if wait > 0 then  -- a parking slot: as the window's grants leave it, never past the window's
  -- end (or the pause's); back from a slot and denied again: the next room, not the queue's end
  local hint = tonumber(redis.call('GET', KEYS[worst + 2]) or '0') or 0
  local slot = next_slot(KEYS[worst + 1], mode == '1' and 0 or hint, eff_w, window_w, tonumber(ARGV[a_w + 2]), now, wait)
  slot = math.min(slot, now + math.max(wait, window_w))
  if slot > hint then redis.call('SET', KEYS[worst + 2], slot, 'PX', math.max(1, slot - now)) end
  return {0, now, slot, 0, 1}
end
local g = math.max(1, room)
local out = {g, now, now, 0, 0}
for i = 0, n - 1 do
  local k, a = 1 + i * 5, 9 + i * 13
  out[#out + 1] = count_grant(KEYS[k + 1], g, tonumber(ARGV[a + 1]), tonumber(ARGV[a + 2]), lease, now,
                              ARGV[a + 3], ARGV[a + 4], tonumber(ARGV[a + 5]))
  out[#out + 1] = ARGV[a + 8] == '1' and live_grant(KEYS[k + 5], g, probing[i], now, pround) or 0
  out[#out + 1] = probing[i] and 1 or 0
end
return out
