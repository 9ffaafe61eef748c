-- Library of the dead-letter scripts (after dlq_release.lua, whose key names it uses): what one
-- record adds.  Local functions only.  The connection's bytes count the record and, once, what
-- it is the first to reference: the store is data, bounded per connection at the ingest.  A
-- record written again under its id replaces the old one, whose references are released first
-- (else their counts grow with every rewrite and the copies outlive the last letter).
--
-- KEYS[1..6]  as dlq_release.lua (dlq, data, counts, bytes, shared, refs)
--
-- refer(c, field, blob): one reference to copy `field` (stored if new); true when it was new.
-- add_one(id, score, json, c, field, blob, base, base_blob): record `id` of connection c at
--   `score`; `field`/`blob`: its batch's shared objects ("{c}:{digest}"), `base`/`base_blob`:
--   its base ("{c}:b:{digest}"); "" when none or unknown.  A new base refers the objects.
local function refer(c, field, blob)
  if field == '' or blob == '' then return false end
  local new = redis.call('HSETNX', shared, field, blob) == 1
  if new then redis.call('HINCRBY', bytes, c, string.len(blob)) end
  redis.call('HINCRBY', refs, field, 1)
  return new
end
local function add_one(id, score, json, c, field, blob, base, base_blob)
  if redis.call('ZADD', dlq, score, id) == 1 then
    redis.call('HINCRBY', counts, c, 1)
  else
    local old = redis.call('HGET', data, id)
    if old then
      redis.call('HINCRBY', bytes, c, -string.len(old))
      release_refs(c, old)
    end
  end
  redis.call('HSET', data, id, json)
  redis.call('HINCRBY', bytes, c, string.len(json))
  if base ~= '' then
    if refer(c, base, base_blob) then refer(c, field, blob) end  -- a new base refers the objects
  else
    refer(c, field, blob)
  end
end
