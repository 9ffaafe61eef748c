-- Remove dead letters (workers.delivery.deadletters): each one's record, its count and bytes and
-- its references.  Atomic: the counts and bytes always match the letters left.  Needs
-- dlq_release.lua and dlq_add_one.lua before it.
--
-- KEYS[1..6]  as dlq_release.lua (dlq, data, counts, bytes, shared, refs)
-- ARGV[1..]  id: the letters' ids
-- Returns how many were removed.
local removed = 0
for _, id in ipairs(ARGV) do
  local raw = redis.call('HGET', data, id)
  if redis.call('ZREM', dlq, id) == 1 then
    removed = removed + 1
    if raw then
      local ok, record = pcall(cjson.decode, raw)
      local c = ok and type(record) == 'table' and record['connection_id']
      if type(c) == 'string' then
        if redis.call('HINCRBY', counts, c, -1) <= 0 then redis.call('HDEL', counts, c) end
        redis.call('HINCRBY', bytes, c, -string.len(raw))
        release_refs(c, raw)
        if tonumber(redis.call('HGET', bytes, c) or '0') <= 0 then redis.call('HDEL', bytes, c) end
      end
    end
  end
  redis.call('HDEL', data, id)
end
return removed
