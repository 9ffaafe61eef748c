"""Chains run concurrently: greenlets when gevent has patched the process, threads otherwise."""

from __future__ import annotations

import subprocess
import sys
import time

from workers.delivery.concurrency import gevent_active, run_all


def test_threads_when_gevent_is_not_active() -> None:
    assert not gevent_active()
    started = time.monotonic()
    results = run_all(lambda n: (time.sleep(0.1), n * 2)[1], list(range(10)), limit=10)
    assert results == [n * 2 for n in range(10)]  # input order kept
    assert time.monotonic() - started < 0.5


def test_greenlets_under_gevent() -> None:
    code = """
from gevent import monkey; monkey.patch_all()
import time
from workers.delivery.concurrency import gevent_active, run_all
assert gevent_active()
t = time.monotonic()
assert run_all(lambda n: (time.sleep(0.1), n)[1], list(range(50)), limit=50) == list(range(50))
assert time.monotonic() - t < 0.5, time.monotonic() - t
print("ok")
"""
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "ok"
