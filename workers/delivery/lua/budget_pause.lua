-- Pauses one budget for a while (a 429, or the reserve reached): never shortens a pause.
-- KEYS  [1] the budget's pause ({p}rl:{c}:{budget}:pause, epoch ms)
-- ARGV  [1] for how long (ms)
-- Returns the pause's end (epoch ms, Redis's clock).
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local untl = now + tonumber(ARGV[1])
local cur = tonumber(redis.call('GET', KEYS[1]) or '0') or 0
if untl > cur then
  redis.call('SET', KEYS[1], untl, 'PX', tonumber(ARGV[1]) + 1000)
end
return untl
