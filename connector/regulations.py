"""Regulations (SPEC 14): suppression and deletion of a subject (a Segment ``userId``).

The ground floor of the feature, shared by the web (creates regulations, drops suppressed events
at the ingest), the workers (drop suppressed work before its call, send the deletions, forget)
and the CLI (reads them).  Redis layout (:mod:`connector.keys`)::

    suppressed:{c}      set   the connection's suppressed user ids; never expires (AOF keeps it)
    regulation:{id}     hash  id, type, subjects, connections, created, and per connection
                              {c}:status, {c}:detail, {c}:left (deletions not finished), {c}:done
    regulations         zset  id -> created (ms)

Why a set of user ids per connection: the ingest asks once per request (``SMISMEMBER`` of the
batch's user ids) and the delivery engine once per call; a connection's list stays as small as
its regulations.  A Voucherify customer's ``source_id`` is the subject's user id (the identity
mapping's default), so the same set answers for Voucherify items (their customer) and for
Segment items made from Voucherify webhooks (their ``userId`` is the customer's ``source_id``).

Progress: a regulation's part for one connection is FINISHED at once when it only (un)suppresses;
with a deletion it is RUNNING until each subject's deletion item has finished (delivered, a 404,
or refused), counted down in ``{c}:left`` by :func:`deletion_finished`; a refused deletion makes
the part FAILED with Voucherify's answer as its detail.  The overall status is derived on read.
"""

from __future__ import annotations

import hashlib
import secrets
import time
from collections.abc import Iterable, Mapping, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Final

import orjson
import redis

from connector.keys import Keys
from connector.lua import Lua

SUPPRESS_WITH_DELETE: Final = "SUPPRESS_WITH_DELETE"
DELETE_ONLY: Final = "DELETE_ONLY"
SUPPRESS_ONLY: Final = "SUPPRESS_ONLY"
UNSUPPRESS: Final = "UNSUPPRESS"
TYPES: Final = (SUPPRESS_WITH_DELETE, DELETE_ONLY, SUPPRESS_ONLY, UNSUPPRESS)
SUPPRESSING: Final = frozenset({SUPPRESS_WITH_DELETE, SUPPRESS_ONLY})
DELETING: Final = frozenset({SUPPRESS_WITH_DELETE, DELETE_ONLY})
SUBJECT_TYPES: Final = ("USER_ID",)
MAX_SUBJECTS: Final = 5000

RUNNING: Final = "RUNNING"
FINISHED: Final = "FINISHED"
FAILED: Final = "FAILED"

# The skip reason of everything a suppression drops (overview, metrics, traces).
SUPPRESSED: Final = "suppressed"

# The delivery action of a permanent deletion (workers.targets.voucherify builds its call).
DELETE_ACTION: Final = "delete_customer"

# One deletion of a connection's part finished (connector/lua/regulations_finished.lua).
_FINISHED_LUA: Final = Lua.files(Path(__file__).parent / "lua", "regulations_finished.lua")


def now_iso(now: float | None = None) -> str:
    at = datetime.fromtimestamp(time.time() if now is None else now, UTC)
    return at.isoformat(timespec="milliseconds")[:-6] + "Z"


def new_id() -> str:
    return "reg_" + secrets.token_hex(10)


def subject_digest(subject: str) -> str:
    """What a trace record keeps of its subject: enough to find and forget the trace when the
    subject is deleted, not the user id itself (traces hold no customer data)."""
    return hashlib.sha256(subject.encode()).hexdigest()[:16]


# --- suppression -------------------------------------------------------------------------------


def suppressed_among(client: redis.Redis, keys: Keys, connection_id: str, ids: Iterable[Any]) -> set[str]:
    """Which of ``ids`` are suppressed on the connection: one ``SMISMEMBER`` (none when no id)."""
    wanted = sorted({str(i) for i in ids if isinstance(i, str | int) and not isinstance(i, bool) and i != ""})
    if not wanted:
        return set()
    flags = client.smismember(keys.suppressed(connection_id), wanted)
    return {w for w, f in zip(wanted, flags, strict=True) if f}


def suppressed_list(client: redis.Redis, keys: Keys, connection_ids: Sequence[str]) -> dict[str, list[str]]:
    pipe = client.pipeline(transaction=False)
    for cid in connection_ids:
        pipe.smembers(keys.suppressed(cid))
    return {
        cid: sorted(m.decode() if isinstance(m, bytes) else m for m in members)
        for cid, members in zip(connection_ids, pipe.execute(), strict=True)
    }


# --- regulations -------------------------------------------------------------------------------


def create(
    client: redis.Redis,
    keys: Keys,
    regulation_type: str,
    subjects: Sequence[str],
    connection_ids: Sequence[str],
    *,
    now: float | None = None,
) -> str:
    """Record a regulation and apply its suppression (or lift it) in one transaction, so that
    from the answer on the ingest and the engine drop the subjects' events.  Deletion is the
    workers' (the caller publishes the task)."""
    regulation_id = new_id()
    created = now if now is not None else time.time()
    deleting = regulation_type in DELETING
    fields: dict[str | bytes, bytes | str | int | float] = {
        "id": regulation_id,
        "type": regulation_type,
        "subjects": orjson.dumps(list(subjects)).decode(),
        "connections": orjson.dumps(list(connection_ids)).decode(),
        "created": now_iso(created),
    }
    for cid in connection_ids:
        fields[f"{cid}:status"] = RUNNING if deleting else FINISHED
        fields[f"{cid}:detail"] = _detail(regulation_type, len(subjects))
        if deleting:
            fields[f"{cid}:left"] = len(subjects)
        else:
            fields[f"{cid}:done"] = now_iso(created)
    pipe = client.pipeline(transaction=True)
    pipe.hset(keys.regulation(regulation_id), mapping=fields)  # type: ignore[arg-type]
    pipe.zadd(keys.regulations, {regulation_id: int(created * 1000)})
    for cid in connection_ids:
        if regulation_type in SUPPRESSING:
            pipe.sadd(keys.suppressed(cid), *subjects)
        elif regulation_type == UNSUPPRESS:
            pipe.srem(keys.suppressed(cid), *subjects)
    pipe.execute()
    return regulation_id


def _detail(regulation_type: str, count: int) -> str:
    subjects = f"{count} subject{'s' if count != 1 else ''}"
    if regulation_type == SUPPRESS_ONLY:
        return f"{subjects} suppressed"
    if regulation_type == UNSUPPRESS:
        return f"{subjects} no longer suppressed"
    return f"deleting {subjects}" + (" (suppressed)" if regulation_type in SUPPRESSING else "")


def deletion_finished(
    client: redis.Redis, keys: Keys, regulation_id: str, connection_id: str, refused: str = ""
) -> str | None:
    """One subject's deletion of the regulation's part for ``connection_id`` is over (``refused``:
    Voucherify's answer when it refused).  Returns the part's status (None: no such regulation)."""
    status = _FINISHED_LUA(
        client, [keys.regulation(regulation_id)], [connection_id, refused[:500], now_iso()]
    )
    return status.decode() if isinstance(status, bytes) else status


def set_detail(client: redis.Redis, keys: Keys, regulation_id: str, connection_id: str, detail: str) -> None:
    client.hset(keys.regulation(regulation_id), f"{connection_id}:detail", detail)


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def read(client: redis.Redis, keys: Keys, regulation_id: str) -> dict[str, Any] | None:
    """The regulation as ``GET /v1/regulations/{id}`` shows it (None when unknown)."""
    raw = client.hgetall(keys.regulation(regulation_id))
    return render({_text(k): _text(v) for k, v in raw.items()}) if raw else None


def render(fields: Mapping[str, str]) -> dict[str, Any]:
    connection_ids: list[str] = orjson.loads(fields.get("connections") or "[]")
    parts: dict[str, dict[str, Any]] = {}
    done: list[str] = []
    for cid in connection_ids:
        parts[cid] = {
            "status": fields.get(f"{cid}:status", RUNNING),
            "detail": fields.get(f"{cid}:detail", ""),
        }
        if fields.get(f"{cid}:done"):
            done.append(fields[f"{cid}:done"])
    statuses = {p["status"] for p in parts.values()}
    overall = RUNNING if RUNNING in statuses else FAILED if FAILED in statuses else FINISHED
    return {
        "id": fields.get("id"),
        "regulationType": fields.get("type"),
        "subjectType": "USER_ID",
        "subjectIds": orjson.loads(fields.get("subjects") or "[]"),
        "overallStatus": overall,
        "createdAt": fields.get("created"),
        "finishedAt": max(done) if overall != RUNNING and done else None,
        "connections": parts,
    }


def recent(client: redis.Redis, keys: Keys, limit: int = 50) -> list[dict[str, Any]]:
    """The newest regulations first."""
    ids = [_text(i) for i in client.zrevrange(keys.regulations, 0, max(0, limit - 1))]
    found = [read(client, keys, i) for i in ids]
    return [r for r in found if r is not None]
