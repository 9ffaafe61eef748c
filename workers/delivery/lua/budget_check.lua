-- Library (no KEYS/ARGV of its own): one budget's answer to "may this call go now?", after
-- budget_counts.lua and budget_live.lua.  Arguments:
--   k      the budget's first key index less one (KEYS[k+1] counters, k+2 hint, k+3 pause,
--          k+4 slow, k+5 live state)
--   a      the budget's first argument index (ARGV[a] limit ... a+8 expects live headers: see
--          budget_acquire.lua)
--   mode   '0' fresh work (waits behind the hint), '1' back from a slot, '2' parks nothing
--   want, lease, now, pmax, pround, pwait: see budget_acquire.lua (ms, counts)
-- -> wait (ms; 0: may go), room (grants now), slotted (a denial that hands out a parking
--    slot: the budget's own count or a pause), probing, the effective limit, the window (ms)
local function budget_check(k, a, mode, want, lease, now, pmax, pround, pwait)
  local limit, window = tonumber(ARGV[a]), tonumber(ARGV[a + 1])
  local eff = math.max(1, math.floor(limit * (tonumber(redis.call('GET', KEYS[k + 4]) or '1') or 1)))
  local pause = tonumber(redis.call('GET', KEYS[k + 3]) or '0') or 0
  if pause > now then return pause - now, 0, limit > 0, false, eff, window end
  local hint = limit > 0 and mode == '0' and tonumber(redis.call('GET', KEYS[k + 2]) or '0') or 0
  if hint > now then return hint - now, 0, true, false, eff, window end
  local w, r = 0, want
  if limit > 0 then
    w, r = count_room(KEYS[k + 1], eff, window, tonumber(ARGV[a + 2]), lease, now, ARGV[a + 3],
                      ARGV[a + 4], tonumber(ARGV[a + 5]))
    if w > 0 then return w, 0, true, false, eff, window end
  end
  if ARGV[a + 8] ~= '1' then return 0, r, false, false, eff, window end  -- no live state kept
  -- The live state: a denial waits for the window's end or the probe's answer, with no slot.
  local lw, lr, probing = live_room(KEYS[k + 5], ARGV[a + 8], now, pmax, pround, pwait)
  return lw, math.min(r, lr), false, probing, eff, window
end
