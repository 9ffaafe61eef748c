-- Delete the keys still holding a value (workers.delivery.holds: the ``out`` markers a bulk set,
-- cleared when it finished or was refused).  Atomic per key: a marker set again since, by
-- another bulk, stays.
--
-- KEYS[1..]  marker: the keys to delete
-- ARGV[1..]  value: the value KEYS[i] must still hold is ARGV[i] (ARGV[1] for every key when
--   only one value is given)
-- Returns 0.
local one = #ARGV == 1
for i, key in ipairs(KEYS) do
  local value = ARGV[i]
  if one then value = ARGV[1] end
  if redis.call('GET', key) == value then redis.call('DEL', key) end
end
return 0
