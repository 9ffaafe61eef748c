-- Library of the dead-letter scripts (dlq_add.lua, dlq_remove.lua, dlq_add_then_trim.lua;
-- workers.delivery.dlqscripts): the store's keys, and a record's references given up.  Local
-- functions only.  A record refers to its base and a base to its batch's shared objects, each
-- stored once in KEYS[5] and counted in KEYS[6]; a copy is deleted with its last reference.
--
-- KEYS[1]  dlq: the letters (zset: id -> score)
-- KEYS[2]  data: the records (hash: id -> JSON)
-- KEYS[3]  counts: letters per connection (hash)
-- KEYS[4]  bytes: bytes per connection (hash)
-- KEYS[5]  shared: the shared copies (hash: "{c}:{digest}" / "{c}:b:{digest}" -> JSON)
-- KEYS[6]  refs: their reference counts (hash)
--
-- release(c, field): one reference to connection c's copy `field` given up.
-- release_refs(c, raw): the references of record `raw` (JSON) given up.
local dlq, data, counts, bytes, shared, refs = KEYS[1], KEYS[2], KEYS[3], KEYS[4], KEYS[5], KEYS[6]
local function release(c, field)
  if redis.call('HINCRBY', refs, field, -1) <= 0 then
    local blob = redis.call('HGET', shared, field)
    redis.call('HDEL', shared, field)
    redis.call('HDEL', refs, field)
    if blob then
      redis.call('HINCRBY', bytes, c, -string.len(blob))
      if string.sub(field, #c + 2, #c + 3) == 'b:' then
        local ok, base = pcall(cjson.decode, blob)
        local ref = ok and type(base) == 'table' and base['shared']
        if type(ref) == 'string' and ref ~= '' then release(c, c .. ':' .. ref) end
      end
    end
  end
end
local function release_refs(c, raw)
  local ok, record = pcall(cjson.decode, raw)
  if not (ok and type(record) == 'table') then return end
  for _, name in ipairs({'shared', 'base'}) do
    local ref = record[name]
    if type(ref) == 'string' and ref ~= '' then release(c, c .. ':' .. ref) end
  end
end
