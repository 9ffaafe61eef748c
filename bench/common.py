"""What the bench's phase modules share with the harness (``bench.run``): paths, sizes, a wait,
and the harness as a Protocol, so ``bench.fleet`` never imports ``bench.run`` (which imports it).
"""

from __future__ import annotations

import contextlib
import os
import sys
import time
from pathlib import Path
from typing import Any, Protocol

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
# BENCH_QUICK=1: small sizes and a few phases, for working on one row without a 10-minute run.
QUICK = os.environ.get("BENCH_QUICK") == "1"
QUOTA_CUSTOMERS = int(os.environ.get("BENCH_QUOTA_CUSTOMERS", "150"))
# At most this many calls in flight per target in a delivery worker (CONNECTOR_WORKER_INFLIGHT,
# the process's send slots); the baseline loop runs as many greenlets.
INFLIGHT = int(os.environ.get("BENCH_WORKER_INFLIGHT", "100"))
GREENLETS = INFLIGHT


def wait_until(pred: Any, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with contextlib.suppress(Exception):
            if pred():
                return
        time.sleep(0.05)
    raise RuntimeError(f"timed out waiting for {what}")


class Harness(Protocol):
    """The part of ``bench.run.Bench`` the phase modules use."""

    results: dict[str, Any]
    r: Any  # redis.Redis of the bench's own redis-server
    redis_url: str
    nginx: Any
    meter: Any

    def add(self, name: str, args: list[str], **extra: str) -> Any: ...
    def web(self, app: str, workers: int, **env: str) -> tuple[Any, str]: ...
    def worker(self, name: str, queue: str, **extra: str) -> Any: ...
    def stop(self, proc: Any, label: str | None = None) -> None: ...
    def row(
        self, figure: str, value: float, unit: str, baseline: float | None, target: str, ok: bool | None
    ) -> None: ...
    def preload(self, conn: str, events: list[dict[str, Any]], per_task: int = 100) -> None: ...
    def backlog_of(self, conn: str) -> int: ...
    def warm_up(self, url: str, write_key: str, conn: str) -> None: ...
    def monitor(self, key: str, force: bool = False) -> Any: ...
    def record_round_trips(self, key: str, monitor: Any, events: int, rows: bool = True) -> None: ...
    def quota_run(
        self, mode: str, events: list[dict[str, Any]], window: int, memory: int, monitor_pass: bool = False
    ) -> dict[str, Any]: ...
