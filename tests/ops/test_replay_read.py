"""``connector replay``'s readers and rejections (SPEC 15), without processes: JSONL plain and
gzip (several members, one unreadable), restart positions, CSVs, and the ingest's checks."""

from __future__ import annotations

import gzip
import io
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import orjson
import pytest

from connector.quotas import QuotaSettings
from ops import replay_forecast as fc
from ops import replay_read as rr
from ops.replay_source import prepare

START = rr.Position()


def _event(n: int, **extra: Any) -> bytes:
    body = {"type": "track", "messageId": f"m-{n}", "userId": f"u-{n}", "event": "E", **extra}
    return orjson.dumps(body)


def _read(data: bytes, start: rr.Position = START, *, gz: bool = False, seekable: bool = True):
    stream = io.BytesIO(data)
    if seekable:
        stream.seek(start.seek)
    return list(rr.archive(stream, start, gz=gz, seekable=seekable))


def test_plain_lines_with_their_numbers_and_problems() -> None:
    lines = [_event(1), b"{not json", b"", b"[1, 2]", _event(5), b"   ", _event(7)]
    records = _read(b"\n".join(lines) + b"\n")
    assert [(r.line, r.problem[0] if r.problem else r.event["messageId"]) for r in records] == [
        (1, "m-1"),
        (2, "invalid_json"),
        (4, "not_an_object"),
        (5, "m-5"),
        (7, "m-7"),
    ]


def test_the_last_line_without_a_newline_is_read() -> None:
    records = _read(_event(1) + b"\n" + _event(2))
    assert [r.event["messageId"] for r in records if r.event] == ["m-1", "m-2"]


@pytest.mark.parametrize("gz", [False, True], ids=["plain", "gzip"])
@pytest.mark.parametrize("seekable", [True, False], ids=["file", "stdin"])
def test_restarting_after_any_record_reads_exactly_the_rest(gz: bool, seekable: bool) -> None:
    lines = [_event(n) if n % 7 else b"broken" for n in range(1, 60)]
    if gz:  # three members, as `cat a.gz b.gz c.gz` makes
        data = b"".join(
            gzip.compress(b"\n".join(lines[i : i + 20]) + b"\n") for i in range(0, len(lines), 20)
        )
    else:
        data = b"\n".join(lines) + b"\n"
    whole = _read(data, gz=gz, seekable=seekable)
    assert len(whole) == 59
    for cut in (0, 5, 19, 20, 21, 40, 58):
        rest = _read(data, whole[cut].resume, gz=gz, seekable=seekable)
        assert [r.line for r in rest] == [r.line for r in whole[cut + 1 :]], cut
        assert [r.event for r in rest] == [r.event for r in whole[cut + 1 :]]


def test_an_unreadable_gzip_member_is_one_rejection_and_the_rest_is_read() -> None:
    good1 = gzip.compress(b"\n".join(_event(n) for n in range(1, 11)) + b"\n")
    broken = bytearray(gzip.compress(b"\n".join(_event(n) for n in range(100, 200)) + b"\n"))
    broken[20:40] = b"\x00" * 20  # the deflate stream damaged
    good2 = gzip.compress(b"\n".join(_event(n) for n in range(11, 21)) + b"\n")
    records = _read(good1 + bytes(broken) + good2, gz=True)
    problems = [r for r in records if r.problem]
    assert [p.problem[0] for p in problems] == ["unreadable_gzip"]
    assert "byte" in problems[0].problem[1]
    delivered = {r.event["messageId"] for r in records if r.event}
    assert {f"m-{n}" for n in range(1, 21)} <= delivered


def test_garbage_after_the_members_and_a_truncated_member_are_reported() -> None:
    good = gzip.compress(_event(1) + b"\n")
    truncated = gzip.compress(b"\n".join(_event(n) for n in range(2, 200)) + b"\n")[:-30]
    records = _read(good + b"junk" + good + truncated, gz=True)
    assert [r.problem[0] for r in records if r.problem] == ["unreadable_gzip", "unreadable_gzip"]
    assert sum(1 for r in records if r.event and r.event["messageId"] == "m-1") == 2


def test_a_line_too_long_is_rejected_without_being_held(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(rr, "MAX_LINE_BYTES", 1000)
    data = _event(1) + b"\n" + b"x" * 5000 + b"\n" + _event(3) + b"\n"
    records = _read(data)
    assert [(r.line, r.problem[0] if r.problem else "ok") for r in records] == [
        (1, "ok"),
        (2, "line_too_long"),
        (3, "ok"),
    ]


# --- CSV --------------------------------------------------------------------------------------

WHEN = "2026-01-01T00:00:00.000Z"


def _csv(text: str, start: rr.Position = START, gz: bool = False) -> list[rr.Record]:
    data = text.encode()
    return list(
        rr.customers(io.BytesIO(gzip.compress(data) if gz else data), start, gz=gz, default_time=WHEN)
    )


@pytest.mark.parametrize("gz", [False, True], ids=["plain", "gzip"])
def test_csv_rows_become_identifies_with_traits(gz: bool) -> None:
    records = _csv(
        "userId,email,address.city,metadata.tier,note\n"
        'c1,a@x.io,Berlin,gold,"two\nlines"\n'
        "c2,b@x.io,,silver,\n"
        ",c@x.io,Rome,,\n",
        gz=gz,
    )
    assert [r.line for r in records] == [2, 4, 5]
    first = records[0].event
    assert first["userId"] == "c1" and first["type"] == "identify" and first["timestamp"] == WHEN
    assert first["traits"] == {
        "email": "a@x.io",
        "address": {"city": "Berlin"},
        "metadata": {"tier": "gold"},
        "note": "two\nlines",
    }
    assert records[1].event["traits"] == {"email": "b@x.io", "metadata": {"tier": "silver"}}
    assert "userId" not in records[2].event  # rejected by the ingest's check (below)
    again = _csv("userId,email,address.city,metadata.tier,note\nc2,b@x.io,,silver,\n")
    assert again[0].event["messageId"] == records[1].event["messageId"]  # same row: a duplicate
    rest = _csv("userId,email\nc1,a\nc2,b\nc3,c\n", records[0].resume.__class__(2))
    assert [r.event["userId"] for r in rest] == ["c2", "c3"]


def test_a_csv_without_user_id_is_refused_as_a_whole() -> None:
    with pytest.raises(rr.FileRejected) as caught:
        _csv("id,email\n1,a@x.io\n")
    assert caught.value.code == "missing_user_id_column"
    assert "no userId column" in caught.value.message and "id, email" in caught.value.message


def test_csv_rows_of_the_wrong_width_are_rejected() -> None:
    records = _csv("userId,email\nc1,a,extra\nc2,b\n")
    assert [(r.line, r.problem[0] if r.problem else r.event["userId"]) for r in records] == [
        (2, "invalid_csv"),
        (3, "c2"),
    ]


# --- the ingest's checks, with the archived time kept ----------------------------------------

NOW = datetime(2026, 6, 1, tzinfo=UTC)


def test_prepare_keeps_the_archived_timestamp_and_rejects_as_the_ingest() -> None:
    archived = {
        "type": "identify",
        "userId": "u1",
        "messageId": "m1",
        "timestamp": "2025-03-01T10:00:00.000Z",
        "originalTimestamp": "2025-03-01T09:59:00.000Z",
        "sentAt": "2025-03-01T10:05:00.000Z",
        "receivedAt": "2025-03-01T10:00:01.000Z",
    }
    event, encoded = prepare(archived, NOW)
    assert event["timestamp"] == "2025-03-01T10:00:00.000Z"  # not corrected against today
    assert event["originalTimestamp"] == "2025-03-01T09:59:00.000Z"
    assert "sentAt" not in event and "receivedAt" not in event
    assert orjson.loads(encoded)["messageId"] == "m1"
    assert prepare({"type": "track", "event": "E"}, NOW) == (
        "missing_identity",
        "every event needs a userId or an anonymousId",
    )
    assert prepare({"type": "nope", "userId": "u"}, NOW)[0] == "invalid_type"
    assert prepare({"type": "track", "userId": "u", "timestamp": "yesterday"}, NOW)[0] == "invalid_timestamp"


def test_an_event_without_message_id_gets_the_same_one_every_time() -> None:
    item = {"type": "track", "userId": "u", "event": "E", "timestamp": "2025-01-01T00:00:00Z"}
    first, _ = prepare(dict(item), NOW)
    second, _ = prepare(dict(item), datetime(2026, 7, 1, tzinfo=UTC))
    assert first["messageId"] == second["messageId"] and first["messageId"].startswith("replay-")


# --- the forecast's arithmetic ----------------------------------------------------------------


def test_forecast_of_a_million_customers() -> None:
    business = fc.plan_quota("business")  # 100/min at share 0.5, no bulk, 100,000 per cycle
    calls = fc.calls_for(1_000_000, 0, business)
    assert (calls.single, calls.bulk) == (1_000_000, 0)
    assert fc.seconds_for(calls, business) == pytest.approx(1_000_000 / 50 * 60)
    assert fc.cycles_needed(calls, business) == 20
    # 25 bulks an hour; a replay's bulks hold 5,000 customers (the 10 MB body Voucherify takes,
    # capped for the worker's memory), not the 100 of live traffic.
    professional = fc.plan_quota("professional")
    calls = fc.calls_for(1_000_000, 0, professional)
    assert (calls.bulk, calls.single) == (200, 200)  # each bulk read back once
    assert fc.seconds_for(calls, professional) == pytest.approx(200 / 25 * 3600)
    # Four identifies a customer: a bulk carries at most 8,000 of them (the worker's memory).
    versions = fc.calls_for(1_000_000, 0, professional, upserts=4_000_000)
    assert (versions.bulk, versions.single) == (500, 500)
    webhook = fc.calls_for(1_000_000, 0, business, "segmentio")
    assert fc.seconds_for(webhook, business) == pytest.approx(1_000_000 / 72_000 * 86400)
    assert fc.seconds_for(fc.Calls(10, 0), QuotaSettings()) is None


def test_distinct_customers_in_constant_memory() -> None:
    counter = fc.DistinctCounter(k=1024)
    for n in range(50_000):
        counter.add(f"c{n % 20_000}")
    assert abs(counter.count() - 20_000) < 20_000 * 0.1
    small = fc.DistinctCounter()
    for n in range(300):
        small.add(f"c{n % 100}")
    assert small.count() == 100


def test_the_docs_table_is_computed(tmp_path: Path) -> None:
    rows = {(r["plan"], r["mode"]): r for r in fc.backfill_table()}
    assert rows[("organization", "rest")]["seconds"] == pytest.approx(1_000_000 / 1000 * 60)
    assert rows[("organization", "rest")]["cycles"] == 7
