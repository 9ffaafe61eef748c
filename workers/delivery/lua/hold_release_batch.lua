-- Library of hold_release.lua: the released customers' items gathered into delayed entries, a
-- batch at a time.  Local functions only; no KEYS or ARGV of their own.
--
-- s (the release): delayed, delayed_data (keys), id_base, head, now, customers (per entry),
--   entries (the entries written so far: each one's id is id_base-<n>).
-- emit(b, s): batch b's items as one delayed entry, due now, and b emptied (nothing if empty).
-- add(b, items, s): one customer's items into batch b (b.most items, s.customers customers at
--   most per entry: b emitted first when they would not fit).
-- still_out(due, out_prefix, list_prefix): the due customers split by their ``out`` markers
--   (one MGET per thousand): those to release, their list keys and markers; those still out.
local function emit(b, s)
  if #b.items == 0 then return end
  s.entries = s.entries + 1
  local id = s.id_base .. '-' .. s.entries
  local entry = s.head .. ',"items":[' .. table.concat(b.items, ',') .. '],"due":' .. (s.now / 1000) .. ',"reason":"held"}'
  redis.call('HSET', s.delayed_data, id, entry)
  redis.call('ZADD', s.delayed, s.now, id)
  b.items, b.n = {}, 0
end
local function add(b, items, s)
  if #b.items + #items > b.most or b.n >= s.customers then emit(b, s) end
  for _, item in ipairs(items) do b.items[#b.items + 1] = item end
  b.n = b.n + 1
end
local function still_out(due, out_prefix, list_prefix)
  local outs, going, lists, marks, waiting = {}, {}, {}, {}, {}
  for j, customer in ipairs(due) do outs[j] = out_prefix .. customer end
  for c = 1, #due, 1000 do
    for j, m in ipairs(redis.call('MGET', unpack(outs, c, math.min(c + 999, #due)))) do
      local customer = due[c + j - 1]
      if m then
        waiting[#waiting + 1] = customer
      else
        going[#going + 1], lists[#lists + 1], marks[#marks + 1] = customer, list_prefix .. customer, outs[c + j - 1]
      end
    end
  end
  return going, lists, marks, waiting
end
