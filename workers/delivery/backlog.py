"""Per-connection bound on accepted, unfinished work (SPEC 5, backpressure).

Pure Redis, no HTTP client: the web process imports this module.

The ingest ``reserve``s one unit per accepted Segment event and one per Voucherify webhook before
publishing (and ``release``s them if the publish fails); the workers ``release`` a unit when its
event is finished -- delivered, skipped, a duplicate, or dead-lettered.  Parked work (retries,
throttling) keeps its units: it still occupies Redis.

Drift, and why it stays harmless:
- a worker killed after releasing but before acknowledging its task runs the task again and
  releases again: the counter drifts *down* (admits a little more), bounded by crashes x batch;
  ``release`` clamps at zero so it never goes negative;
- a unit reserved for work that vanished without release (an ingest process killed between
  reserve and publish, a lost broker message) drifts it *up*: the counter is TTL'd
  (``CONNECTOR_BACKLOG_TTL_SECONDS``, default 15 min, refreshed by every reserve/release), so an
  idle connection starts from zero again and a busy one cannot be locked out for long.
The bound protects Redis memory; it is a fence, not an accounting ledger.
"""

from __future__ import annotations

import os

import redis

from workers.delivery.keys import Keys
from workers.delivery.lua import Lua

_RESERVE = Lua(
    """
local cur = tonumber(redis.call('GET', KEYS[1]) or '0') or 0
local n = tonumber(ARGV[1])
-- An empty backlog always admits one request, or a batch larger than the bound never could.
if cur > 0 and cur + n > tonumber(ARGV[2]) then return 0 end
redis.call('INCRBY', KEYS[1], n)
redis.call('EXPIRE', KEYS[1], ARGV[3])
return 1
"""
)

_RELEASE = Lua(
    """
local left = redis.call('DECRBY', KEYS[1], ARGV[1])
if left <= 0 then
  redis.call('DEL', KEYS[1])
  return 0
end
redis.call('EXPIRE', KEYS[1], ARGV[2])
return left
"""
)


def _ttl() -> int:
    try:
        return max(1, int(float(os.environ.get("CONNECTOR_BACKLOG_TTL_SECONDS") or 900)))
    except ValueError:
        return 900


def reserve(client: redis.Redis, connection_id: str, n: int, limit: int, *, keys: Keys | None = None) -> bool:
    """Atomically add ``n`` units unless that would pass ``limit``; True when admitted."""
    if n <= 0:
        return True
    key = (keys or Keys.from_env()).backlog(connection_id)
    return int(_RESERVE(client, [key], [int(n), int(limit), _ttl()])) == 1


def release(client: redis.Redis, connection_id: str, n: int, *, keys: Keys | None = None) -> None:
    if n <= 0:
        return
    key = (keys or Keys.from_env()).backlog(connection_id)
    _RELEASE(client, [key], [int(n), _ttl()])


def current(client: redis.Redis, connection_id: str, *, keys: Keys | None = None) -> int:
    raw = client.get((keys or Keys.from_env()).backlog(connection_id))
    return int(raw) if raw is not None else 0
