# ruff: noqa: F811 - pytest fixtures imported from tests.support.delivery
"""Dead letters: list / show / replay / purge, in Python and through ``connector dlq``."""

from __future__ import annotations

import time
from typing import Any

import orjson
import pytest
import redis
from click.testing import CliRunner

from connector.contract import DESTINATION, SOURCE, TASK_DELIVER, TASK_SEGMENT_EVENTS
from connector.keys import Keys
from ops import cli
from tests.support.delivery import (  # noqa: F401 - fixtures
    FakeTransport,
    client,
    connection,
    keys,
    redis_db_url,
    rt,
    sent_ids,
    simple_mapper,
    transport,
)
from workers import mapped, pipeline
from workers.delivery.deadletters import DeadLetter, DeadLetters
from workers.runtime import Runtime


def _record(connection_id: str = "acme", reason: str = "rejected", age: float = 0.0, **kw: Any) -> DeadLetter:
    return DeadLetter(
        connection_id=connection_id,
        direction=kw.pop("direction", DESTINATION),
        reason=reason,
        error="HTTP 400",
        queue="voucherify.eu",
        payload={"messageId": kw.pop("mid", "m1"), "type": "track", "userId": "u1"},
        request=kw.pop("request", None),
        status=400,
        dead_lettered_at=time.time() - age,
        **kw,
    )


class Recorder:
    def __init__(self) -> None:
        self.calls: list[tuple[str, list[Any], str]] = []

    def __call__(self, task: str, args: list[Any], queue: str) -> None:
        self.calls.append((task, orjson.loads(orjson.dumps(args)), queue))


def test_list_filters_and_show(client: redis.Redis, keys: Keys) -> None:
    store = DeadLetters(client, keys)
    a = store.add(_record("acme", "rejected", age=7200, mid="old"))
    b = store.add(_record("acme", "mapping_error", age=60, mid="new"))
    c = store.add(_record("other", "rejected", age=10, mid="other"))
    assert [r.id for r in store.select()] == [c, b, a]  # newest first
    assert [r.id for r in store.select(connection="acme")] == [b, a]
    assert [r.id for r in store.select(reason="rejected")] == [c, a]
    assert [r.id for r in store.select(older_than=3600)] == [a]
    assert [r.id for r in store.select(newer_than=120)] == [c, b]
    assert [r.id for r in store.select(limit=1)] == [c]
    shown = store.get(b)
    assert shown is not None and shown.payload["messageId"] == "new" and shown.reason == "mapping_error"
    assert store.get("nope") is None


def test_records_are_bounded(client: redis.Redis, keys: Keys) -> None:
    store = DeadLetters(client, keys)
    big = _record(response_excerpt="x" * 10_000, history=[{"t": i} for i in range(200)])
    big.payload = {"blob": "y" * 400_000}
    record = store.get(store.add(big))
    assert record is not None
    assert len(record.response_excerpt) <= 2048 and len(record.history) == 50
    assert record.payload["_truncated"] is True


def test_replay_reuses_the_idempotency_key_and_delivers_once(
    rt: Runtime, transport: FakeTransport, keys: Keys, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(mapped, "map_event", simple_mapper)
    conn = rt.settings.connections[0]
    transport.reply(400)  # the target rejects it ... then it is fixed
    pipeline.process_segment_events(rt, conn, conn.id, [{"type": "track", "messageId": "m1", "userId": "u1"}])
    store = DeadLetters(rt.redis, keys)
    [dead] = store.select()
    publish = Recorder()
    assert store.replay([dead], publish) == [dead.id]
    assert store.select() == []
    [(task, args, queue)] = publish.calls
    assert task == TASK_DELIVER and queue == "voucherify.eu" and args[:2] == ["acme", DESTINATION]
    item = args[2][0]
    assert item["request"]["idempotency_key"] == "acme:v:m1:add_custom_event"
    assert item["first_attempt_at"] is None and item["backlog"] == 0
    # The worker runs it: delivered once, and a second replay of the same letter is a duplicate.
    pipeline.process_deliveries(rt, conn, *args)
    pipeline.process_deliveries(rt, conn, *args)
    assert sent_ids(transport) == ["m1", "m1"]  # the rejected attempt, then exactly one delivery
    assert transport.calls[-1].headers["Idempotency-Key"] == "acme:v:m1:add_custom_event"


def test_replay_of_a_mapping_error_remaps_the_event(client: redis.Redis, keys: Keys) -> None:
    store = DeadLetters(client, keys)
    store.add(_record(reason="mapping_error"))
    publish = Recorder()
    store.replay(store.select(), publish, queue_for={"acme": {DESTINATION: "voucherify.us1"}})
    [(task, args, queue)] = publish.calls
    assert task == TASK_SEGMENT_EVENTS and args == [
        "acme",
        [{"messageId": "m1", "type": "track", "userId": "u1"}],
    ]
    assert queue == "voucherify.us1"  # the connection's current queue wins


def test_replay_keeps_the_record_when_publishing_fails(client: redis.Redis, keys: Keys) -> None:
    store = DeadLetters(client, keys)
    store.add(_record(request={"idempotency_key": "k"}))

    def broken(task: str, args: list[Any], queue: str) -> None:
        raise ConnectionError("broker away")

    with pytest.raises(ConnectionError):
        store.replay(store.select(), broken)
    assert len(store.select()) == 1


def test_purge(client: redis.Redis, keys: Keys) -> None:
    store = DeadLetters(client, keys)
    store.add(_record("acme"))
    store.add(_record("other"))
    assert store.purge(store.select(connection="acme")) == 1
    assert [r.connection_id for r in store.select()] == ["other"]


# --- the CLI ------------------------------------------------------------------------------------


@pytest.fixture
def runner(keys: Keys, redis_db_url: str, monkeypatch: pytest.MonkeyPatch) -> CliRunner:
    monkeypatch.setenv("REDIS_URL", redis_db_url)
    monkeypatch.setenv("CONNECTOR_KEY_PREFIX", keys.prefix)
    monkeypatch.delenv("CONNECTIONS_FILE", raising=False)
    return CliRunner()


def test_cli_list_json_and_table(runner: CliRunner, client: redis.Redis, keys: Keys) -> None:
    store = DeadLetters(client, keys)
    first = store.add(_record("acme", "rejected", age=7200))
    second = store.add(_record("other", "retry_window_exceeded", direction=SOURCE))
    result = runner.invoke(cli.main, ["dlq", "list", "--json"])
    assert result.exit_code == 0, result.output
    rows = orjson.loads(result.stdout)
    assert [r["id"] for r in rows] == [second, first]
    assert rows[1]["connection"] == "acme" and rows[1]["reason"] == "rejected" and rows[1]["status"] == 400
    filtered = orjson.loads(runner.invoke(cli.main, ["dlq", "list", "--older-than", "1h", "--json"]).stdout)
    assert [r["id"] for r in filtered] == [first]
    filtered = orjson.loads(runner.invoke(cli.main, ["dlq", "list", "-c", "other", "--json"]).stdout)
    assert [r["id"] for r in filtered] == [second]
    table = runner.invoke(cli.main, ["dlq", "list"])
    assert table.exit_code == 0 and "CONNECTION" in table.output and first in table.output
    bad = runner.invoke(cli.main, ["dlq", "list", "--older-than", "soon"])
    assert bad.exit_code != 0


def test_cli_show(runner: CliRunner, client: redis.Redis, keys: Keys) -> None:
    entry = DeadLetters(client, keys).add(_record())
    shown = runner.invoke(cli.main, ["dlq", "show", entry, "--json"])
    assert shown.exit_code == 0, shown.output
    data = orjson.loads(shown.stdout)
    assert data["id"] == entry and data["payload"]["messageId"] == "m1" and data["error"] == "HTTP 400"
    human = runner.invoke(cli.main, ["dlq", "show", entry])
    assert human.exit_code == 0 and "reason" in human.output
    assert runner.invoke(cli.main, ["dlq", "show", "missing"]).exit_code != 0


def test_cli_replay_and_purge(
    runner: CliRunner, client: redis.Redis, keys: Keys, monkeypatch: pytest.MonkeyPatch
) -> None:
    store = DeadLetters(client, keys)
    first = _record("acme", request={"idempotency_key": "k1", "message_id": "m1"})
    first.dead_lettered_at = time.time() - 1  # list order (newest first) must not hang on a millisecond
    a = store.add(first)
    b = store.add(_record("other"))
    publish = Recorder()
    monkeypatch.setattr("connector.publish.celery_publish", publish)
    assert runner.invoke(cli.main, ["dlq", "replay"]).exit_code != 0  # nothing selected: refuse
    dry = runner.invoke(cli.main, ["dlq", "replay", "--all", "--dry-run", "--json"])
    assert orjson.loads(dry.stdout) == {"replayed": [b, a], "dry_run": True} and publish.calls == []
    done = runner.invoke(cli.main, ["dlq", "replay", a, "--json"])
    assert done.exit_code == 0, done.output
    assert orjson.loads(done.stdout)["replayed"] == [a]
    assert publish.calls[0][0] == TASK_DELIVER
    purged = runner.invoke(cli.main, ["dlq", "purge", "--all", "--yes", "--json"])
    assert orjson.loads(purged.stdout)["count"] == 1
    assert store.count() == 0


# --- the batch's shared objects: one refcounted copy per connection ------------------------------


def _sharing(connection_id: str, mid: str, blob: bytes) -> DeadLetter:
    return _record(connection_id, mid=mid, shared="d1", shared_blob=blob)


def _base_bytes(client: redis.Redis, keys: Keys, connection_id: str, ids: list[str]) -> int:
    """The bytes of the bases (the fields letters of one failure share) of ``ids``, once each."""
    refs = {orjson.loads(client.hget(keys.dlq_data, i) or b"{}").get("base") for i in ids}
    return sum(len(client.hget(keys.dlq_shared, f"{connection_id}:{r}") or b"") for r in refs if r)


def test_the_shared_copy_lives_exactly_as_long_as_its_last_letter(client: redis.Redis, keys: Keys) -> None:
    # Three letters of one batch (same digest) and one of another connection with the same
    # digest: each connection keeps its own copy (its bytes are its own bound), counted once.
    store = DeadLetters(client, keys)
    blob = orjson.dumps({"context": {"traits": {"plan": "gold" * 1000}}})
    ids = [store.add(_sharing("acme", f"m{i}", blob)) for i in range(3)]
    other = store.add(_sharing("other", "o1", blob))

    def shared() -> dict[str, int]:
        # The references: the letters' base (per connection) and the batch objects it refers.
        refs = client.hgetall(keys.dlq_shared_refs)
        return {":".join(k.decode().split(":")[:2]).replace(":b", ":base"): int(v) for k, v in refs.items()}

    assert shared() == {"acme:base": 3, "acme:d1": 1, "other:base": 1, "other:d1": 1}
    assert client.hexists(keys.dlq_shared, "acme:d1")
    records = sum(len(client.hget(keys.dlq_data, i) or b"") for i in ids)
    # The copy counted once, not per letter (so is the letters' base: one failure's fields).
    assert store.bytes_of("acme") == records + len(blob) + _base_bytes(client, keys, "acme", ids)

    # Purged: one letter fewer, the copy stays for the two left (and is still merged back).
    assert store.purge([r for r in store.select(connection="acme") if r.id == ids[0]]) == 1
    assert shared() == {"acme:base": 2, "acme:d1": 1, "other:base": 1, "other:d1": 1}
    kept = store.get(ids[1])
    assert kept is not None and kept.payload["context"]["traits"]["plan"].startswith("gold")

    # Replayed: removed once published, the copy stays for the last one.
    publish = Recorder()
    assert store.replay([r for r in store.select(connection="acme") if r.id == ids[1]], publish) == [ids[1]]
    assert publish.calls[0][1][1][0]["context"]["traits"]["plan"].startswith("gold")  # replayed whole
    assert shared() == {"acme:base": 1, "acme:d1": 1, "other:base": 1, "other:d1": 1}
    assert client.hexists(keys.dlq_shared, "acme:d1")

    # The last letter goes: so do the copy, its count and the connection's bytes.
    assert store.purge(store.select(connection="acme")) == 1
    assert shared() == {"other:base": 1, "other:d1": 1}
    assert not client.hexists(keys.dlq_shared, "acme:d1")
    assert store.bytes_of("acme") == 0 and not client.hexists(keys.dlq_bytes, "acme")
    # The other connection's copy never moved.
    assert client.hexists(keys.dlq_shared, "other:d1") and store.get(other) is not None
    assert store.bytes_of("other") == len(client.hget(keys.dlq_data, other) or b"") + len(blob) + _base_bytes(
        client, keys, "other", [other]
    )


def test_adding_the_same_letter_again_counts_its_shared_copy_once(client: redis.Redis, keys: Keys) -> None:
    # A record written again under its id (a retried add, a flusher's add_then_trim after a lost
    # answer) replaces the old one: the shared copy's count must not grow, else the copy (and the
    # connection's bytes) outlive the last letter forever.
    store = DeadLetters(client, keys)
    blob = orjson.dumps({"context": {"traits": {"plan": "gold" * 1000}}})
    first = store.add(_sharing("acme", "m1", blob))
    again = _sharing("acme", "m1", blob)
    again.id = first
    assert store.add(again) == first
    assert int(client.hget(keys.dlq_shared_refs, "acme:d1") or 0) == 1
    base = _base_bytes(client, keys, "acme", [first])
    assert store.bytes_of("acme") == len(client.hget(keys.dlq_data, first) or b"") + len(blob) + base

    # Written again without its shared objects (they expired): the old reference is released.
    bare = _sharing("acme", "m1", blob)
    bare.id, bare.shared_blob = first, None
    store.add(bare)
    assert not client.hexists(keys.dlq_shared_refs, "acme:d1")
    assert not client.hexists(keys.dlq_shared, "acme:d1")

    assert store.purge(store.select(connection="acme")) == 1
    assert not client.exists(keys.dlq_shared, keys.dlq_shared_refs)
    assert store.bytes_of("acme") == 0 and not client.hexists(keys.dlq_bytes, "acme")


# --- the fields letters of one failure share: stored once ---------------------------------------


def test_letters_of_one_failure_store_their_shared_fields_once_and_read_whole(
    client: redis.Redis, keys: Keys
) -> None:
    # 2,000 invalid events of a batch made 2,000 records each repeating the direction, queue,
    # reason and error (~200 B) and the time (the index's score): test_memory_budget_e2e.
    store = DeadLetters(client, keys)
    ids = [store.add(_record(mid=f"m{i}", age=i)) for i in range(3)]
    raw = orjson.loads(client.hget(keys.dlq_data, ids[0]) or b"{}")
    assert not {"direction", "queue", "reason", "error", "dead_lettered_at"} & set(raw)
    [base] = {orjson.loads(client.hget(keys.dlq_data, i) or b"{}")["base"] for i in ids}
    assert int(client.hget(keys.dlq_shared_refs, f"acme:{base}") or 0) == 3
    records = sum(len(client.hget(keys.dlq_data, i) or b"") for i in ids)
    assert store.bytes_of("acme") == records + _base_bytes(client, keys, "acme", ids)

    # Read whole: by id, listed (newest first), filtered by what the base holds.
    got = store.get(ids[2])
    assert got is not None and (got.direction, got.reason, got.error, got.queue) == (
        DESTINATION,
        "rejected",
        "HTTP 400",
        "voucherify.eu",
    )
    assert abs(got.dead_lettered_at - (time.time() - 2)) < 1.5
    assert [r.id for r in store.select(reason="rejected", direction=DESTINATION)] == ids
    assert store.select(reason="mapping_error") == []
    assert [r.id for r in store.select(older_than=1.5)] == [ids[2]]

    # A letter of another failure has its own base; the last letter of one takes its base along.
    other = store.add(_record(mid="x", reason="mapping_error"))
    assert store.counts() == {"acme": 4}
    assert store.purge(store.select(reason="rejected")) == 3
    assert not client.hexists(keys.dlq_shared, f"acme:{base}")
    assert store.bytes_of("acme") == len(client.hget(keys.dlq_data, other) or b"") + _base_bytes(
        client, keys, "acme", [other]
    )
    assert store.purge(store.select()) == 1
    assert not client.exists(keys.dlq_shared, keys.dlq_shared_refs, keys.dlq_data)
    assert store.bytes_of("acme") == 0 and store.counts() == {}


def test_a_letter_of_the_previous_format_still_reads_counts_and_goes(client: redis.Redis, keys: Keys) -> None:
    # An upgrade keeps the dead letters written before bases: whole records, their own time,
    # their own reference to the batch objects (shared with a new letter's base here).
    store = DeadLetters(client, keys)
    blob = orjson.dumps({"context": {"traits": {"plan": "gold"}}})
    old = {
        "connection_id": "acme",
        "direction": DESTINATION,
        "reason": "rejected",
        "error": "HTTP 400",
        "queue": "voucherify.eu",
        "payload": {"messageId": "m0", "type": "track", "userId": "u1"},
        "status": 400,
        "dead_lettered_at": 1700000000.5,
        "shared": "d1",
    }
    raw = orjson.dumps(old)
    client.zadd(keys.dlq, {"old-1": 1700000000500})
    client.hset(keys.dlq_data, "old-1", raw)
    client.hset(keys.dlq_shared, "acme:d1", blob)
    client.hset(keys.dlq_shared_refs, "acme:d1", 1)
    client.hset(keys.dlq_counts, "acme", 1)
    client.hset(keys.dlq_bytes, "acme", len(raw) + len(blob))
    new = store.add(_sharing("acme", "m1", blob))
    assert int(client.hget(keys.dlq_shared_refs, "acme:d1") or 0) == 2  # the old letter, the new base

    got = store.get("old-1")
    assert got is not None and got.dead_lettered_at == 1700000000.5 and got.error == "HTTP 400"
    assert got.payload["context"]["traits"]["plan"] == "gold"
    assert [r.id for r in store.select(reason="rejected")] == [new, "old-1"]
    assert store.counts() == {"acme": 2}
    assert store.purge([got]) == 1
    assert store.bytes_of("acme") == len(client.hget(keys.dlq_data, new) or b"") + len(blob) + _base_bytes(
        client, keys, "acme", [new]
    )
    fresh = store.get(new)
    assert fresh is not None and fresh.payload["context"]["traits"]["plan"] == "gold"
    assert store.purge([fresh]) == 1
    assert not client.exists(keys.dlq_shared, keys.dlq_shared_refs, keys.dlq_data, keys.dlq_bytes)
