"""The dead-letter store's Lua (workers.delivery.deadletters): add, remove, add-then-trim."""

from __future__ import annotations

from connector.lua import Lua

# What one record adds (Lua, shared by the scripts below).  KEYS[1..6]: dlq, dlq:data,
# dlq:counts, dlq:bytes, dlq:shared, dlq:shared:refs.  A record: id, score, JSON, connection id,
# then twice a reference and its JSON ("" if none or unknown): the field of its batch's shared
# objects ("{c}:{digest}"), then the field of its base ("{c}:b:{digest}": the fields it shares
# with the letters of the same failure and batch -- direction, queue, reason, error, the shared
# objects' digest).  Both are stored once in dlq:shared and counted in dlq:shared:refs: a
# record references its base, a base its batch's objects (a record of the previous version
# references the objects itself).  The connection's bytes count the record and, once, what it
# is the first to reference: the dead-letter store is data, bounded per connection at the
# ingest (SPEC 16).  A record written again under its id replaces the old one: the old one's
# references are released first, else their counts grow with every rewrite and the copies (and
# their bytes) outlive the last letter.
_ADD_ONE = """
local function release(c, field)
  if redis.call('HINCRBY', KEYS[6], field, -1) <= 0 then
    local blob = redis.call('HGET', KEYS[5], field)
    redis.call('HDEL', KEYS[5], field)
    redis.call('HDEL', KEYS[6], field)
    if blob then
      redis.call('HINCRBY', KEYS[4], c, -string.len(blob))
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
local function refer(c, field, blob)
  if field == '' or blob == '' then return false end
  local new = redis.call('HSETNX', KEYS[5], field, blob) == 1
  if new then redis.call('HINCRBY', KEYS[4], c, string.len(blob)) end
  redis.call('HINCRBY', KEYS[6], field, 1)
  return new
end
local function add_one(id, score, json, c, field, blob, base, base_blob)
  if redis.call('ZADD', KEYS[1], score, id) == 1 then
    redis.call('HINCRBY', KEYS[3], c, 1)
  else
    local old = redis.call('HGET', KEYS[2], id)
    if old then
      redis.call('HINCRBY', KEYS[4], c, -string.len(old))
      release_refs(c, old)
    end
  end
  redis.call('HSET', KEYS[2], id, json)
  redis.call('HINCRBY', KEYS[4], c, string.len(json))
  if base ~= '' then
    if refer(c, base, base_blob) then refer(c, field, blob) end  -- a new base refers the objects
  else
    refer(c, field, blob)
  end
end
"""

ADD = Lua(
    _ADD_ONE
    + """
add_one(ARGV[1], ARGV[2], ARGV[3], ARGV[4], ARGV[5], ARGV[6], ARGV[7], ARGV[8])
return 1
"""
)

# KEYS: as _ADD_ONE.  ARGV: ids.  Returns how many were removed.
REMOVE = Lua(
    _ADD_ONE
    + """
local removed = 0
for _, id in ipairs(ARGV) do
  local raw = redis.call('HGET', KEYS[2], id)
  if redis.call('ZREM', KEYS[1], id) == 1 then
    removed = removed + 1
    if raw then
      local ok, record = pcall(cjson.decode, raw)
      local c = ok and type(record) == 'table' and record['connection_id']
      if type(c) == 'string' then
        if redis.call('HINCRBY', KEYS[3], c, -1) <= 0 then redis.call('HDEL', KEYS[3], c) end
        redis.call('HINCRBY', KEYS[4], c, -string.len(raw))
        release_refs(c, raw)
        if tonumber(redis.call('HGET', KEYS[4], c) or '0') <= 0 then redis.call('HDEL', KEYS[4], c) end
      end
    end
  end
  redis.call('HDEL', KEYS[2], id)
end
return removed
"""
)

# KEYS: as _ADD_ONE, then a list and its lock.  ARGV: lock token, items to trim from the list's
# head, then 8 values per record (as _ADD_ONE).  All or nothing: the records are written and the
# list trimmed only while the lock is ours (else -1, nothing done), so a dead-lettered item is
# never both lost (trimmed first, then a Redis error) and left behind for another flusher to
# send (dead-lettered, then the lock lost).
ADD_THEN_TRIM = Lua(
    _ADD_ONE
    + """
if redis.call('GET', KEYS[8]) ~= ARGV[1] then return -1 end
for i = 3, #ARGV, 8 do
  add_one(ARGV[i], ARGV[i + 1], ARGV[i + 2], ARGV[i + 3], ARGV[i + 4], ARGV[i + 5], ARGV[i + 6], ARGV[i + 7])
end
redis.call('LTRIM', KEYS[7], tonumber(ARGV[2]), -1)
return redis.call('LLEN', KEYS[7])
"""
)
