-- Write a batch's trace lines into one trace bucket (connector.tracestore.write): the shared
-- bodies once, each event's head and step lines appended to its field and cut to the newest
-- kept, and what the bucket is charged.  Atomic: the charge ('z') always matches the fields.
-- One HMGET and one HSET for the whole batch (not a read and a write per event: Redis counts
-- commands, and traces are written for every event; in chunks, under Lua's unpack limit).
-- Needs tracestore_lines.lua before it.
--
-- KEYS[1]  bucket: the trace bucket (a hash: i:{id} events, d:{digest} shared bodies, z size)
-- ARGV[1]  ttl: the bucket's retention (seconds), from this write on
-- ARGV[2]  max_head: head lines kept per event
-- ARGV[3]  max_steps: step lines kept per event
-- ARGV[4]  n: the number of shared bodies that follow
-- ARGV[5..]  n (field, body) pairs, then (field, head lines, step lines) triples
-- Returns {bytes charged now, the bucket's size}.
local bucket = KEYS[1]
-- What a hash field costs besides its name and value: connector.tracestore.FIELD_OVERHEAD_BYTES.
local overhead = 64
local ttl, max_head, max_steps, n = tonumber(ARGV[1]), tonumber(ARGV[2]), tonumber(ARGV[3]), tonumber(ARGV[4])
local fields, cur, charged, out = {}, {}, 0, {}
for i = 5, 4 + 2 * n, 2 do fields[#fields + 1] = ARGV[i] end
for i = 5 + 2 * n, #ARGV, 3 do fields[#fields + 1] = ARGV[i] end
for c = 1, #fields, 1000 do
  local got = redis.call('HMGET', bucket, unpack(fields, c, math.min(c + 999, #fields)))
  for j, v in ipairs(got) do cur[fields[c + j - 1]] = v end
end
for i = 5, 4 + 2 * n, 2 do
  local field, body = ARGV[i], ARGV[i + 1]
  if not cur[field] then -- a shared body is written once (HSETNX)
    cur[field] = body
    out[field] = body
    charged = charged + #field + #body + overhead
  end
end
for i = 5 + 2 * n, #ARGV, 3 do
  local field, head, steps = ARGV[i], ARGV[i + 1], ARGV[i + 2]
  local old = cur[field]
  local before = -(#field + overhead)
  if old then
    before = #old
    local sep = string.find(old, '\30', 1, true)
    if sep then
      head = string.sub(old, 1, sep - 1) .. head
      steps = string.sub(old, sep + 1) .. steps
    end
  end
  local value = first(head, max_head) .. '\30' .. last(steps, max_steps)
  cur[field] = value
  out[field] = value
  charged = charged + #value - before
end
local flat = {}
for field, value in pairs(out) do
  flat[#flat + 1] = field
  flat[#flat + 1] = value
  if #flat >= 2000 then redis.call('HSET', bucket, unpack(flat)); flat = {} end
end
if #flat > 0 then redis.call('HSET', bucket, unpack(flat)) end
local size = redis.call('HINCRBY', bucket, 'z', charged)
redis.call('EXPIRE', bucket, ttl)
return {charged, size}
