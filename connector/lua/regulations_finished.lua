-- One deletion of a regulation's part for one connection finished (connector.regulations
-- .deletion_finished): count it down; the last one settles the part (FAILED if any was refused).
-- Atomic: concurrent workers finishing the last deletions settle the part exactly once.
--
-- KEYS[1]  regulation: the regulation's hash
-- ARGV[1]  connection: the connection id (the part)
-- ARGV[2]  refused: Voucherify's answer when the deletion was refused ('' when not)
-- ARGV[3]  now: the time (ISO 8601), the part's 'done' when it settles
-- Returns the part's status (nil: no such regulation).
local regulation = KEYS[1]
local c, refused, now = ARGV[1], ARGV[2], ARGV[3]
if redis.call('EXISTS', regulation) == 0 then return false end
if refused ~= '' then
  redis.call('HSET', regulation, c .. ':failed', '1', c .. ':detail', refused)
end
local left = redis.call('HINCRBY', regulation, c .. ':left', -1)
if left > 0 then return 'RUNNING' end
local status = 'FINISHED'
if redis.call('HGET', regulation, c .. ':failed') == '1' then status = 'FAILED' end
redis.call('HSET', regulation, c .. ':status', status, c .. ':done', now)
return status
