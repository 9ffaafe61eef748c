-- Counts a call again when its answer came after the granule it was counted in ended: it
-- reached the server at some time before its answer, maybe after that granule, so it moves to
-- the answer's granule (later, never earlier) and stays in the window as long as the server's.
-- Sliding windows only (a billing cycle's counter is the cycle's).
-- KEYS  per budget i: [i] its counters ({p}rl:{c}:{budget}:n)
-- ARGV  per budget i (a = 3i - 2): a the field the grant was counted in ('': not counted)
--       a+1 granule_ms (0: a cycle)  a+2 window_ms
-- Returns the number of budgets whose count moved.
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local moved = 0
for i = 1, #KEYS do
  local a = 3 * i - 2
  local field, gran, window = tonumber(ARGV[a]), tonumber(ARGV[a + 1]), tonumber(ARGV[a + 2])
  local b = gran and gran > 0 and math.floor(now / gran) or nil
  if field and b and b > field then
    -- Its old count goes, if still there (with its granule pruned it left the window already).
    if (tonumber(redis.call('HGET', KEYS[i], ARGV[a]) or '0') or 0) > 0 then
      redis.call('HINCRBY', KEYS[i], ARGV[a], -1)
    end
    redis.call('HINCRBY', KEYS[i], tostring(b), 1)
    local keep = window + gran + 1000
    if redis.call('PTTL', KEYS[i]) < keep then redis.call('PEXPIRE', KEYS[i], keep) end
    moved = moved + 1
  end
end
return moved
