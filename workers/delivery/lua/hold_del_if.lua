-- Delete the keys still holding a value (workers.delivery.holds: the ``out`` markers a bulk set,
-- cleared when it finished).  Atomic per key: a marker set again since, by another bulk, stays.
--
-- KEYS[1..]  marker: the keys to delete
-- ARGV[1]  value: the value each must still hold
-- Returns 0.
local value = ARGV[1]
for _, key in ipairs(KEYS) do
  if redis.call('GET', key) == value then redis.call('DEL', key) end
end
return 0
