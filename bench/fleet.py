"""The fleet rows (issue #23) and what one Redis carries (issues #23 and #19), as phases of
`make bench` (bench/run.py calls :func:`fleet` and :func:`redis_capacity`).

- fleet: 1, 2 and 4 worker processes (each as the Procfile runs one) draining the same number of
  track events of distinct customers from the fake at 50 ms: events/s and Voucherify calls per
  event (every request nginx logged in the run; one per event unless something was sent twice).
  The workers are up and consuming before the events are queued, as a running fleet is: queued
  first, the first worker to start would reserve most of the tasks (prefetch) and the others
  would have little to do.
- redis_capacity: redis-benchmark at the bench's own redis-server, its rates weighted by the
  command mix measured end to end (bench/run.py's CommandMeter windows), and the fleet's ceiling:
  events/s one Redis carries = commands/s / commands per event.  Beside it, the ceiling the
  server's own CPU time per event gives (1 core busy), measured over the same windows.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from typing import Any

import orjson

from bench import redis_cost
from bench.common import BIN, GREENLETS, QUICK, QUOTA_CUSTOMERS, ROOT, wait_until
from bench.common import Harness as Bench
from bench.payloads import track

FLEET_EVENTS = int(os.environ.get("BENCH_FLEET_EVENTS", "3000" if QUICK else "12000"))
FLEET_SIZES = tuple(int(x) for x in os.environ.get("BENCH_FLEET_SIZES", "1,2,4").split(",") if x)
BENCHMARK_REQUESTS = int(os.environ.get("BENCH_REDIS_REQUESTS", "20000" if QUICK else "100000"))
BENCHMARK_CLIENTS = 50
# The MONITOR passes (round trips vs script calls): custom events at 500/s for this long, and
# this many events of the identify-heavy mix.
TRIP_SECONDS = float(os.environ.get("BENCH_TRIP_SECONDS", "3" if QUICK else "4"))
TRIP_IDENTIFY_EVENTS = int(os.environ.get("BENCH_TRIP_IDENTIFY_EVENTS", "600" if QUICK else "1000"))


def log(msg: str) -> None:
    print(f"[bench {time.strftime('%H:%M:%S')}] {msg}", flush=True)


def fleet(bench: Bench) -> None:

    figures = {n: fleet_run(bench, n, FLEET_EVENTS) for n in FLEET_SIZES}
    bench.results["fleet"] = {str(n): fig for n, fig in figures.items()}
    one = figures.get(1, {}).get("rate")
    for n, fig in figures.items():
        plural = "es" if n > 1 else ""
        bench.row(
            f"fleet delivery, {n} worker process{plural}, fake at 50 ms ({GREENLETS} in flight each; "
            "baseline: 1 process)",
            fig["rate"],
            "events/s",
            one if n != 1 else None,
            "(info)",
            None,
        )
        bench.row(
            f"fleet Voucherify calls per event, {n} worker process{plural}",
            fig["calls_per_event"],
            "calls/event",
            None,
            "1.00 (none sent twice)",
            fig["calls"] == fig["events"],
        )


def fleet_run(bench: Bench, processes: int, count: int) -> dict[str, Any]:

    bench.r.flushdb()
    run_id = f"fleet{processes}-{int(time.time())}"
    events = [track(f"d-{run_id}-{i}", i) for i in range(count)]
    logged_before = api_calls(bench)
    workers = [bench.worker(f"fleet{processes}-{k}", "voucherify.us1") for k in range(processes)]
    # The scheduler as production runs it (parked work comes back: bench/run.py delivery_run).
    sched = bench.add(f"scheduler-fleet{processes}", [str(BIN / "connector"), "scheduler"])
    # Celery logs "<name> ready." once it consumes; the queue is empty until then.
    for w in workers:
        wait_until(lambda w=w: " ready." in w.text(), 60, f"{w.name} ready")
    queued_at = time.monotonic()
    bench.preload("slow", events)
    queued = time.monotonic() - queued_at
    wait_until(lambda: bench.backlog_of("slow") < count, 60, "first deliveries")
    started, first_left = time.monotonic(), bench.backlog_of("slow")
    wait_until(lambda: bench.backlog_of("slow") <= 0, 300, f"fleet of {processes} drained")
    elapsed = time.monotonic() - started
    time.sleep(0.6)  # nginx flushes its log every 200 ms
    calls = api_calls(bench) - logged_before
    bench.stop(sched)
    for w in workers:
        bench.stop(w, f"worker (fleet, {processes} process{'es' if processes > 1 else ''})")
    figure = {
        "processes": processes,
        "events": count,
        "rate": first_left / elapsed,
        "seconds": round(elapsed, 2),
        "queueing_seconds": round(queued, 2),
        "calls": calls,
        "calls_per_event": calls / count,
    }
    log(
        f"fleet of {processes}: {figure['rate']:,.0f} events/s, {calls} calls for {count} events "
        f"(queued in {queued:.1f} s)"
    )
    return figure


def api_calls(bench: Bench) -> int:
    """Requests the 50 ms fake logged to Voucherify's API (not nginx's own /__health, whose line
    may be flushed at any time during the first run)."""
    lines = bench.nginx.lines("slow") if bench.nginx else []
    return sum(1 for line in lines if len(line.split()) > 3 and line.split()[3].startswith("/v1/"))


def redis_round_trips(bench: Bench) -> None:
    """Which of the commands counted end to end clients send (round trips, pipelined or not)
    and which their Lua scripts call (Redis counts both in INFO commandstats), by key family:
    short passes of their own under MONITOR, which slows Redis (so never in a timed window)."""
    from bench.payloads import identify_heavy_stream

    bench.r.flushdb()
    web, url = bench.web("ops.wsgi:app", int(os.environ.get("WEB_CONCURRENCY", "2")))
    worker = bench.worker("trips", "voucherify.us1")
    sched = bench.add("scheduler-trips", [str(BIN / "connector"), "scheduler"])
    bench.warm_up(url, "wk_bench_slow", "slow")
    bench.meter.start()  # counts the bench's own polling, taken off the MONITOR's GETs
    monitor = bench.monitor("custom-pass", force=True)
    assert monitor is not None
    out = subprocess.run(
        [sys.executable, "-m", "bench.loadgen", url, "wk_bench_slow", "500", str(TRIP_SECONDS), "10"],
        capture_output=True,
        text=True,
        check=True,
        timeout=TRIP_SECONDS + 60,
        cwd=ROOT,
    ).stdout
    sent = int(orjson.loads(out.strip().splitlines()[-1])["sent"])
    wait_until(lambda: bench.backlog_of("slow") <= 0, 60, "round-trip pass drained")
    bench.record_round_trips("custom", monitor, sent)
    for proc in (sched, worker, web):
        bench.stop(proc)
    events = identify_heavy_stream(QUOTA_CUSTOMERS, TRIP_IDENTIFY_EVENTS)
    bench.quota_run("rest", events, 5, 7, monitor_pass=True)


def redis_capacity(bench: Bench) -> None:
    """redis-benchmark (no pipelining: the connector's clients mostly wait for each answer; and
    pipelined 16 as the upper bound), weighted by each measured mix; then the ceilings."""
    port = int(bench.redis_url.rsplit(":", 1)[1].split("/", 1)[0])
    bench.r.flushdb()
    plain = redis_cost.run_redis_benchmark(port, BENCHMARK_REQUESTS, BENCHMARK_CLIENTS, 1)
    piped = redis_cost.run_redis_benchmark(port, BENCHMARK_REQUESTS, BENCHMARK_CLIENTS, 16)
    bench.r.flushdb()
    log(f"redis-benchmark, 50 clients: {plain}; pipelined 16: {piped}")
    out: dict[str, Any] = {"benchmark": plain, "benchmark_pipelined_16": piped, "mixes": {}}
    for key, label in (("custom", "custom events"), ("identify", "identify-heavy mix")):
        cost = bench.results.get("redis_cost", {}).get(key)
        if not cost:
            continue
        cap = redis_cost.mix_capacity(plain, cost["counts"])
        cap16 = redis_cost.mix_capacity(piped, cost["counts"])
        cpe = cost["per_event"]
        by_cpu = 1 / cost["cpu_seconds_per_event"] if cost["cpu_seconds_per_event"] > 0 else 0.0
        out["mixes"][key] = {
            "commands_per_second": round(cap.commands_per_second),
            "commands_per_second_pipelined_16": round(cap16.commands_per_second),
            "unmapped_share": round(cap.unmapped_share, 3),
            "unmapped": cap.unmapped,
            "ceiling_events_per_second": round(redis_cost.ceiling(cap.commands_per_second, cpe)),
            "ceiling_by_cpu_events_per_second": round(by_cpu),
        }
        bench.row(
            f"Redis capacity, redis-benchmark (50 clients, no pipelining), command mix of {label}",
            cap.commands_per_second,
            "commands/s",
            None,
            "(info)",
            None,
        )
        bench.row(
            f"fleet ceiling on one Redis, {label}: capacity / {cpe:.1f} commands per event",
            redis_cost.ceiling(cap.commands_per_second, cpe),
            "events/s",
            None,
            "(info)",
            None,
        )
        bench.row(
            f"fleet ceiling on one Redis, {label}: 1 / Redis CPU per event (one core busy)",
            by_cpu,
            "events/s",
            None,
            "(info)",
            None,
        )
        if cap.unmapped:
            bench.results["notes"].append(
                f"Redis capacity, {label}: {cap.unmapped_share:.0%} of the commands "
                f"({', '.join(cap.unmapped)}) charged at the slowest benchmarked rate"
            )
    bench.results["redis_capacity"] = out
