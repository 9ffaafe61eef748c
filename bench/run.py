"""`make bench`: every figure of SPEC 8 with its baseline, measured in one run on this machine.

Starts its own Redis (own port and directory), nginx fakes (bench/nginx.py), gunicorn, Celery
workers and the scheduler; runs bounded loads on loopback; stops everything; prints one table and
writes bench/results.json and bench/results.png.  About 9 minutes on a quiet machine; hard stop at 15.
BENCH_QUICK=1: only the fleet and Redis-cost phases, small (bench/fleet.py).

Load generators run in their own processes: `wrk` (Debian) for the ingest figures, a gevent
`requests` loop for the delivery baseline, a paced multi-threaded sender for the end to end.
"""

from __future__ import annotations

import base64
import contextlib
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import orjson
import redis
import requests

from bench import backfill as backfill_mod
from bench import fleet as fleet_mod
from bench import nginx as nginx_mod
from bench import redis_cost
from bench.common import BIN, GREENLETS, INFLIGHT, QUICK, QUOTA_CUSTOMERS, ROOT, wait_until
from bench.payloads import batch_body, identify_heavy_stream, mixed_stream, track
from bench.payloads import now_iso as payloads_now
from ops.embedded import free_port, start_redis

OUT_JSON = ROOT / "bench" / "results.json"
OUT_PNG = ROOT / "bench" / "results.png"
if QUICK:  # a quick run never overwrites the full run's committed results
    OUT_JSON = ROOT / ".run" / "bench-quick.json"
    OUT_PNG = ROOT / ".run" / "bench-quick.png"
HARD_LIMIT_SECONDS = float(os.environ.get("BENCH_HARD_LIMIT_SECONDS", "900"))

# BENCH_QUICK=1: the fleet and Redis-cost rows only (end to end, rest quota mix, fleet, Redis
# capacity), small sizes: for working on them without loading the machine for 10 minutes.
PHASES = (
    "ingest",
    "delivery",
    "end_to_end",
    "mixed",
    "quota",
    "fleet",
    "redis_round_trips",
    "redis_capacity",
    "backfill",
)
QUICK_PHASES = "end_to_end,quota,fleet,redis_round_trips,redis_capacity"
INGEST_SECONDS = float(os.environ.get("BENCH_INGEST_SECONDS", "8"))
DELIVERY_EVENTS = int(os.environ.get("BENCH_DELIVERY_EVENTS", "3000" if QUICK else "12000"))
E2E_SECONDS = float(os.environ.get("BENCH_E2E_SECONDS", "6" if QUICK else "20"))
MIXED_EVENTS = int(os.environ.get("BENCH_MIXED_EVENTS", "3000"))
MIXED_RATE_PER_MINUTE = int(os.environ.get("BENCH_MIXED_RATE_PER_MINUTE", "3000"))
# The identify-heavy mix of SPEC 8's quota row: events, customers, events per second sent.
QUOTA_EVENTS = int(os.environ.get("BENCH_QUOTA_EVENTS", "800" if QUICK else "3000"))
# Which of its runs: mode-hold ("rest-on": hold and skip on; "-off": the in-run baseline).
QUOTA_RUNS = os.environ.get(
    "BENCH_QUOTA_RUNS", "rest-on" if QUICK else "rest-on,rest-off,segmentio-on,segmentio-off"
)
# SPEC 16 / issue #19 targets: Redis commands per event, end to end (ingest, delivery, traces).
REDIS_PER_CUSTOM_EVENT_TARGET = 6
REDIS_PER_IDENTIFY_TARGET = 3
# Before each such window the processes run this long with no events: their background commands
# (scheduler ticks, workers' polling) are reported apart, per second.
REDIS_IDLE_SECONDS = float(os.environ.get("BENCH_REDIS_IDLE_SECONDS", "3"))
# BENCH_REDIS_MONITOR=1: also split those commands into round trips and script calls (MONITOR;
# it slows Redis, so the same run's latency and Redis CPU rows are then not comparable).
REDIS_MONITOR = os.environ.get("BENCH_REDIS_MONITOR") == "1"
# Issue #23: a worker draining the 12,000-event backlog stays under this peak RSS.
WORKER_RSS_TARGET_MB = 200
QUOTA_RATE = int(os.environ.get("BENCH_QUOTA_RATE", "200"))
# The delivery worker runs as production does (the Procfile's line): --concurrency 100 Celery
# greenlets (tasks), CONNECTOR_DELIVERY_CONCURRENCY customers each (default 32), and at most
# CONNECTOR_WORKER_INFLIGHT calls in flight per target (default 100: the process's send slots).
# The baseline loop runs that many greenlets.  BENCH_* override them.
WORKER_TASKS = int(os.environ.get("BENCH_WORKER_TASKS", "100"))
TASK_CONCURRENCY = os.environ.get("BENCH_TASK_CONCURRENCY", "")

CONNS = {  # name -> (write key, region (queue), nginx server, rate limit per minute)
    "fast": ("wk_bench_fast", "eu", "fast", None),
    "slow": ("wk_bench_slow", "us1", "slow", None),
    "mixed": ("wk_bench_mixed", "as1", "mixed", MIXED_RATE_PER_MINUTE),
}


def log(msg: str) -> None:
    print(f"[bench {time.strftime('%H:%M:%S')}] {msg}", flush=True)


# ---------------------------------------------------------------------------------------------
# Processes


class Proc:
    def __init__(self, name: str, args: list[str], env: dict[str, str], log_dir: Path) -> None:
        self.name = name
        self.log_path = log_dir / f"{name}.log"
        with open(self.log_path, "ab") as out:
            self.proc = subprocess.Popen(
                args, env=env, cwd=ROOT, stdout=out, stderr=subprocess.STDOUT, start_new_session=True
            )

    @property
    def pid(self) -> int:
        return self.proc.pid

    def alive(self) -> bool:
        return self.proc.poll() is None

    def stop(self, sig: int = signal.SIGTERM) -> None:
        if not self.alive():
            return
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.proc.pid, sig)
        try:
            self.proc.wait(15)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(5)

    def text(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""


def children(pid: int) -> list[int]:
    out: list[int] = []
    with contextlib.suppress(OSError):
        for task in os.listdir(f"/proc/{pid}/task"):
            with open(f"/proc/{pid}/task/{task}/children") as fh:
                out.extend(int(x) for x in fh.read().split())
    return out


def peak_rss_mb(pid: int) -> float:
    with contextlib.suppress(OSError), open(f"/proc/{pid}/status") as fh:
        for line in fh:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024.0
    return 0.0


class Bench:
    def __init__(self) -> None:
        self.tmp = Path(tempfile.mkdtemp(prefix="connector-bench-"))
        self.procs: list[Proc] = []
        self.redis_proc: subprocess.Popen[bytes] | None = None
        self.nginx: nginx_mod.Nginx | None = None
        self.fake_note = ""
        self.rss: dict[str, float] = {}
        self.results: dict[str, Any] = {"rows": [], "notes": []}

    # -- infrastructure ------------------------------------------------------------------------

    def start_infra(self) -> None:
        self.redis_proc, self.redis_url = start_redis(self.tmp / "redis", free_port(), appendonly=True)
        self.r = redis.Redis.from_url(self.redis_url)
        self.meter = redis_cost.CommandMeter(self.r, self.redis_proc.pid)
        ok, note = nginx_mod.available()
        if ok:
            self.nginx = nginx_mod.Nginx(self.tmp / "nginx", {"fast": 0, "slow": 50, "mixed": 50}).start()
            self.fake_note = f"fake Voucherify: {note} + echo module (1 worker process)"
            urls = {n: self.nginx.url(n) for n in ("fast", "slow", "mixed")}
        else:
            self.fake_note = (
                f"fake Voucherify: {note}; FELL BACK to the Python fake, which IS the bottleneck "
                "(~600 req/s): delivery figures are lower bounds"
            )
            urls = self._python_fakes()
        self.urls = urls
        log(self.fake_note)
        lines = []
        for name, (wk, region, server, rate) in CONNS.items():
            lines.append(
                f'[[connection]]\nid = "bench-{name}"\nwrite_keys = ["{wk}"]\nbacklog_limit = 100000000\n'
                f'[connection.voucherify]\napp_id = "bench-app"\nsecret_key = "bench-secret"\n'
                f'region = "{region}"\napi_url = "{urls[server]}"\nmode = "rest"\n'
                # The delivery rows measure the connector, not a quota: a limit nothing reaches,
                # or the mixed row's own rate with all of it the connector's (share = 1).
                + (
                    f"api_calls_per_minute = {rate}\nshare = 1\n"
                    if rate
                    else "api_calls_per_minute = 100000000\n"
                )
                + "bulk_calls_per_hour = 100000000\n"
            )
        self.conf = self.tmp / "connections.toml"
        self.conf.write_text("\n".join(lines))
        self.env = {
            k: v
            for k, v in os.environ.items()
            if not k.startswith(
                ("VOUCHERIFY_", "SEGMENT_", "INGEST_", "CONNECTIONS_", "CONNECTOR_", "WORKER_")
            )
        }
        self.env.update(
            {
                "REDIS_URL": self.redis_url,
                "CONNECTIONS_FILE": str(self.conf),
                "LOG_FORMAT": "json",
                "LOG_LEVEL": "INFO",  # production default: one JSON line per event outcome
                "PYTHONUNBUFFERED": "1",
                "PATH": f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}",
            }
        )

    def _python_fakes(self) -> dict[str, str]:  # pragma: no cover - only without nginx
        urls = {}
        for name in ("fast", "slow", "mixed"):
            port = free_port()
            self.procs.append(
                Proc(
                    f"fake-{name}",
                    [
                        sys.executable,
                        "-m",
                        "sandbox.fake_voucherify",
                        "--host",
                        "127.0.0.1",
                        "--port",
                        str(port),
                        "--name",
                        name,
                    ],
                    {
                        **os.environ,
                        "FAKE_VOUCHERIFY_APP_ID": "bench-app",
                        "FAKE_VOUCHERIFY_SECRET_KEY": "bench-secret",
                    },
                    self.tmp,
                )
            )
            urls[name] = f"http://127.0.0.1:{port}"
        time.sleep(2)
        return urls

    def add(self, name: str, args: list[str], **extra: str) -> Proc:
        proc = Proc(name, args, {**self.env, **extra}, self.tmp)
        self.procs.append(proc)
        return proc

    def web(self, app: str, workers: int, **env: str) -> tuple[Proc, str]:
        port = free_port()
        proc = self.add(
            f"web-{app.split('.')[0]}-{workers}-{port}",
            [str(BIN / "gunicorn"), app, "--config", "gunicorn.conf.py"],
            PORT=str(port),
            WEB_CONCURRENCY=str(workers),
            **env,
        )
        url = f"http://127.0.0.1:{port}"
        wait_until(lambda: requests.get(url + "/healthz", timeout=1).ok, 30, f"{app} up")
        return proc, url

    def worker(self, name: str, queue: str, **extra: str) -> Proc:
        proc = self.add(
            name,
            [
                str(BIN / "celery"),
                "-A",
                "workers.worker",
                "worker",
                "--pool",
                "gevent",
                "--concurrency",
                str(WORKER_TASKS),
                "--loglevel",
                "INFO",
                "--without-gossip",
                "--without-mingle",
                "--without-heartbeat",
                "-n",
                f"{name}@%h",
            ],
            WORKER_QUEUES=queue,
            CONNECTOR_WORKER_INFLIGHT=str(INFLIGHT),
            **({"CONNECTOR_DELIVERY_CONCURRENCY": TASK_CONCURRENCY} if TASK_CONCURRENCY else {}),
            **extra,
        )
        return proc

    def stop(self, proc: Proc, label: str | None = None) -> None:
        if label:
            self.note_rss(label, proc)
        proc.stop()

    def note_rss(self, label: str, proc: Proc) -> None:
        pids = [proc.pid, *children(proc.pid)]
        if label.startswith("web"):
            pids = children(proc.pid) or [proc.pid]  # gunicorn's workers, not the master
        peak = max((peak_rss_mb(p) for p in pids), default=0.0)
        self.rss[label] = max(self.rss.get(label, 0.0), peak)

    def close(self) -> None:
        for proc in reversed(self.procs):
            proc.stop()
        if self.nginx:
            self.nginx.stop()
        if self.redis_proc and self.redis_proc.poll() is None:
            self.redis_proc.terminate()
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.redis_proc.wait(10)
        shutil.rmtree(self.tmp, ignore_errors=True)

    def row(
        self, figure: str, value: float, unit: str, baseline: float | None, target: str, ok: bool | None
    ) -> None:
        ratio = value / baseline if baseline else None
        self.results["rows"].append(
            {
                "figure": figure,
                "value": round(value, 3),
                "unit": unit,
                "baseline": round(baseline, 3) if baseline is not None else None,
                "ratio": round(ratio, 3) if ratio is not None else None,
                "target": target,
                "ok": ok,
            }
        )

    # -- ingest --------------------------------------------------------------------------------

    def wrk(self, url: str, body: bytes, auth: str, connections: int) -> dict[str, float]:
        path = self.tmp / "body.json"
        path.write_bytes(body)
        out = subprocess.run(
            [
                "wrk",
                "-t2",
                f"-c{connections}",
                f"-d{INGEST_SECONDS:.0f}s",
                "--latency",
                "-s",
                str(ROOT / "bench" / "post.lua"),
                url,
            ],
            env={**os.environ, "BENCH_BODY": str(path), "BENCH_AUTH": auth},
            capture_output=True,
            text=True,
            check=True,
            timeout=INGEST_SECONDS + 30,
        ).stdout
        total = int(re.search(r"(\d+) requests in", out).group(1))  # type: ignore[union-attr]
        seconds_m = re.search(r"requests in ([\d.]+)(m?s)", out)
        assert seconds_m
        seconds = float(seconds_m.group(1)) / (1000 if seconds_m.group(2) == "ms" else 1)
        bad_m = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
        errors_m = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", out)
        bad = int(bad_m.group(1)) if bad_m else 0
        if bad or (errors_m and int(errors_m.group(4))):
            self.results["notes"].append(
                f"wrk {url}: {bad} non-2xx, socket errors {errors_m.groups() if errors_m else ()}"
            )
        return {"ok_rps": (total - bad) / seconds, "total": total, "bad": bad}

    def ingest(self) -> None:
        if shutil.which("wrk") is None:
            raise SystemExit(
                "wrk is missing: apt-get install -y wrk (the Makefile's bench target does it as root)"
            )
        events = [track(f"u-{i}", i) for i in range(100)]
        batch = orjson.dumps(batch_body(events))
        single = orjson.dumps(track("u-single", 1))
        auth = "Basic " + base64.b64encode(b"wk_bench_fast:").decode()
        default_workers = int(os.environ.get("WEB_CONCURRENCY", "2"))
        results: dict[tuple[str, int, str], float] = {}
        for workers in (1, default_workers):
            for app in ("ops.wsgi:app", "bench.baseline_app:app"):
                proc, url = self.web(app, workers)
                for kind, body, per in (("batch", batch, 100), ("track", single, 1)):
                    self.r.flushdb()
                    conns = 4 * workers if kind == "batch" else 8 * workers
                    res = self.wrk(f"{url}/v1/{kind}", body, auth, conns)
                    results[(app, workers, kind)] = res["ok_rps"] * per
                    log(
                        f"ingest {app} x{workers} /v1/{kind}: {res['ok_rps'] * per:,.0f} {'events' if per > 1 else 'requests'}/s"
                    )
                label = "web (connector)" if app.startswith("app") else "web (baseline)"
                self.stop(proc, label)
        self.r.flushdb()
        for workers in (1, default_workers):
            b = results[("ops.wsgi:app", workers, "batch")]
            bb = results[("bench.baseline_app:app", workers, "batch")]
            t = results[("ops.wsgi:app", workers, "track")]
            tb = results[("bench.baseline_app:app", workers, "track")]
            per_worker = b / workers
            self.row(
                f"ingest /v1/batch (100 ev/req), {workers} gunicorn worker(s)",
                b,
                "events/s",
                bb,
                ">= 20,000/worker and >= 1/3 baseline" if workers == 1 else "(info)",
                (per_worker >= 20000 and b * 3 >= bb) if workers == 1 else None,
            )
            self.row(f"ingest /v1/track, {workers} gunicorn worker(s)", t, "requests/s", tb, "(info)", None)
        self.results["batch_bytes"] = len(batch)

    # -- delivery ------------------------------------------------------------------------------

    def preload(self, conn: str, events: list[dict[str, Any]], per_task: int = 100) -> None:
        from app.ingest import ingest_body
        from connector import backlog
        from connector.celery_app import create_celery
        from connector.contract import TASK_SEGMENT_EVENTS

        celery = create_celery(self.redis_url)
        queue = f"voucherify.{CONNS[conn][1]}"
        for start in range(0, len(events), per_task):
            accepted = ingest_body(batch_body(events[start : start + per_task]), "batch").expanded()
            backlog.reserve(self.r, f"bench-{conn}", len(accepted), 10**9)
            celery.send_task(
                TASK_SEGMENT_EVENTS, args=[f"bench-{conn}", accepted], queue=queue, routing_key=queue
            )

    def backlog_of(self, conn: str) -> int:
        from connector import backlog

        self.meter.note_own("get")  # the bench's polling is not the connector's cost
        return backlog.current(self.r, f"bench-{conn}")

    def delivery_run(self, conn: str, count: int) -> float:
        self.r.flushdb()
        run_id = f"{conn}-{int(time.time())}"
        events = [track(f"d-{run_id}-{i}", i) for i in range(count)]
        self.preload(conn, events)
        worker = self.worker(f"deliver-{conn}", f"voucherify.{CONNS[conn][1]}")
        # As production runs it: a task that outlives its time budget (a busy machine) parks
        # what it has not started for the scheduler to queue again; without one it would wait
        # forever.
        sched = self.add(f"scheduler-deliver-{conn}", [str(BIN / "connector"), "scheduler"])
        # Celery logs "<name> ready." when it starts consuming: the drain is timed from there.
        # (Timed from the first task's end, a worker that starts every message at once had mapped
        # most events before the clock started: a bound on events in work looked slower.)
        wait_until(lambda: " ready." in worker.text(), 60, f"{worker.name} ready")
        ready = time.monotonic()
        wait_until(lambda: self.backlog_of(conn) < count, 60, "first deliveries")
        started, first_left = time.monotonic(), self.backlog_of(conn)
        wait_until(lambda: self.backlog_of(conn) <= 0, 300, "all deliveries")
        end = time.monotonic()
        self.stop(sched)
        self.stop(worker, "worker (delivery)")
        if worker.text().strip():
            errors = [
                ln for ln in worker.text().splitlines() if '"level": "ERROR"' in ln or "Traceback" in ln
            ]
            if errors:
                self.results["notes"].append(
                    f"worker {conn}: {len(errors)} error lines, first: {errors[0][:300]}"
                )
        self.results.setdefault("delivery_from_first_task", {})[conn] = round(first_left / (end - started))
        return count / (end - ready)

    def requests_loop(self, server: str, seconds: float = 8.0) -> float:
        out = subprocess.run(
            [
                sys.executable,
                "-m",
                "bench.requests_loop",
                self.urls[server] + "/v1/events",
                str(GREENLETS),
                str(seconds),
            ],
            capture_output=True,
            text=True,
            check=True,
            timeout=seconds + 60,
            cwd=ROOT,
        ).stdout
        return float(orjson.loads(out.strip().splitlines()[-1])["rate"])

    def delivery(self) -> None:
        for conn, label, ms in (("fast", "0 ms", 0), ("slow", "50 ms", 50)):
            rate = self.delivery_run(conn, DELIVERY_EVENTS)
            base = self.requests_loop(CONNS[conn][2])
            first = self.results["delivery_from_first_task"][conn]
            log(
                f"delivery {label}: {rate:,.0f} events/s per worker process (from the first task's end:"
                f" {first:,.0f}); requests loop {base:,.0f} req/s"
            )
            target = ">= 800/s and >= 0.7x loop" if ms else ">= 0.7x loop"
            ok = (rate >= 800 and rate >= 0.7 * base) if ms else rate >= 0.7 * base
            self.row(
                f"delivery, 1 worker process, fake at {label} ({GREENLETS} in flight)",
                rate,
                "events/s",
                base,
                target,
                ok,
            )

    # -- end to end ----------------------------------------------------------------------------

    def end_to_end(self) -> None:
        self.r.flushdb()
        web, url = self.web("ops.wsgi:app", int(os.environ.get("WEB_CONCURRENCY", "2")))
        worker = self.worker("e2e", "voucherify.us1")
        sched = self.add("scheduler", [str(BIN / "connector"), "scheduler"])
        self.warm_up(url, "wk_bench_slow", "slow")
        self.meter.start()
        monitor = self.monitor("custom")
        time.sleep(REDIS_IDLE_SECONDS)
        idle = self.meter.read()
        out = subprocess.run(
            [sys.executable, "-m", "bench.loadgen", url, "wk_bench_slow", "500", str(E2E_SECONDS), "10"],
            capture_output=True,
            text=True,
            check=True,
            timeout=E2E_SECONDS + 60,
            cwd=ROOT,
        ).stdout
        sent = orjson.loads(out.strip().splitlines()[-1])
        wait_until(lambda: self.backlog_of("slow") <= 0, 60, "e2e drained")
        self.record_redis_cost("custom", idle, self.meter.read(), int(sent["sent"]), monitor=monitor)
        time.sleep(0.6)  # nginx flushes its log every 200 ms
        self.note_rss("web (connector)", web)
        self.stop(sched)
        self.stop(worker, "worker (e2e)")
        self.stop(web)
        latencies = []
        for line in self.nginx.lines("slow") if self.nginx else []:
            parts = line.split()
            if len(parts) < 5 or ":v:e2e-" not in parts[4]:
                continue
            msec, request_time = float(parts[0]), float(parts[1])
            sent_ns = int(parts[4].split(":v:e2e-", 1)[1].split("-", 1)[0])
            latencies.append((msec - request_time) - sent_ns / 1e9)
        latencies.sort()
        if not latencies:
            self.results["notes"].append("end to end: no receipts parsed")
            return
        p50 = latencies[len(latencies) // 2] * 1000
        p99 = latencies[min(len(latencies) - 1, int(len(latencies) * 0.99))] * 1000
        self.results["e2e"] = {"sent": sent, "received": len(latencies), "p50_ms": p50, "p99_ms": p99}
        log(
            f"end to end at 500 ev/s: p50 {p50:.0f} ms, p99 {p99:.0f} ms ({len(latencies)} receipts, sent {sent})"
        )
        self.row("end to end p50, steady 500 events/s", p50, "ms", None, "(info)", None)
        self.row("end to end p99, steady 500 events/s", p99, "ms", None, "< 250 ms", p99 < 250)
        self.results["e2e_hist"] = [round(x * 1000, 2) for x in latencies[:: max(1, len(latencies) // 2000)]]

    def record_redis_cost(
        self,
        key: str,
        idle: redis_cost.Window,
        total: redis_cost.Window,
        events: int,
        identifies: int | None = None,
        monitor: redis_cost.Monitor | None = None,
    ) -> None:
        """One end-to-end window's Redis commands (bench/redis_cost.py) as a row beside its
        target -- every command from the first request to the last delivery, background
        included --, the top commands and the idle background as notes (where to look)."""
        loaded, background = redis_cost.split_idle(idle, total)
        commands = sum(loaded.counts.values())
        per = redis_cost.per_event(loaded.counts, events)
        # The background's share, were it the same under load as idle (an estimate).
        net = (commands - sum(background.values()) * loaded.seconds) / events if events else 0.0
        top = redis_cost.top_commands(loaded.counts, events, 10)
        idle_top = sorted(background.items(), key=lambda kv: (-kv[1], kv[0]))[:5]
        self.results.setdefault("redis_cost", {})[key] = {
            "events": events,
            "identifies": identifies,
            "commands": commands,
            "seconds": round(loaded.seconds, 2),
            "per_event": round(per, 3),
            "per_event_less_idle_background": round(net, 3),
            "per_identify": round(commands / identifies, 3) if identifies else None,
            "cpu_seconds_per_event": loaded.cpu_seconds / events if events else 0.0,
            "idle_commands_per_second": round(sum(background.values()), 1),
            "idle_top": [(name, round(rate, 1)) for name, rate in idle_top],
            "counts": loaded.counts,
            "top": top,
        }
        what = (
            "per custom event (track), end to end at 500 events/s"
            if key == "custom"
            else "per event of the identify-heavy mix, rest, hold+skip on"
        )
        target = REDIS_PER_CUSTOM_EVENT_TARGET if key == "custom" else REDIS_PER_IDENTIFY_TARGET
        self.row(f"Redis commands {what}", per, "commands/event", None, f"<= {target}", per <= target)
        cpu_us = loaded.cpu_seconds / events * 1e6 if events else 0.0
        self.row(f"Redis CPU {what}", cpu_us, "us/event", None, "(info)", None)
        listed = ", ".join(f"{name} {each:.2f}" for name, _, each in top)
        idle_listed = ", ".join(f"{name} {rate:.1f}" for name, rate in idle_top)
        self.results["notes"].append(
            f"Redis {what}: {per:.2f} commands/event ({commands} for {events} events in "
            f"{loaded.seconds:.1f} s), {net:.2f} less the idle background of "
            f"{sum(background.values()):.0f} commands/s ({idle_listed}); top per event: {listed}"
        )
        log(self.results["notes"][-1])
        if monitor is not None:
            self.record_round_trips(key, monitor, events, rows=False)

    def record_round_trips(
        self, key: str, monitor: redis_cost.Monitor, events: int, rows: bool = True
    ) -> None:
        """A MONITOR window's commands, split: what clients sent (each command of a round trip
        or a pipeline) and what their scripts called -- by command and key family."""
        sent, scripted = monitor.stop()
        polls = self.meter.own.get("get", 0)  # the bench's backlog polling (meter started with it)
        if polls and "get backlog" in sent:
            sent["get backlog"] = max(0, sent["get backlog"] - polls)
        self.results.setdefault("redis_round_trips", {})[key] = {
            "events": events,
            "sent": sent,
            "scripted": scripted,
            "sent_per_event": round(sum(sent.values()) / events, 3) if events else 0.0,
            "scripted_per_event": round(sum(scripted.values()) / events, 3) if events else 0.0,
        }
        what = "per custom event (track)" if key == "custom" else "per event of the identify-heavy mix, rest"
        per = sum(sent.values()) / events if events else 0.0
        if rows:
            target = REDIS_PER_CUSTOM_EVENT_TARGET if key == "custom" else REDIS_PER_IDENTIFY_TARGET
            self.row(
                f"Redis commands sent {what} (no script calls; MONITOR pass, {events:,} events)",
                per,
                "commands/event",
                None,
                f"<= {target}",
                per <= target,
            )
        for kind, counts in (("sent by clients", sent), ("called by scripts", scripted)):
            listed = ", ".join(
                f"{n} {each:.2f}" for n, _, each in redis_cost.top_commands(counts, events, 10)
            )
            self.results["notes"].append(
                f"Redis {what}, MONITOR: {sum(counts.values()) / events:.2f} commands {kind} per event: {listed}"
            )
            log(self.results["notes"][-1])

    def monitor(self, key: str, force: bool = False) -> redis_cost.Monitor | None:
        if not (REDIS_MONITOR or force):
            return None
        port = int(self.redis_url.rsplit(":", 1)[1].split("/", 1)[0])
        return redis_cost.Monitor(port, self.tmp / f"monitor-{key}.log")

    def warm_up(self, url: str, write_key: str, conn: str) -> None:
        """One event through the whole path: the worker is consuming once it lands."""
        r = requests.post(
            url + "/v1/track", data=orjson.dumps(track("warm-up", 0)), auth=(write_key, ""), timeout=10
        )
        r.raise_for_status()
        wait_until(lambda: self.backlog_of(conn) <= 0, 60, "warm-up event delivered")

    # -- quota efficiency ----------------------------------------------------------------------

    def mixed(self) -> None:
        self.r.flushdb()
        web, url = self.web("ops.wsgi:app", 1)
        worker = self.worker("mixed", "voucherify.as1")
        sched = self.add("scheduler-mixed", [str(BIN / "connector"), "scheduler"])
        events = mixed_stream(customers=max(50, MIXED_EVENTS // 10), events=MIXED_EVENTS)
        session = requests.Session()
        session.auth = ("wk_bench_mixed", "")
        for start in range(0, len(events), 100):
            r = session.post(
                url + "/v1/batch", data=orjson.dumps(batch_body(events[start : start + 100])), timeout=10
            )
            r.raise_for_status()
        started = time.monotonic()
        wait_until(lambda: self.backlog_of("mixed") <= 0, 240, "mixed load delivered")
        elapsed = time.monotonic() - started
        time.sleep(0.6)
        self.stop(sched)
        self.stop(worker, "worker (mixed)")
        self.stop(web)
        paths: dict[str, int] = {}
        statuses: dict[str, int] = {}
        for line in self.nginx.lines("mixed") if self.nginx else []:
            parts = line.split()
            paths[parts[3]] = paths.get(parts[3], 0) + 1
            statuses[parts[2]] = statuses.get(parts[2], 0) + 1
        calls = sum(paths.values())
        kinds: dict[str, int] = {}
        for e in events:
            kinds[e["type"]] = kinds.get(e["type"], 0) + 1
        per_event = calls / len(events)
        self.results["mixed"] = {
            "events": len(events),
            "kinds": kinds,
            "calls_by_path": paths,
            "statuses": statuses,
            "seconds": elapsed,
            "rate_limit_per_minute": MIXED_RATE_PER_MINUTE,
        }
        uncoalesced = sum(1 for e in events if e["type"] in ("identify", "track", "page", "group"))
        log(f"mixed load: {calls} Voucherify calls for {len(events)} events ({per_event:.3f}/event) {paths}")
        self.row(
            f"Voucherify calls per event, mixed load, limit {MIXED_RATE_PER_MINUTE}/min",
            per_event,
            "calls/event",
            uncoalesced / len(events),
            "well below 1",
            per_event < 0.75,
        )

    # -- quota efficiency, identify-heavy (SPEC 8 and 10: hold, merge, unchanged skip, bulk) ---

    def quota(self) -> None:
        """Voucherify calls per event on an analytics.js-like identify-heavy mix, every call the
        fake received counted (bulk, async-action polls, singles), with the hold and the
        unchanged skip on and, as the in-run baseline, off -- in rest and in segmentio mode.
        The fake (the sandbox's, which keeps customers and enforces limits) also says whether any
        call was refused (429) and whether every customer ended with its newest traits."""
        events = identify_heavy_stream(QUOTA_CUSTOMERS, QUOTA_EVENTS)
        figures: dict[str, dict[str, Any]] = {}
        runs = set(filter(None, QUOTA_RUNS.split(",")))
        for mode in ("rest", "segmentio"):
            for label, window, memory in (("on", 5, 7), ("off", 0, 0)):
                if f"{mode}-{label}" in runs:
                    figures[f"{mode}-{label}"] = self.quota_run(mode, events, window, memory)
        self.results["quota"] = figures
        kinds: dict[str, int] = {}
        for e in events:
            kinds[e["type"]] = kinds.get(e["type"], 0) + 1
        self.results["quota_mix"] = kinds
        for mode, target in (("rest", 0.2), ("segmentio", 0.5)):
            if f"{mode}-on" not in figures or f"{mode}-off" not in figures:
                continue  # BENCH_QUOTA_RUNS left one out: no row without its baseline
            on, off = figures[f"{mode}-on"], figures[f"{mode}-off"]
            ok = on["per_event"] <= target and on["refused"] == 0 and on["stale_customers"] == 0
            self.row(
                f"Voucherify calls per event, identify-heavy mix, {mode} (baseline: hold+skip off)",
                on["per_event"],
                "calls/event",
                off["per_event"],
                f"<= {target}, 0 x 429, newest traits",
                ok,
            )

    def quota_run(
        self, mode: str, events: list[dict[str, Any]], window: int, memory: int, monitor_pass: bool = False
    ) -> dict[str, Any]:
        """One run of the mix.  ``monitor_pass``: only the MONITOR split of its Redis commands
        (bench/fleet.py: redis_round_trips), no commandstats rows."""
        self.r.flushdb()
        port = free_port()
        fake = self.add(
            f"fake-quota-{mode}-{window}",
            [
                sys.executable,
                "-m",
                "sandbox.fake_voucherify",
                "--host",
                "127.0.0.1",
                "--port",
                str(port),
                "--name",
                "quota",
            ],
            FAKE_VOUCHERIFY_APP_ID="bench-app",
            FAKE_VOUCHERIFY_SECRET_KEY="bench-secret",
        )
        fake_url = f"http://127.0.0.1:{port}"
        wait_until(lambda: requests.get(fake_url + "/__fake/health", timeout=1).ok, 30, "fake up")
        # Limits Voucherify would enforce (the fake refuses with 429 beyond them).
        requests.post(
            fake_url + "/__fake/quota",
            json={"api_calls_per_minute": 4000, "bulk_calls_per_hour": 20},
            timeout=5,
        ).raise_for_status()
        conf = self.tmp / f"quota-{mode}-{window}.toml"
        conf.write_text(
            f'[[connection]]\nid = "bench-quota"\nwrite_keys = ["wk_bench_quota"]\nbacklog_limit = 100000000\n'
            f'[connection.voucherify]\napp_id = "bench-app"\nsecret_key = "bench-secret"\n'
            f'region = "eu"\napi_url = "{fake_url}"\nmode = "{mode}"\n'
            # The project's limits; the connector takes its default share (half) of them, so
            # the baseline without hold and skip (~0.8 calls per event) is throttled, not stuck.
            f"api_calls_per_minute = 4000\nbulk_calls_per_hour = 20\n"
            f"coalesce_window_seconds = {window}\nunchanged_memory_days = {memory}\n"
        )
        env = {"CONNECTIONS_FILE": str(conf), "CONNECTOR_SCHEDULER_INTERVAL": "0.2"}
        web, url = self.web("ops.wsgi:app", 1, **env)
        worker = self.worker(f"quota-{mode}-{window}", "voucherify.eu", **env)
        sched = self.add(f"scheduler-quota-{mode}-{window}", [str(BIN / "connector"), "scheduler"], **env)
        session = requests.Session()
        session.auth = ("wk_bench_quota", "")
        # The identify row: production's settings (hold and skip on), rest mode.
        measured = mode == "rest" and window > 0 and not monitor_pass
        self.meter.start()
        monitor = self.monitor("identify") if measured else None
        if monitor_pass:
            monitor = self.monitor("identify-pass", force=True)
        if measured:
            time.sleep(REDIS_IDLE_SECONDS)
        idle = self.meter.read()
        started = time.monotonic()
        per_request = max(1, QUOTA_RATE // 10)  # ten requests a second: as the libraries flush
        for n, start in enumerate(range(0, len(events), per_request)):
            chunk = [dict(e, timestamp=payloads_now()) for e in events[start : start + per_request]]
            r = session.post(url + "/v1/batch", data=orjson.dumps(batch_body(chunk)), timeout=10)
            r.raise_for_status()
            time.sleep(max(0.0, started + (n + 1) / 10 - time.monotonic()))
        wait_until(
            lambda: self.backlog_of("quota") <= 0, 240, f"quota mix delivered ({mode}, window {window})"
        )
        elapsed = time.monotonic() - started
        total = self.meter.read()
        counts = redis_cost.difference(total.counts, idle.counts)
        if measured:
            identifies = sum(1 for e in events if e["type"] == "identify")
            self.record_redis_cost("identify", idle, total, len(events), identifies, monitor=monitor)
        elif monitor is not None:
            self.record_round_trips("identify", monitor, len(events))
        records = requests.get(fake_url + "/__fake/requests", timeout=30).json()
        records = records.get("requests", records) if isinstance(records, dict) else records
        customers = requests.get(fake_url + "/__fake/customers", timeout=30).json()
        customers = customers.get("customers", customers) if isinstance(customers, dict) else customers
        self.stop(sched)
        self.stop(worker, "worker (quota)")
        self.stop(web)
        self.stop(fake)
        api = [r for r in records if not str(r["path"]).startswith("/__fake")]
        paths: dict[str, int] = {}
        for r in api:
            key = (
                "/v1/async-actions/{id}"
                if str(r["path"]).startswith("/v1/async-actions/")
                else str(r["path"])
            )
            paths[key] = paths.get(key, 0) + 1
        refused = sum(1 for r in api if r["status"] == 429)
        stale = stale_customers(events, customers, mode)
        figure = {
            "events": len(events),
            "calls": len(api),
            "per_event": round(len(api) / len(events), 4),
            "calls_by_path": paths,
            "refused": refused,
            "stale_customers": stale,
            "seconds": round(elapsed, 1),
            "redis_commands_per_event": round(redis_cost.per_event(counts, len(events)), 3),
        }
        log(f"quota mix {mode}, hold {window}s/skip {memory}d: {figure}")
        return figure

    # -- report --------------------------------------------------------------------------------

    def finish(self) -> None:
        for label, mb in sorted(self.rss.items()):
            if label == "worker (delivery)":  # issue #23: draining the 12,000-event backlog
                self.row(
                    f"peak RSS {label}, {DELIVERY_EVENTS:,} events queued first",
                    mb,
                    "MB",
                    None,
                    f"< {WORKER_RSS_TARGET_MB} MB",
                    mb < WORKER_RSS_TARGET_MB,
                )
            else:
                self.row(f"peak RSS {label}", mb, "MB", None, "(info)", None)
        self.results["machine"] = machine()
        self.results["fake"] = self.fake_note
        self.results["load_generators"] = (
            "wrk 4.1 (Debian), 2 threads, keep-alive (gunicorn gevent workers keep connections open); "
            "gevent requests loop; paced 16-thread requests sender"
        )
        OUT_JSON.parent.mkdir(exist_ok=True)
        OUT_JSON.write_text(orjson.dumps(self.results, option=orjson.OPT_INDENT_2).decode())
        print()
        print(table(self.results["rows"]))
        for note in self.results["notes"]:
            print("note:", note)
        print(self.fake_note)
        print(f"machine: {self.results['machine']}")
        plot(self.results)
        print(f"wrote {OUT_JSON.relative_to(ROOT)} and {OUT_PNG.relative_to(ROOT)}")


def stale_customers(events: list[dict[str, Any]], customers: Any, mode: str) -> int:
    """Customers whose state at the fake is not their newest identify's traits (or missing)."""
    newest: dict[str, dict[str, Any]] = {}
    for e in events:
        if e["type"] == "identify":
            newest[e["userId"]] = e["traits"]
    store = {str(c.get("source_id")): c for c in customers if isinstance(c, dict)}
    wrong = 0
    for user, traits in newest.items():
        held = store.get(user)
        if (
            held is None
            or held.get("email") != traits["email"]
            or (held.get("metadata") or {}).get("version") != traits["metadata"]["version"]
        ):
            wrong += 1
    return wrong


def machine() -> dict[str, Any]:
    model = ""
    with contextlib.suppress(OSError), open("/proc/cpuinfo") as fh:
        for line in fh:
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    mem = 0
    with contextlib.suppress(OSError), open("/proc/meminfo") as fh:
        mem = int(fh.readline().split()[1]) // 1024
    return {
        "nproc": os.cpu_count(),
        "cpu": model,
        "ram_mb": mem,
        "load_before": os.getloadavg()[0] if hasattr(os, "getloadavg") else None,
        "python": sys.version.split()[0],
    }


def fmt(value: float | None, unit: str = "") -> str:
    if value is None:
        return "-"
    if unit in ("ms", "MB", "calls/event", "commands/event") or abs(value) < 10:
        return f"{value:,.2f}" if unit != "ms" else f"{value:,.0f}"
    return f"{value:,.0f}"


def table(rows: list[dict[str, Any]]) -> str:
    header = ("figure", "result", "unit", "baseline", "ratio", "target", "ok")
    body = [
        (
            r["figure"],
            fmt(r["value"], r["unit"]),
            r["unit"],
            fmt(r["baseline"], r["unit"]),
            f"{r['ratio']:.2f}x" if r["ratio"] is not None else "-",
            r["target"],
            {True: "yes", False: "NO", None: ""}[r["ok"]],
        )
        for r in rows
    ]
    widths = [max(len(str(x[i])) for x in [header, *body]) for i in range(len(header))]
    line = "  ".join("-" * w for w in widths)
    out = ["  ".join(str(h).ljust(w) for h, w in zip(header, widths, strict=True)), line]
    for b in body:
        out.append("  ".join(str(c).ljust(w) for c, w in zip(b, widths, strict=True)))
    return "\n".join(out)


def plot(results: dict[str, Any]) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    # Measured throughput only: the fleet's ceilings are derived figures, shown in the table.
    rows = [
        r
        for r in results["rows"]
        if r["unit"] in ("events/s", "requests/s") and not r["figure"].startswith("fleet ceiling")
    ]
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(14, 6))
    labels = [r["figure"].replace(", ", "\n", 1) for r in rows]
    xs = range(len(rows))
    ax1.barh([x + 0.2 for x in xs], [r["value"] for r in rows], height=0.4, label="connector")
    ax1.barh([x - 0.2 for x in xs], [r["baseline"] or 0 for r in rows], height=0.4, label="baseline")
    ax1.set_yticks(list(xs), labels, fontsize=7)
    ax1.set_xscale("log")
    ax1.set_xlabel("per second (log)")
    ax1.set_title("throughput vs baseline (same run)")
    ax1.legend()
    hist = results.get("e2e_hist") or []
    if hist:
        ax2.hist(hist, bins=60, color="tab:green")
        e2e = results["e2e"]
        for q, color in (("p50_ms", "black"), ("p99_ms", "red")):
            ax2.axvline(e2e[q], color=color, linestyle="--", label=f"{q[:3]} {e2e[q]:.0f} ms")
        ax2.axvline(250, color="grey", linestyle=":", label="target p99 250 ms")
        ax2.legend()
    ax2.set_title("end to end latency, ingest -> fake receipt, 500 events/s")
    ax2.set_xlabel("ms")
    fig.tight_layout()
    fig.savefig(OUT_PNG, dpi=110)


def main() -> None:
    bench = Bench()

    def hard_stop() -> None:
        log(f"hard limit of {HARD_LIMIT_SECONDS:.0f}s reached: stopping everything")
        # What was measured so far is still written (a busy machine stretches the drains).
        with contextlib.suppress(Exception):
            bench.results["notes"].append(f"hard limit of {HARD_LIMIT_SECONDS:.0f}s reached: partial run")
            bench.finish()
        bench.close()
        os._exit(2)

    timer = threading.Timer(HARD_LIMIT_SECONDS, hard_stop)
    timer.daemon = True
    timer.start()
    started = time.monotonic()
    load = os.getloadavg()
    log(f"load average before: {load[0]:.2f} {load[1]:.2f} {load[2]:.2f}; work dir {bench.tmp}")
    only = set(filter(None, os.environ.get("BENCH_ONLY", QUICK_PHASES if QUICK else "").split(",")))
    try:
        bench.start_infra()
        for phase in PHASES:
            if not only or phase in only:
                log(f"phase {phase}")
                if phase in ("fleet", "redis_round_trips", "redis_capacity"):  # bench/fleet.py
                    getattr(fleet_mod, phase)(bench)
                elif phase == "backfill":  # bench/backfill.py
                    backfill_mod.backfill(bench)
                else:
                    getattr(bench, phase)()
        bench.results["seconds"] = round(time.monotonic() - started, 1)
        bench.results["load_average_before"] = load
        bench.results["load_average_after"] = os.getloadavg()
        bench.finish()
    finally:
        timer.cancel()
        bench.close()
    log(f"done in {time.monotonic() - started:.0f}s; load average after: {os.getloadavg()[0]:.2f}")


if __name__ == "__main__":
    main()
