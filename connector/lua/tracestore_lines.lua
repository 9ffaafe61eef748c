-- Library of connector/lua/tracestore_write.lua: an event's trace lines cut to the ones it keeps
-- (the first lines of its head, the last of its steps).  Local functions only; no keys, no
-- arguments of its own.
--
-- first(lines, keep): the first `keep` newline-ended lines of `lines` (all when fewer).
-- last(lines, keep): the last `keep` newline-ended lines of `lines` (all when fewer).
local function first(lines, keep)
  local pos, count = 0, 0
  while count < keep do
    local nl = string.find(lines, '\n', pos + 1, true)
    if not nl then return lines end
    pos, count = nl, count + 1
  end
  return string.sub(lines, 1, pos)
end
local function last(lines, keep)
  local ends, pos = {}, 0
  while true do
    local nl = string.find(lines, '\n', pos + 1, true)
    if not nl then break end
    ends[#ends + 1] = nl
    pos = nl
  end
  if #ends <= keep then return lines end
  return string.sub(lines, ends[#ends - keep] + 1)
end
