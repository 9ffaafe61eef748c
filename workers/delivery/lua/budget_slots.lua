-- Library (no KEYS/ARGV of its own): the next parking slot of a budget whose own count is full.
-- Parked calls come back as the window's grants leave it, not at the budget's mean rate (after
-- a burst, a mean-rate queue would leave most of the next window unused): the grants of a
-- granule leave together, so their slots are spread over one granule from that moment.  With
-- nothing counted ahead of the last slot (or a cycle budget): the mean rate.
--   key      the budget's counters hash ({p}rl:{c}:{budget}:n, granule number -> grants)
--   hint     the last slot handed out (epoch ms; 0 or past: none is waiting)
--   eff, window, gran (ms; 0: a cycle), now, wait (ms until the first grant fits)
-- -> the slot (epoch ms)
local function next_slot(key, hint, eff, window, gran, now, wait)
  local first = now + wait
  if hint < first then return first end
  local mean = hint + math.max(1, math.ceil(window / eff))
  if gran <= 0 then return mean end
  local counts, top = {}, -1
  local all = redis.call('HGETALL', key)
  for j = 1, #all, 2 do
    local b, c = tonumber(all[j]), tonumber(all[j + 1]) or 0
    if b and c > 0 then counts[b] = c; if b > top then top = b end end
  end
  -- The granule whose grants left the window just before the hint (granule b leaves at
  -- (b + 1) * gran + window): its next slot while within its granule, else the next one's.
  local b = math.floor((hint - window) / gran) - 1
  local nxt = counts[b] and math.ceil(hint + gran / counts[b]) or 0
  if nxt > hint and nxt < (b + 2) * gran + window then return nxt end
  for nb = b + 1, top do
    if counts[nb] then return math.max(hint + 1, (nb + 1) * gran + window) end
  end
  return mean
end
