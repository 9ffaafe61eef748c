"""Traces and the delivery overview in Redis (connector.trace, connector.overview): what is kept,
for how long, how much, and what sampling drops under load -- against a real Redis."""

from __future__ import annotations

import time

import redis

from connector import overview, trace, tracereader, tracestore
from connector.keys import Keys
from connector.tuning import TraceOptions

KEYS = Keys("tracetest:")


def client_of(url: str) -> redis.Redis:
    return redis.Redis.from_url(url)


def has(client: redis.Redis, connection: str, event_id: str, kind: str | None = None) -> bool:
    """Whether ``event_id`` has a trace on ``connection`` (with a record of ``kind``)."""
    records = tracereader.read(client, KEYS, connection, event_id)
    return any(kind is None or r["kind"] == kind for r in records)


def ttls(client: redis.Redis, connection: str) -> list[int]:
    """The TTLs of the buckets holding ``connection``'s traces."""
    found = tracestore.buckets_of(client, KEYS, connection).get(connection, [])
    return [client.ttl(key) for _, key in found if client.exists(key)]


def test_a_journey_is_read_back_in_order_with_its_ttl(redis_url: str) -> None:
    client = client_of(redis_url)
    rec = trace.Recorder(KEYS, TraceOptions(retention_hours=2), connection="c1")
    rec.received(
        "m-1", connection="c1", direction="segment_to_voucherify", door="tracking_api", at=time.time()
    )
    rec.mapping("m-1", matched=["identify"], not_matched={"track": "trigger did not match"})
    rec.attempt(["m-1"], method="PUT", path="/v1/customers/u1", status=503, latency_ms=12, answer="x" * 5000)
    rec.outcome(["m-1"], connection="c1", outcome="failed", status=503)
    rec.wait(["m-1"], connection="c1", reason="retry", until=time.time() + 5)
    rec.attempt(["m-1"], method="PUT", path="/v1/customers/u1", status=200, latency_ms=9)
    rec.outcome(["m-1"], connection="c1", outcome="delivered", status=200)
    rec.flush(client)

    records = tracereader.read(client, KEYS, "c1", "m-1")
    assert [r["kind"] for r in records] == [
        "received",
        "mapping",
        "attempt",
        "outcome",
        "wait",
        "attempt",
        "outcome",
    ]
    assert len(records[2]["answer"]) <= trace.EXCERPT_CHARS + 1  # cut, never the whole answer
    assert ttls(client, "c1") and all(0 < t <= 2 * 3600 for t in ttls(client, "c1"))
    info = tracereader.summary("m-1", records)
    assert (info["outcome"], info["connection"]) == ("delivered", "c1")
    text = tracereader.render("m-1", records)
    assert "PUT /v1/customers/u1 -> 503" in text and "PUT /v1/customers/u1 -> 200" in text
    assert "not matched: track (trigger did not match)" in text
    assert tracereader.read(client, KEYS, "c1", "unknown-id") == []
    assert tracereader.find(client, KEYS, "unknown-id") == {}


def test_entries_per_id_are_capped_keeping_the_start_and_the_end(redis_url: str) -> None:
    client = client_of(redis_url)
    rec = trace.Recorder(KEYS)
    rec.received("busy", connection="c1", direction="d", door="tracking_api", at=None)
    for i in range(trace.MAX_STEPS * 3):
        rec.wait(["busy"], connection="c1", reason="throttled", until=float(i))
    rec.outcome(["busy"], connection="c1", outcome="dead_letter", reason="retry_window_exceeded")
    rec.flush(client)
    records = tracereader.read(client, KEYS, "c1", "busy")
    assert len([r for r in records if r["kind"] in ("wait", "outcome")]) == trace.MAX_STEPS
    assert records[0]["kind"] == "received"  # the head survives the many waits
    assert records[-1]["outcome"] == "dead_letter"


def test_under_load_delivered_traces_are_sampled_failures_and_skips_always_kept(redis_url: str) -> None:
    client = client_of(redis_url)
    options = TraceOptions(sample_above_per_minute=100)
    # The connection received 1,000 events this minute: keep 1 in 10 delivered traces.
    client.hset(KEYS.overview_minute("busy", overview.minute_of(time.time())), overview.RECEIVED, 1000)
    rec = trace.Recorder(KEYS, options)
    for i in range(500):
        rec.received(f"ok-{i}", connection="busy", direction="d", door="tracking_api", at=None)
        rec.outcome([f"ok-{i}"], connection="busy", outcome="delivered", status=200)
    for i in range(50):
        rec.received(f"dead-{i}", connection="busy", direction="d", door="tracking_api", at=None)
        rec.outcome([f"dead-{i}"], connection="busy", outcome="dead_letter", reason="rejected", status=422)
        rec.outcome([f"skip-{i}"], connection="busy", outcome="skipped", reason="stale")
    rec.flush(client)
    kept = sum(1 for i in range(500) if has(client, "busy", f"ok-{i}"))
    assert 20 <= kept <= 90, kept  # ~50 expected: 1 in 10, by a hash of the id
    assert all(has(client, "busy", f"dead-{i}", "outcome") for i in range(50))
    assert all(has(client, "busy", f"dead-{i}", "received") for i in range(50))
    assert all(has(client, "busy", f"skip-{i}", "outcome") for i in range(50))
    # The same ids are kept whichever process decides (a hash, not a draw); what is dropped
    # is dropped whole (its received record too).
    assert all(trace.sampled(f"ok-{i}", 10) == has(client, "busy", f"ok-{i}") for i in range(500))
    # A quiet connection keeps every delivered trace.
    quiet = trace.Recorder(KEYS, options)
    for i in range(100):
        quiet.outcome([f"calm-{i}"], connection="quiet", outcome="delivered", status=200)
    quiet.flush(client)
    assert all(has(client, "quiet", f"calm-{i}", "outcome") for i in range(100))


def test_keep_one_in() -> None:
    assert trace.keep_one_in(0, 6000) == 1
    assert trace.keep_one_in(6000, 6000) == 1
    assert trace.keep_one_in(6001, 6000) == 2
    assert trace.keep_one_in(60000, 6000) == 10
    assert trace.keep_one_in(10**6, 0) == 1  # 0: never sample


def test_refused_events_traced_are_bounded_per_write(redis_url: str) -> None:
    # A client with a public write key sends invalid events with fresh messageIds as fast as it
    # can: each write period traces at most MAX_REFUSED_PER_FLUSH of them, whatever it sends.
    client = client_of(redis_url)
    rec = trace.Recorder(KEYS, TraceOptions(retention_hours=24))
    for round_ in range(2):
        for i in range(trace.MAX_REFUSED_PER_FLUSH * 5):
            rec.rejected(
                f"hostile-{round_}-{i}",
                connection="c",
                direction="d",
                door="tracking_api",
                code="missing_identity",
            )
        rec.flush(client)
    sent = [f"hostile-{r}-{i}" for r in range(2) for i in range(trace.MAX_REFUSED_PER_FLUSH * 5)]
    kept = [i for i in sent if has(client, "c", i)]
    assert len(kept) == 2 * trace.MAX_REFUSED_PER_FLUSH
    assert tracereader.read(client, KEYS, "c", "hostile-1-0")  # each period starts afresh
    assert ttls(client, "c") and all(
        0 < t <= trace.REFUSED_KEEP_SECONDS for t in ttls(client, "c")
    )  # an hour, not a day
    assert not tracereader.read(client, KEYS, "c", f"hostile-1-{trace.MAX_REFUSED_PER_FLUSH}")
    assert tracestore.forget(client, KEYS, "c", kept) == len(kept)


def test_retention_zero_keeps_no_trace_but_counts(redis_url: str) -> None:
    client = client_of(redis_url)
    rec = trace.Recorder(KEYS, TraceOptions(retention_hours=0))
    rec.outcome(["x"], connection="c", outcome="dead_letter", reason="rejected")
    rec.flush(client)
    assert tracereader.read(client, KEYS, "c", "x") == []
    assert overview.read(client, KEYS, ["c"])["c"]["last_hour"]["dead_letter"] == {"rejected": 1}


def test_overview_counts_per_bucket_with_samples(redis_url: str) -> None:
    client = client_of(redis_url)
    rec = trace.Recorder(KEYS)
    rec.count("c1", overview.RECEIVED, n=7)
    rec.count("c1", overview.REJECTED, "invalid_type", n=2)
    rec.sample("c1", overview.REJECTED, "invalid_type", "bad-1")
    for i in range(8):
        rec.outcome([f"s-{i}"], connection="c1", outcome="skipped", reason="duplicate")
    rec.outcome(["d-1", "d-2"], connection="c1", outcome="delivered", status=200)  # a coalesced call
    rec.outcome(["f-1"], connection="c1", outcome="failed", status=503)
    rec.outcome(["x-1"], connection="c1", outcome="dead_letter", reason="rejected", status=400)
    rec.count("c1", overview.WAITING_QUOTA)
    rec.flush(client)
    # An old minute bucket counts for the day, not for the hour.
    now = time.time()
    old = overview.minute_of(now) - 90
    client.hincrby(KEYS.overview_minute("c1", old), overview.DELIVERED, 100)
    client.expire(KEYS.overview_minute("c1", old), 60)
    data = overview.read(client, KEYS, ["c1", "c2"], now)
    hour = data["c1"]["last_hour"]
    assert hour["received"] == 7 and hour["rejected"] == {"invalid_type": 2}
    assert hour["skipped"] == {"duplicate": 8} and hour["delivered"] == 2 and hour["failed"] == 1
    assert hour["dead_letter"] == {"rejected": 1} and hour["waiting_quota"] == 1
    assert data["c1"]["last_day"]["skipped"] == {"duplicate": 8}
    samples = data["c1"]["samples"]
    assert samples["rejected:invalid_type"] == ["bad-1"]
    assert samples["skipped:duplicate"] == ["s-7", "s-6", "s-5", "s-4", "s-3"]  # newest, capped
    assert samples["dead_letter:rejected"] == ["x-1"] and samples["failed"] == ["f-1"]
    assert data["c2"]["last_hour"]["received"] == 0
    # Bounded: every overview key expires.
    for key in client.scan_iter(match="tracetest:ov:*"):
        assert client.ttl(key) > 0, key


def test_a_redis_error_never_escapes_a_flush() -> None:
    rec = trace.Recorder(KEYS)
    rec.outcome(["x"], connection="c", outcome="dead_letter", reason="rejected")
    rec.flush(redis.Redis(host="127.0.0.1", port=1, socket_connect_timeout=0.2))  # nothing listens


def test_a_connection_reusing_another_connections_ids_cannot_touch_its_trace(redis_url: str) -> None:
    # Ids are the clients' own: "victim"'s event id, reused by "hostile"'s client (refused
    # events, many attempts), must neither push out nor overwrite the victim's records.
    client = client_of(redis_url)
    victim = trace.Recorder(KEYS, TraceOptions(retention_hours=24), connection="victim")
    victim.received("shared-1", connection="victim", direction="d", door="tracking_api", at=None)
    victim.attempt(["shared-1"], method="PUT", path="/v1/customers/u1", status=200, latency_ms=3)
    victim.outcome(["shared-1"], connection="victim", outcome="delivered", status=200)
    victim.flush(client)
    hostile = trace.Recorder(KEYS, TraceOptions(retention_hours=24), connection="hostile")
    for _ in range(trace.MAX_HEAD + 2):
        hostile.rejected("shared-1", connection="hostile", direction="d", door="tracking_api", code="x")
        hostile.flush(client)
    for _ in range(trace.MAX_STEPS + 5):
        hostile.wait(["shared-1"], connection="hostile", reason="throttled", until=1.0)
    hostile.flush(client)

    mine = tracereader.read(client, KEYS, "victim", "shared-1")
    assert [r["kind"] for r in mine] == ["received", "attempt", "outcome"]
    assert mine[0]["connection"] == "victim"
    found = tracereader.find(client, KEYS, "shared-1")
    assert sorted(found) == ["hostile", "victim"]  # `connector trace ID` lists each
    assert tracereader.find(client, KEYS, "shared-1", "victim") == {"victim": mine}
    # The victim's trace lives its day (not the hostile's refused hour).
    assert ttls(client, "victim") and all(t > trace.REFUSED_KEEP_SECONDS for t in ttls(client, "victim"))


def test_answer_excerpts_keep_error_fields_and_ids_never_customer_data() -> None:
    answer = (
        '{"id": "cust_1", "source_id": "u1", "name": "Ada Lovelace", "email": "ada@example.com",'
        ' "metadata": {"phone": "+44 20 7946 0958"}, "address": {"city": "London"},'
        ' "code": 400, "key": "invalid_customer", "message": "Invalid customer",'
        ' "details": "email is malformed", "request_id": "v-0a1b"}'
    )
    kept = trace.answer_excerpt(answer)
    assert kept is not None
    for private in ("Ada", "ada@example.com", "7946", "London"):
        assert private not in kept
    for public in ("cust_1", "u1", "invalid_customer", "Invalid customer", "v-0a1b", "400"):
        assert public in kept
    text = trace.answer_excerpt("<html>Gateway error for ada@example.com card 4111111111111111 " + "x" * 500)
    assert text is not None and len(text) <= trace.NON_JSON_CHARS + 1
    assert "ada@example.com" not in text and "4111111111111111" not in text
    # Through the recorder: what is stored is the excerpt.
    rec = trace.Recorder(KEYS, connection="c1")
    rec.attempt(["m"], method="PUT", path="/v1/customers/u1", status=200, latency_ms=1, answer=answer)
    [(_, data)] = rec._steps
    assert b"Ada" not in data and b"cust_1" in data


def _budget_keys(client: redis.Redis, cls: str, ids: list[str]) -> tuple[list[str], int]:
    """Which of ``ids`` (on c1) keep a trace, and the bytes the class's budget counts."""
    return [i for i in ids if has(client, "c1", i)], int(client.get(KEYS.traces_bytes(cls)) or 0)


def test_the_trace_budget_gives_up_the_oldest_first(redis_url: str) -> None:
    # A budget of ~20 traces for the main class: 60 written one write apart, the 20-odd newest
    # are kept whole, the oldest are gone (records, index), and the accounted bytes stay under.
    client = client_of(redis_url)
    options = TraceOptions(retention_hours=24, budget_bytes=16_000, minor_share=0.25)
    main_budget = int(16_000 * 0.75)
    for i in range(60):
        rec = trace.Recorder(KEYS, options, connection="c1")
        rec.received(f"old-{i:02d}", connection="c1", direction="d", door="tracking_api", at=None)
        rec.outcome([f"old-{i:02d}"], connection="c1", outcome="dead_letter", reason="rejected")
        rec.flush(client)
        time.sleep(0.002)  # one write per millisecond at least: the budget orders by write time
    kept, used = _budget_keys(client, trace.MAIN, [f"old-{i:02d}" for i in range(60)])
    assert 0 < used <= main_budget
    assert 10 <= len(kept) < 60
    assert kept == [f"old-{i:02d}" for i in range(60 - len(kept), 60)]  # the newest, contiguous
    assert tracereader.read(client, KEYS, "c1", "old-59")
    assert not tracereader.read(client, KEYS, "c1", "old-00")
    assert tracereader.find(client, KEYS, "old-00") == {}  # its index entry went with it

    # A trace written again is young again: it outlives older ones.
    survivor = kept[0]
    rec = trace.Recorder(KEYS, options, connection="c1")
    rec.attempt([survivor], method="PUT", path="/v1/customers/u", status=500, latency_ms=1)
    rec.flush(client)
    for i in range(60, 70):
        rec = trace.Recorder(KEYS, options, connection="c1")
        rec.received(f"old-{i:02d}", connection="c1", direction="d", door="tracking_api", at=None)
        rec.flush(client)
        time.sleep(0.002)
    assert tracereader.read(client, KEYS, "c1", survivor)
    assert not tracereader.read(client, KEYS, "c1", kept[1])


def test_skipped_and_refused_traces_are_held_to_their_share(redis_url: str) -> None:
    # The main class is filled first; then a flood of skipped and refused events: they push out
    # only each other (the minor share), never a delivered or dead-lettered trace.
    client = client_of(redis_url)
    options = TraceOptions(retention_hours=24, budget_bytes=40_000, minor_share=0.25)
    for i in range(20):
        rec = trace.Recorder(KEYS, options, connection="c1")
        rec.received(f"kept-{i}", connection="c1", direction="d", door="tracking_api", at=None)
        rec.outcome([f"kept-{i}"], connection="c1", outcome="dead_letter", reason="rejected")
        rec.flush(client)
    main_ids = [f"kept-{i}" for i in range(20)]
    main_before, main_bytes = _budget_keys(client, trace.MAIN, main_ids)
    assert len(main_before) == 20 and main_bytes <= 30_000

    for round_ in range(30):
        rec = trace.Recorder(KEYS, options, connection="c1")
        for i in range(10):
            rec.received(f"junk-{round_}-{i}", connection="c1", direction="d", door="tracking_api", at=None)
            rec.outcome([f"junk-{round_}-{i}"], connection="c1", outcome="skipped", reason="no_subscription")
        rec.rejected(
            f"bad-{round_}", connection="c1", direction="d", door="tracking_api", code="invalid_json"
        )
        rec.flush(client)
        time.sleep(0.002)
    junk = [f"junk-{r}-{i}" for r in range(30) for i in range(10)] + [f"bad-{r}" for r in range(30)]
    minor, minor_bytes = _budget_keys(client, trace.MINOR, junk)
    assert 0 < minor_bytes <= 10_000  # the minor share
    assert 0 < len(minor) < 330
    assert any(m.startswith("junk-29-") for m in minor) and not any(m.startswith("junk-0-") for m in minor)
    assert _budget_keys(client, trace.MAIN, main_ids) == (main_before, main_bytes)  # untouched
    assert all(tracereader.read(client, KEYS, "c1", f"kept-{i}") for i in range(20))
    assert not tracereader.read(client, KEYS, "c1", "junk-0-0")
    # No orphan left behind: every bucket holding traces is one the budget counts.
    counted = {key for _, key in tracestore.buckets_of(client, KEYS, "c1")["c1"]}
    stored = {k.decode() for k in client.scan_iter(KEYS.trace_bucket("*", "c1", "*"), count=1000)}
    assert stored and stored <= counted


def test_records_held_until_the_flush_cost_their_size_not_the_encoders_buffer() -> None:
    # A task holds its records (four per event) until it ends: with orjson's 4 KB write buffer
    # kept in every record, 3,000 events in work held ~48 MB of them (issue #19).
    import tracemalloc

    rec = trace.Recorder(KEYS, TraceOptions(retention_hours=2), connection="c1")
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        for n in range(2000):
            rec.mapping(f"m-{n}", type="track", requests=["POST /v1/events"], subject="s" * 12)
        per_record = (tracemalloc.get_traced_memory()[0] - before) / 2000
    finally:
        tracemalloc.stop()
    assert per_record < 600, (
        per_record
    )  # measured ~300 B: ~150 B of JSON, its bytes object and its list entry
