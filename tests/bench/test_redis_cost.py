"""The bench's Redis-cost arithmetic (bench/redis_cost.py): reading INFO commandstats, leaving out
the bench's own commands, per-event sums, redis-benchmark's CSV and the mix-weighted capacity."""

from __future__ import annotations

import pytest

from bench import redis_cost

# What redis-py 8 returns for INFO commandstats (abridged), and the same as the server's text.
PARSED = {
    "cmdstat_get": {"calls": 120, "usec": 300, "usec_per_call": 2.5, "rejected_calls": 0},
    "cmdstat_evalsha": {"calls": 40, "usec": 900, "usec_per_call": 22.5},
    "cmdstat_config|resetstat": {"calls": 1, "usec": 5},
    "cmdstat_info": {"calls": 2, "usec": 40},
    "cmdstat_LPUSH": {"calls": 10, "usec": 10},
}
TEXT = """# Commandstats
cmdstat_get:calls=120,usec=300,usec_per_call=2.50,rejected_calls=0,failed_calls=0
cmdstat_evalsha:calls=40,usec=900,usec_per_call=22.50,rejected_calls=0,failed_calls=0
cmdstat_config|resetstat:calls=1,usec=5,usec_per_call=5.00,rejected_calls=0,failed_calls=0
cmdstat_info:calls=2,usec=40,usec_per_call=20.00,rejected_calls=0,failed_calls=0
cmdstat_lpush:calls=10,usec=10,usec_per_call=1.00,rejected_calls=0,failed_calls=0
"""


def test_commandstats_parsed_or_text_give_the_same_counts() -> None:
    expected = {"get": 120, "evalsha": 40, "config|resetstat": 1, "info": 2, "lpush": 10}
    assert redis_cost.command_counts(PARSED) == expected
    assert redis_cost.parse_commandstats_text(TEXT) == expected
    assert redis_cost.command_counts({"redis_version": "7.0.15", **PARSED})["get"] == 120


def test_the_bench_own_commands_are_left_out() -> None:
    counts = redis_cost.command_counts(PARSED)
    # The bench polled its backlog counter 20 times (GET) and measured (CONFIG RESETSTAT, INFO).
    assert redis_cost.connector_counts(counts, {"get": 20}) == {"get": 100, "evalsha": 40, "lpush": 10}
    # Never below zero; a command the bench alone sent is gone.
    assert redis_cost.connector_counts({"get": 5, "set": 3}, {"get": 9}) == {"set": 3}


def test_per_event_and_top_commands() -> None:
    counts = {"get": 100, "evalsha": 40, "lpush": 10, "hset": 40}
    assert redis_cost.per_event(counts, 20) == pytest.approx(9.5)
    assert redis_cost.per_event(counts, 0) == 0.0
    # Most first, ties by name; calls per event beside the calls.
    assert redis_cost.top_commands(counts, 20, 3) == [
        ("get", 100, 5.0),
        ("evalsha", 40, 2.0),
        ("hset", 40, 2.0),
    ]


def test_redis_benchmark_csv() -> None:
    out = (
        '"test","rps","avg_latency_ms","min_latency_ms","p50_latency_ms","p95_latency_ms"\n'
        '"SET","869565.19","0.247","0.088","0.183","0.599"\n'
        '"INCR","100000.00","0.261","0.088","0.223","0.495"\n'
        "WARNING: could not fetch server CONFIG\n"
    )
    assert redis_cost.parse_benchmark_csv(out) == {"SET": 869565.19, "INCR": 100000.0}


def test_mix_capacity_is_the_weighted_harmonic_mean() -> None:
    rates = {"GET": 100_000.0, "SET": 50_000.0}
    # 3 GETs (10 us each) and 1 SET (20 us): 4 commands in 50 us -> 80,000 commands/s.
    cap = redis_cost.mix_capacity(rates, {"get": 3, "set": 1})
    assert cap.commands_per_second == pytest.approx(80_000)
    assert cap.unmapped_share == 0.0
    # A command no test stands for is charged at the slowest rate (SET's), and named.
    cap = redis_cost.mix_capacity(rates, {"get": 2, "evalsha": 2})
    assert cap.commands_per_second == pytest.approx(4 / (2 / 100_000 + 2 / 50_000))
    assert (cap.unmapped_share, cap.unmapped) == (0.5, ["evalsha"])
    # No mix: every test equally often.
    assert redis_cost.mix_capacity(rates, {}).commands_per_second == pytest.approx(2 / (1e-5 + 2e-5))
    with pytest.raises(ValueError):
        redis_cost.mix_capacity({}, {"get": 1})


def test_standing_tests_and_ceiling() -> None:
    assert redis_cost.standing_test("BRPOP") == "RPOP"
    assert redis_cost.standing_test("hincrby") == "INCR"
    assert redis_cost.standing_test("client|setname") is None
    assert redis_cost.standing_test("evalsha") is None
    # 120,000 commands/s at 12 commands per event: 10,000 events/s for the whole fleet.
    assert redis_cost.ceiling(120_000, 12) == pytest.approx(10_000)
    assert redis_cost.ceiling(120_000, 0) == 0.0


def test_process_cpu_seconds_reads_this_process() -> None:
    import os

    assert redis_cost.process_cpu_seconds(os.getpid()) > 0


def test_idle_lead_in_is_split_off() -> None:
    # 2 s idle (scheduler ticks: 40 EVALSHA, 20 BRPOP), then the load until 12 s in.
    idle = redis_cost.Window({"evalsha": 40, "brpop": 20}, 0.02, 2.0)
    total = redis_cost.Window({"evalsha": 540, "brpop": 20, "rpush": 300}, 0.52, 12.0)
    loaded, background = redis_cost.split_idle(idle, total)
    assert loaded.counts == {"evalsha": 500, "rpush": 300}  # BRPOP: all of it was idle
    assert loaded.cpu_seconds == pytest.approx(0.5)
    assert loaded.seconds == pytest.approx(10.0)
    assert background == {"evalsha": 20.0, "brpop": 10.0}
    assert redis_cost.difference({"a": 3, "b": 1}, {"a": 1, "b": 1, "c": 4}) == {"a": 2}


def test_monitor_lines_split_client_commands_from_script_calls() -> None:
    lines = [
        "OK",
        '1765072800.123456 [0 127.0.0.1:51234] "EVALSHA" "abc" "1" "connector:ledger:bench-slow:k1" "x"',
        '1765072800.123460 [0 lua] "incrby" "connector:backlog:bench-slow" "1"',
        '1765072800.123461 [0 lua] "EXPIRE" "connector:trace:h:bench-slow:e-1" "60"',
        '1765072800.123470 [0 127.0.0.1:51235] "get" "connector:backlog:bench-slow"',
        '1765072800.123480 [0 unix:/tmp/r.sock] "GET" "connector:backlog:with \\"quote\\" ] x"',
        '1765072800.123490 [0 127.0.0.1:51235] "MULTI"',
        '1765072800.123491 [0 127.0.0.1:51235] "BRPOP" "voucherify.us1" "1"',
        "",
    ]
    sent, scripted = redis_cost.parse_monitor(lines)
    assert sent == {"evalsha ledger": 1, "get backlog": 2, "multi": 1, "brpop voucherify.us1": 1}
    assert scripted == {"incrby backlog": 1, "expire trace:h": 1}


@pytest.mark.parametrize(
    ("key", "family"),
    [
        ("connector:trace:h:bench-slow:e2e-1-2", "trace:h"),
        ("connector:trace:c:e2e-1-2", "trace:c"),
        ("connector:ov:bench-slow:m:29433", "ov:m"),
        ("connector:ledger:bench-slow:idem-1", "ledger"),
        ("connector:rl:bench-slow:api:n", "rl:n"),
        ("connector:dlq:data", "dlq:data"),
        ("unacked_index", "unacked_index"),
        ("_kombu.binding.voucherify.us1", "_kombu.binding.voucherify.us1"),
    ],
)
def test_key_family_drops_ids(key: str, family: str) -> None:
    assert redis_cost.key_family(key) == family
