"""The replay engine without processes (SPEC 15): checkpoints and resume (the report cut back),
duplicates through the ledger and ``--force``, suppression, the window, and the pacing."""

from __future__ import annotations

import gzip
from pathlib import Path
from typing import Any

import fakeredis
import orjson
import pytest

from connector import regions
from connector.config import Connection, DestinationSettings, VoucherifySettings
from connector.keys import Keys
from connector.secrets import Secret
from ops.replay_run import CHUNK_EVENTS, Options, Replay
from ops.replay_source import Source
from workers.mapping.destination import map_event_detailed

KEYS = Keys("connector:")


def connection(backlog_limit: int = 100_000) -> Connection:
    vf = VoucherifySettings(
        app_id=Secret("app-id-for-tests"),
        secret_key=Secret("secret-key-for-tests"),
        region="eu",
        api_url=None,
        mode="rest",
        base_url=regions.voucherify_base_url("eu", "rest", None),
        queue=regions.voucherify_queue("eu", None),
    )
    return Connection(
        id="acme",
        write_keys=(),
        voucherify=vf,
        destination=DestinationSettings(),
        backlog_limit=backlog_limit,
    )


class Recording:
    """The Enqueuer's ``segment_events``, recorded; ``die_after``: raise after that many
    publishes (the process killed between a publish and its checkpoint)."""

    def __init__(self, die_after: int | None = None) -> None:
        self.published: list[list[dict[str, Any]]] = []
        self.die_after = die_after

    def segment_events(
        self, connection: Connection, events: list[Any], shared: dict[str, Any], size: int
    ) -> None:
        self.published.append([orjson.loads(orjson.dumps(e)) for e in events])
        assert shared["door"] == "replay" and size > 0
        if self.die_after is not None and len(self.published) >= self.die_after:
            raise KeyboardInterrupt

    def ids(self) -> list[str]:
        return [e["messageId"] for chunk in self.published for e in chunk]


def archive(path: Path, n: int = 1000, bad_every: int = 97) -> tuple[list[str], list[int]]:
    ids, bad, lines = [], [], []
    for i in range(n):
        if i % bad_every == 5:
            lines.append(b"{broken")
            bad.append(i + 1)
            continue
        ids.append(f"m-{i}")
        event = {
            "type": "track",
            "messageId": f"m-{i}",
            "userId": f"u-{i % 50}",
            "event": "Order Completed",
            "timestamp": f"2026-03-01T10:{i % 60:02d}:00.000Z",
        }
        lines.append(orjson.dumps(event))
    half = len(lines) // 2
    path.write_bytes(
        gzip.compress(b"\n".join(lines[:half]) + b"\n") + gzip.compress(b"\n".join(lines[half:]) + b"\n")
    )
    return ids, bad


def replay(client: Any, enqueuer: Recording, report: Path, **kw: Any) -> Replay:
    options = Options(kw.pop("conn", connection()), report=report, **kw)
    return Replay(options, client, KEYS, enqueuer, sleep=kw.get("sleep", lambda s: None))


@pytest.fixture
def client() -> Any:
    return fakeredis.FakeRedis()


def test_killed_after_a_publish_then_resumed_sends_all_and_reports_each_rejection_once(
    tmp_path: Path, client: Any
) -> None:
    path = tmp_path / "archive.json.gz"
    ids, bad = archive(path)
    report = tmp_path / "rejected.jsonl"
    first = Recording(die_after=4)
    with pytest.raises(KeyboardInterrupt):
        replay(client, first, report).run(Source(str(path)))
    assert len(first.ids()) == 4 * CHUNK_EVENTS
    second = Recording()
    tally = replay(client, second, report, resume=True).run(Source(str(path)))
    sent = first.ids() + second.ids()
    assert set(sent) == set(ids)
    assert len(sent) - len(set(sent)) <= CHUNK_EVENTS  # at most the unconfirmed chunk again
    assert second.ids()[0] == first.ids()[3 * CHUNK_EVENTS]  # resumed from the last checkpoint
    rejected = [orjson.loads(line) for line in report.read_bytes().splitlines()]
    assert [r["line"] for r in rejected] == bad  # each once, with its line number
    assert tally.rejected == {"invalid_json": len(bad)} and tally.lines == len(ids) + len(bad)
    assert tally.accepted == len(ids) and tally.done
    again = Recording()
    assert replay(client, again, report, resume=True).run(Source(str(path))).done and again.published == []


def test_delivered_events_are_skipped_unless_forced(tmp_path: Path, client: Any) -> None:
    path = tmp_path / "archive.jsonl"
    events = [{"type": "track", "messageId": f"m-{i}", "userId": "u", "event": "E"} for i in range(10)]
    path.write_bytes(b"\n".join(orjson.dumps(e) for e in events) + b"\n")
    for event in events[:6]:  # delivered earlier: their requests' ledger keys are done
        for request in map_event_detailed(
            dict(event, receivedAt="2026-01-01T00:00:00Z"), connection()
        ).requests:
            client.set(KEYS.ledger("acme", request.idempotency_key), "done")
    plain = Recording()
    tally = replay(client, plain, tmp_path / "r.jsonl").run(Source(str(path)))
    assert plain.ids() == [f"m-{i}" for i in range(6, 10)] and tally.skipped == {"duplicate": 6}
    forced = Recording()
    tally = replay(client, forced, tmp_path / "r.jsonl", force=True).run(Source(str(path)))
    assert len(forced.ids()) == 10 and tally.forced == 6
    assert [i.split("~")[0] for i in forced.ids()] == [f"m-{i}" for i in range(10)]
    assert all("~replay-" in i for i in forced.ids()[:6])


def test_suppressed_users_and_the_window(tmp_path: Path, client: Any) -> None:
    from datetime import UTC, datetime

    client.sadd(KEYS.suppressed("acme"), "gone")
    path = tmp_path / "archive.jsonl"
    rows = [
        {
            "type": "track",
            "messageId": "a",
            "userId": "gone",
            "event": "E",
            "timestamp": "2026-03-01T12:00:00Z",
        },
        {
            "type": "track",
            "messageId": "b",
            "userId": "kept",
            "event": "E",
            "timestamp": "2026-03-01T12:00:00Z",
        },
        {
            "type": "track",
            "messageId": "c",
            "userId": "kept",
            "event": "E",
            "timestamp": "2026-02-28T12:00:00Z",
        },
        {
            "type": "track",
            "messageId": "d",
            "userId": "kept",
            "event": "E",
            "timestamp": "2026-03-02T00:00:00Z",
        },
        {
            "type": "track",
            "messageId": "e",
            "userId": "kept",
            "event": "E",
            "integrations": {"All": False},
            "timestamp": "2026-03-01T13:00:00Z",
        },
    ]
    path.write_bytes(b"\n".join(orjson.dumps(r) for r in rows))
    rec = Recording()
    tally = replay(
        client,
        rec,
        tmp_path / "r.jsonl",
        start=datetime(2026, 3, 1, tzinfo=UTC),
        end=datetime(2026, 3, 2, tzinfo=UTC),
    ).run(Source(str(path)))
    assert rec.ids() == ["b"]
    assert tally.skipped == {"suppressed": 1, "outside_window": 2, "integrations": 1}


def test_the_replay_waits_while_the_backlog_is_above_half_its_bound(tmp_path: Path, client: Any) -> None:
    path = tmp_path / "archive.jsonl"
    path.write_bytes(
        b"\n".join(
            orjson.dumps({"type": "track", "messageId": f"m{i}", "userId": "u", "event": "E"})
            for i in range(30)
        )
    )
    client.set(KEYS.backlog("acme"), 90)  # live work: 90 of a bound of 100
    waits: list[int] = []

    def drain(seconds: float) -> None:  # the workers finish 10 events per wait
        left = int(client.get(KEYS.backlog("acme")))
        waits.append(left)
        client.set(KEYS.backlog("acme"), max(0, left - 10))

    class Checking(Recording):
        def segment_events(self, *args: Any) -> None:
            # What the live door's reserve would see: the replay's 30 on top of what is left.
            assert int(client.get(KEYS.backlog("acme"))) + 30 <= 50
            super().segment_events(*args)

    rec = Checking()
    options = Options(connection(backlog_limit=100), report=tmp_path / "r.jsonl")
    engine = Replay(options, client, KEYS, rec, sleep=drain)
    said: list[str] = []
    engine.say = said.append
    engine.run(Source(str(path)))
    assert len(rec.ids()) == 30 and waits == [90, 80, 70, 60, 50, 40, 30]
    assert len(said) == 1 and "waiting: the backlog holds 90 events" in said[0]  # not a silent hang


def test_progress_plain_lines_off_a_terminal_and_a_bar_on_one(capsys: pytest.CaptureFixture[str]) -> None:
    from ops.replay import Progress
    from ops.replay_run import Tally

    tally = Tally(lines=1200, accepted=1100, rejected={"invalid_json": 3}, skipped={"duplicate": 97})
    Progress(bar=False)("archive.json.gz", tally, 500, 1000, "")
    line = capsys.readouterr().err
    assert "archive.json.gz 50%: read 1,200 accepted 1,100 rejected 3 skipped 97" in line
    bar = Progress(bar=True)
    bar("archive.json.gz", tally, 500, 1000, "")
    bar.close()
    drawn = capsys.readouterr().err
    assert "archive.json.gz" in drawn and "accepted 1,100" in drawn and "50%" in drawn
