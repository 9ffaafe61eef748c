-- RELEASE one connection's due customers into delayed entries, due now (workers.delivery.holds
-- .release_due); each item carries its "held" flag.  A customer whose first item starts with the
-- replay mark goes into entries of their own (one is what one big bulk of a backfill is made of).
-- Atomic per connection: safe with several schedulers.  Needs hold_take_one.lua and
-- hold_release_batch.lua before it.
--
-- KEYS[1]  zset: the connection's held customers (customer -> due, ms)
-- KEYS[2]  delayed: the delayed zset
-- KEYS[3]  delayed_data: the delayed hash
-- KEYS[4]  index: the hold index (connection id -> entry head)
-- KEYS[5]  held: the connection's held hash
-- KEYS[6]  bases: the connection's bases hash
-- KEYS[7]  lists: the connection's list marks
-- ARGV[1]  cid: the connection id
-- ARGV[2]  prefix: the key prefix (the customers' list and out keys)
-- ARGV[3]  id_base: the entries' id base
-- ARGV[4]  limit: customers released at most
-- ARGV[5]  max_items: items per entry
-- ARGV[6]  out_ms: the released customers' ``out`` markers' TTL (ms)
-- ARGV[7]  recheck_ms: a customer with its marker set is looked at again that much later
-- ARGV[8]  entry_customers: customers per entry (of both kinds)
-- ARGV[9]  replay_items: items per replay entry
-- Returns the customers released; 0: nothing held; -1: no entry head (nothing done).
local zset, delayed, delayed_data, index, held, bases = KEYS[1], KEYS[2], KEYS[3], KEYS[4], KEYS[5], KEYS[6]
local list_marks = KEYS[7]
local cid, prefix, id_base, limit, max_items = ARGV[1], ARGV[2], ARGV[3], ARGV[4], ARGV[5]
local out_ms, recheck_ms, entry_customers, replay_items = ARGV[6], ARGV[7], ARGV[8], ARGV[9]
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local head = redis.call('HGET', index, cid)
local due = redis.call('ZRANGEBYSCORE', zset, '-inf', now, 'LIMIT', 0, tonumber(limit))
if not head then
  if redis.call('ZCARD', zset) == 0 then return 0 end
  return -1
end
local s = {delayed = delayed, delayed_data = delayed_data, id_base = id_base, head = head, now = now,
  customers = tonumber(entry_customers), entries = 0}
local released, cache, used = 0, {}, {}
local live = {items = {}, n = 0, most = tonumber(max_items)}
local replay = {items = {}, n = 0, most = tonumber(replay_items)}
local going, lists, marks, waiting = still_out(due, prefix .. 'holdout:' .. cid .. ':', prefix .. 'hold:' .. cid .. ':')
for _, customer in ipairs(waiting) do redis.call('ZADD', zset, now + tonumber(recheck_ms), customer) end
for j, items in ipairs(take_many(held, list_marks, bases, going, lists, zset, cache, used)) do
  if #items > 0 then
    local b = live
    if string.sub(items[1], 1, 15) == '{"replay":true,' then b = replay end
    add(b, items, s)
    redis.call('SET', marks[j], 'released', 'PX', tonumber(out_ms))
    released = released + 1
  end
end
emit(live, s)
emit(replay, s)
release_bases(bases, used)
return released
