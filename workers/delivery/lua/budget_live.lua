-- Library (no KEYS/ARGV of its own): a budget's live state, what the server's answers said.
-- key: {p}rl:{c}:{budget}:live, a hash:
--   c  credit: the calls the answer said remain, less the shop's reserve (answer to grant s)
--   s  that grant's number;  g  grants numbered so far (every grant of the budget)
--   e  the end of that answer's window (epoch ms);  h  '1' read from headers, '0' none sent
--   p  probe grants handed out since r (epoch ms), the first numbered f, while no answer of
--      the window is known
-- A budget grants while c - (g - s) > 0 (a call granted after grant s may have reached the
-- server after that answer); with no answer of the window, pmax calls per pround ms (a probe).
local LIVE_TTL = 86400000  -- ms; the state goes with a day's silence
-- One answer (credit '' = no headers; seq 0 = unknown: the latest grant).  An answer of an
-- earlier or ended window is ignored; of the same window, the lower estimate wins.
local function live_store(key, credit, seq, wend, now)
  local st = redis.call('HMGET', key, 'c', 's', 'e', 'h', 'g', 'p', 'f')
  local g = tonumber(st[5]) or 0
  seq = tonumber(seq) or 0
  if seq <= 0 or seq > g then seq = g end
  local known = st[4] == '1' and (tonumber(st[3]) or 0) > now
  if credit == '' then
    if known then return 0 end
    redis.call('HSET', key, 'c', 0, 's', seq, 'e', now, 'h', '0', 'p', 0)
  else
    local c, e = tonumber(credit), tonumber(wend)
    if e <= now then return 0 end  -- a window already over says nothing of this one
    local old = known and tonumber(st[3]) or 0
    if known and (e < old - 500 or (e <= old + 500 and c + seq >= st[1] + st[2])) then return 0 end
    -- The window's first word: the probe's earlier calls (from f on) may reach it after this one.
    if not known then c = c - math.max(0, math.min(seq - (tonumber(st[7]) or seq), tonumber(st[6]) or 0)) end
    redis.call('HSET', key, 'c', c, 's', seq, 'e', e, 'h', '1', 'p', 0)
  end
  redis.call('PEXPIRE', key, LIVE_TTL)
  return 1
end

-- -> wait (ms; 0: may grant), room (grants allowed now), probing (no answer of the window)
local function live_room(key, expects, now, pmax, pround, pwait)
  local st = redis.call('HMGET', key, 'c', 's', 'e', 'h', 'g', 'p', 'r')
  local e = tonumber(st[3]) or 0
  if st[4] == '0' then return 0, math.huge, false elseif st[4] == '1' and e > now then
    local avail = tonumber(st[1]) - ((tonumber(st[5]) or 0) - tonumber(st[2]))
    if avail <= 0 then return e - now, 0, false end  -- until the window ends
    return 0, math.ceil(avail - 0.000001), false
  end
  if expects ~= '1' then return 0, math.huge, false end
  local p = tonumber(st[6]) or 0
  if (tonumber(st[7]) or 0) + pround <= now then p = 0 end
  if p >= pmax then return pwait, 0, true end
  return 0, pmax - p, true
end

-- Numbers n grants; -> the first one's number (the seq their answers are stored with).
local function live_grant(key, n, probing, now, pround)
  local g = redis.call('HINCRBY', key, 'g', n)
  if probing and (tonumber(redis.call('HGET', key, 'r') or '0') or 0) + pround <= now then
    redis.call('HSET', key, 'p', n, 'r', now, 'f', g - n + 1)
  elseif probing then redis.call('HINCRBY', key, 'p', n) end
  if probing then redis.call('PEXPIRE', key, LIVE_TTL) end  -- else live_store set it this window
  return g - n + 1
end
