-- Write a batch's trace lines into one trace bucket (connector.tracestore.write): the shared
-- bodies once, each event's head and step lines appended to its field and cut to the newest
-- kept, and what the bucket is charged.  Atomic: the charge ('z') always matches the fields.
-- Needs tracestore_lines.lua (first, last) before it.
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
local charged = 0
local i = 5
for _ = 1, n do
  if redis.call('HSETNX', bucket, ARGV[i], ARGV[i + 1]) == 1 then
    charged = charged + #ARGV[i] + #ARGV[i + 1] + overhead
  end
  i = i + 2
end
while i <= #ARGV do
  local field, head, steps = ARGV[i], ARGV[i + 1], ARGV[i + 2]
  local old = redis.call('HGET', bucket, field)
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
  redis.call('HSET', bucket, field, value)
  charged = charged + #value - before
  i = i + 3
end
local size = redis.call('HINCRBY', bucket, 'z', charged)
redis.call('EXPIRE', bucket, ttl)
return {charged, size}
