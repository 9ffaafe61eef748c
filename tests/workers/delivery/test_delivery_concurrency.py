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


def test_concurrent_redis_steps_share_round_trips_under_gevent() -> None:
    """The ledger's claims and completions of concurrent greenlets go to Redis together, and each
    caller still gets its own answer (workers.delivery.batching)."""
    code = """
from gevent import monkey; monkey.patch_all()
import sys
import redis
from workers.delivery.batching import Coalescer
from workers.delivery.concurrency import run_all

batches = []
def run_batch(args):
    batches.append(len(args))
    if "boom" in args:
        raise redis.ConnectionError("away")
    return [a * 2 for a in args]

c = Coalescer(run_batch)
assert run_all(c, list(range(40)), limit=40) == [n * 2 for n in range(40)]
assert sum(batches) == 40 and len(batches) < 5, batches

def guarded(a):
    try:
        return c(a)
    except redis.ConnectionError:
        return "error"
assert run_all(guarded, [1, "boom"], limit=2) == ["error", "error"]  # the batch's error, to each
assert c(5) == 10  # and the next batch runs again
print("ok")
"""
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "ok"
