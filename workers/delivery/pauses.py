"""A paused (connection, target system) (SPEC 10 "Other duties", SPEC 13 "Pauses"): the system
refused the connection's credentials.

A 401/403 that is about the credentials is not about one event: every event of the connection
towards that system would get it, and dead-lettering them one by one would fill Redis with
letters nobody can act on.  So the first refusal pauses the connection's delivery to THAT
system only -- a Voucherify 401 never stops Segment delivery, nor the reverse::

    {p}paused:{c}           = {"reason": "auth", "since": <epoch s>}   Voucherify   (no TTL)
    {p}paused:{c}:segment   = the same                                 Segment

(A 401/403 that only one kind of call gets is that call's refusal, not a pause:
:mod:`workers.delivery.refusals` judges.)

- Voucherify: every grant of the connection's budgets is denied while its key exists (one
  ``EXISTS`` in the budgets' Lua script), and the work waits in the delayed store as
  ``paused``: no worker held, no retry spent, the retry window not running.  A probe (the
  scheduler, every ``CONNECTOR_AUTH_PROBE_SECONDS``) or ``connector resume ID`` deletes the key
  and makes the paused work due at once.
- Segment: the outbox is not due before the probe time (no flush task published meanwhile);
  the flusher's next batch then is the probe (:func:`lift_for_probe`): accepted, delivery goes
  on; refused, the pause is set again with its first ``since``.  ``connector resume`` makes the
  outbox due at once.
- The worker that set the key logs ONE error (``SET NX``: the others see it set).

Knows no system but by name: what a probe sends is the target's
(:mod:`workers.targets.probe`).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import orjson
import redis

from connector.contract import SYSTEMS
from connector.keys import Keys

log = logging.getLogger("connector.pause")

AUTH = "auth"
PAUSED_REASON = "paused"  # the delayed store's reason of work waiting for a resume
VOUCHERIFY, SEGMENT = SYSTEMS  # the target systems' names (Target.name)


@dataclass(frozen=True)
class Pause:
    reason: str
    since: float

    def as_dict(self) -> dict[str, Any]:
        return {"reason": self.reason, "since": self.since}


def pause(
    client: redis.Redis,
    keys: Keys,
    connection_id: str,
    reason: str = AUTH,
    system: str = VOUCHERIFY,
    since: float | None = None,
) -> bool:
    """Pause ``connection_id``'s delivery to ``system``; True only for the caller that paused
    it (the one to log).  ``since``: a failed probe's pause keeps its first time."""
    value = orjson.dumps({"reason": reason, "since": round(since or time.time(), 3)})
    return bool(client.set(keys.paused(connection_id, system), value, nx=True))


def _parse(raw: bytes | str | None) -> Pause | None:
    if raw is None:
        return None
    try:
        data = orjson.loads(raw)
        return Pause(str(data.get("reason") or AUTH), float(data.get("since") or 0.0))
    except (orjson.JSONDecodeError, TypeError, ValueError, AttributeError):
        return Pause(AUTH, 0.0)


def paused(client: redis.Redis, keys: Keys, connection_id: str, system: str = VOUCHERIFY) -> Pause | None:
    return _parse(client.get(keys.paused(connection_id, system)))


def paused_many(
    client: redis.Redis, keys: Keys, connection_ids: list[str], system: str = VOUCHERIFY
) -> dict[str, Pause | None]:
    if not connection_ids:
        return {}
    raws = client.mget([keys.paused(c, system) for c in connection_ids])
    return {c: _parse(raw) for c, raw in zip(connection_ids, raws, strict=True)}


def lift_for_probe(client: redis.Redis, keys: Keys, connection_id: str, system: str) -> Pause | None:
    """Take the pause off for one probing call (GETDEL: one prober); the pause it was."""
    return _parse(client.getdel(keys.paused(connection_id, system)))


def resume(client: redis.Redis, keys: Keys, connection_id: str, system: str = VOUCHERIFY) -> tuple[bool, int]:
    """Lift the pause of ``system``; its paused work is due now.  (was paused, entries made due:
    for Segment the outbox, 1 when it was waiting)."""
    was = bool(client.delete(keys.paused(connection_id, system)))
    if system == SEGMENT:
        # The outbox waits for its probe time in ``next_at``: due at the next sweep.
        return was, int(client.hdel(keys.outbox_state(connection_id), "next_at"))
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
