-- Library (no KEYS/ARGV of its own): a budget's own counters, the connector's share per window.
-- Sliding windows: hash field = granule number (floor(ms / granule_ms)) -> grants counted in it,
-- a grant counted in the granule of its lease's END.  A billing cycle: field = the cycle's start.
-- Arguments of every function:
--   key      the budget's counters hash ({p}rl:{c}:{budget}:n)
--   eff      the limit now (slowed down: lower), window/gran/lease/now in ms (gran 0: a cycle)
--   fnow, flater, fend   a cycle's field now, its field at the lease's end, the cycle's end (ms)

-- -> wait (ms until one more grant fits; 0: fits now), room (grants that fit now)
local function count_room(key, eff, window, gran, lease, now, fnow, flater, fend)
  if gran <= 0 then
    local used = math.max(tonumber(redis.call('HGET', key, fnow) or '0') or 0,
                          tonumber(redis.call('HGET', key, flater) or '0') or 0)
    if used < eff then return 0, eff - used end
    return math.max(1, fend - now), 0
  end
  -- Every granule from the window's oldest on, those AHEAD of now included (a lease is counted
  -- at its end, a granule ahead).  The oldest is counted whole: over-counts, never under-counts.
  local first = math.floor((now - window) / gran)
  local last = math.floor((now + lease) / gran)
  local counts, used = {}, 0
  local all = redis.call('HGETALL', key)
  for j = 1, #all, 2 do
    local b = tonumber(all[j])
    if b and b >= first then
      counts[b] = tonumber(all[j + 1]) or 0
      used = used + counts[b]
      if b > last then last = b end
    end
  end
  if used < eff then return 0, eff - used end
  local need, freed = used + 1 - eff, 0
  for b = first, last do  -- until enough of the oldest granules have left the window
    freed = freed + (counts[b] or 0)
    if freed >= need then return (b + 1) * gran + window - now, 0 end
  end
  return (last + 1) * gran + window - now, 0
end

-- Counts n grants; -> the field they were counted in (a lease handed back refunds it).
local function count_grant(key, n, window, gran, lease, now, fnow, flater, fend)
  if gran <= 0 then
    redis.call('HINCRBY', key, fnow, n)
    if flater ~= fnow then redis.call('HINCRBY', key, flater, n) end
    redis.call('PEXPIRE', key, math.max(1000, fend - now) + window)
    return flater
  end
  local b = math.floor((now + lease) / gran)
  if redis.call('HINCRBY', key, tostring(b), n) == n then  -- a new granule: prune the old ones
    local first = math.floor((now - window) / gran)
    for _, f in ipairs(redis.call('HKEYS', key)) do
      if (tonumber(f) or 0) < first then redis.call('HDEL', key, f) end
    end
  end
  redis.call('PEXPIRE', key, window + lease + gran + 1000)
  return tostring(b)
end
