"""The dead-letter store's Lua (workers.delivery.deadletters): add, remove, add-then-trim."""

from __future__ import annotations

from pathlib import Path

from connector.lua import Lua

# The scripts (workers/delivery/lua/dlq_*.lua name their keys and arguments).  KEYS[1..6] of all
# three: dlq, dlq:data, dlq:counts, dlq:bytes, dlq:shared, dlq:shared:refs.  Their library:
# dlq_release.lua (a record's references given up) and dlq_add_one.lua (what one record adds;
# a record's base and its batch's shared objects are stored once and counted, and the
# connection's bytes count them once: the dead-letter store is bounded per connection, SPEC 16).
_LUA = Path(__file__).parent / "lua"
_LIBRARY = ("dlq_release.lua", "dlq_add_one.lua")
ADD = Lua.files(_LUA, *_LIBRARY, "dlq_add.lua")
# KEYS[7..8]: a list and its lock: records written and the list trimmed only while the lock is ours.
ADD_THEN_TRIM = Lua.files(_LUA, *_LIBRARY, "dlq_add_then_trim.lua")
REMOVE = Lua.files(_LUA, *_LIBRARY, "dlq_remove.lua")
