-- DROP one customer's held items (a forgotten subject; workers.delivery.forget).  Atomic: the
-- items and the references to their bases leave together.  Needs hold_take_one.lua before it.
--
-- KEYS[1]  zset: the connection's held customers
-- KEYS[2]  held: the connection's held hash
-- KEYS[3]  bases: the connection's bases hash
-- KEYS[4]  lists: the connection's list marks
-- ARGV[1]  customer: the customer
-- ARGV[2]  key: the customer's list key
-- Returns the items (whole JSON, in order).
local zset, held, bases, marks = KEYS[1], KEYS[2], KEYS[3], KEYS[4]
local customer, key = ARGV[1], ARGV[2]
local cache, used = {}, {}
local items = take_one(held, marks, bases, customer, key, zset, cache, used)
release_bases(bases, used)
return items
