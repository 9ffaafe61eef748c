"""A paused connection (SPEC 10, "Other duties"): its target refused the credentials.

A 401/403 is not about one event: every event of the connection would get it, and
dead-lettering them one by one would fill Redis with letters nobody can act on.  So the first
refusal pauses the whole connection:

    {p}paused:{c} = {"reason": "auth", "since": <epoch s>}     (no TTL: until resumed)

- every grant of the connection's budgets is denied while the key exists (one ``EXISTS`` in the
  budgets' Lua script, no extra round trip), and the work waits in the delayed store as
  ``paused``: no worker held, no retry spent, the retry window not running;
- the worker that set the key logs ONE error (``SET NX``: the others see it set);
- a probe (the scheduler, every ``CONNECTOR_AUTH_PROBE_SECONDS``) or ``connector resume ID``
  deletes the key and makes the connection's paused work due at once.

Knows no system: what a probe sends is the target's (:mod:`workers.targets.voucherify_probe`).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import orjson
import redis

from connector.keys import Keys

log = logging.getLogger("connector.pause")

AUTH = "auth"
PAUSED_REASON = "paused"  # the delayed store's reason of work waiting for a resume


@dataclass(frozen=True)
class Pause:
    reason: str
    since: float

    def as_dict(self) -> dict[str, Any]:
        return {"reason": self.reason, "since": self.since}


def pause(client: redis.Redis, keys: Keys, connection_id: str, reason: str = AUTH) -> bool:
    """Pause ``connection_id``; True only for the caller that paused it (the one to log)."""
    value = orjson.dumps({"reason": reason, "since": round(time.time(), 3)})
    return bool(client.set(keys.paused(connection_id), value, nx=True))


def _parse(raw: bytes | str | None) -> Pause | None:
    if raw is None:
        return None
    try:
        data = orjson.loads(raw)
        return Pause(str(data.get("reason") or AUTH), float(data.get("since") or 0.0))
    except (orjson.JSONDecodeError, TypeError, ValueError, AttributeError):
        return Pause(AUTH, 0.0)


def paused(client: redis.Redis, keys: Keys, connection_id: str) -> Pause | None:
    return _parse(client.get(keys.paused(connection_id)))


def paused_many(client: redis.Redis, keys: Keys, connection_ids: list[str]) -> dict[str, Pause | None]:
    if not connection_ids:
        return {}
    raws = client.mget([keys.paused(c) for c in connection_ids])
    return {c: _parse(raw) for c, raw in zip(connection_ids, raws, strict=True)}


def resume(client: redis.Redis, keys: Keys, connection_id: str) -> tuple[bool, int]:
    """Lift the pause; the connection's paused work is due now.  (was paused, entries made due)."""
    was = bool(client.delete(keys.paused(connection_id)))
    return was, redue(client, keys, connection_id)


def redue(client: redis.Redis, keys: Keys, connection_id: str) -> int:
    """The connection's entries parked as ``paused``, due now (a scan of the delayed store: a
    resume is rare, and the paused work is what it is for)."""
    now_ms = int(time.time() * 1000)
    due: dict[str, int] = {}
    for entry_id, raw in client.hscan_iter(keys.delayed_data, count=500):
        try:
            data = orjson.loads(raw)
        except orjson.JSONDecodeError:
            continue
        if data.get("connection_id") == connection_id and data.get("reason") == PAUSED_REASON:
            key = entry_id.decode() if isinstance(entry_id, bytes) else str(entry_id)
            due[key] = now_ms
    if due:
        # XX: an entry acknowledged meanwhile is not brought back.
        client.zadd(keys.delayed, due, xx=True)
    return len(due)


class Prober:
    """The scheduler's duty: every ``interval`` seconds, probe each paused connection (one
    scheduler at a time: a lock key per round) and resume those whose credentials are accepted
    again.  ``probe(connection_id)``: True accepted, False refused, None no verdict."""

    def __init__(
        self,
        client: redis.Redis,
        keys: Keys,
        connection_ids: list[str],
        probe: Callable[[str], bool | None],
        interval: float,
    ) -> None:
        self.client = client
        self.keys = keys
        self.connection_ids = connection_ids
        self.probe = probe
        self.interval = interval
        self._next = 0.0

    def __call__(self) -> list[str]:
        """Run if due; the connections resumed."""
        mono = time.monotonic()
        if mono < self._next or not self.connection_ids:
            return []
        self._next = mono + self.interval
        resumed: list[str] = []
        for connection_id, state in paused_many(self.client, self.keys, self.connection_ids).items():
            if state is None:
                continue
            lock = self.keys.paused(connection_id) + ":probe"
            if not self.client.set(lock, "1", nx=True, px=max(100, int(self.interval * 900))):
                continue  # another scheduler probes it this round
            verdict = self.probe(connection_id)
            if verdict:
                _, due = resume(self.client, self.keys, connection_id)
                log.warning(
                    "credentials accepted again: connection resumed",
                    extra={"connection": connection_id, "entries_due": due, "paused_since": state.since},
                )
                resumed.append(connection_id)
        return resumed
