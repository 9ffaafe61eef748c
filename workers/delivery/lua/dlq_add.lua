-- Add one dead letter (workers.delivery.deadletters).  Atomic: the record, its counts, bytes and
-- references always agree.  Needs dlq_release.lua and dlq_add_one.lua before it.
--
-- KEYS[1..6]  as dlq_release.lua (dlq, data, counts, bytes, shared, refs)
-- ARGV[1]  id: the record's id
-- ARGV[2]  score: its score (its time)
-- ARGV[3]  json: the record
-- ARGV[4]  connection: its connection id
-- ARGV[5]  field: its batch's shared objects' field ('' if none)
-- ARGV[6]  blob: their JSON ('' if none or already stored)
-- ARGV[7]  base: its base's field ('' if none)
-- ARGV[8]  base_blob: the base's JSON ('' if none or already stored)
-- Returns 1.
add_one(ARGV[1], ARGV[2], ARGV[3], ARGV[4], ARGV[5], ARGV[6], ARGV[7], ARGV[8])
return 1
