"""Paced load for the end-to-end figure, in its own process: batches of ``per_request`` track
events to /v1/batch at a steady ``rate`` events/s, each event's messageId carrying its send time
(ns), several keep-alive sessions so a slow answer never delays the schedule.

    python -m bench.loadgen URL WRITE_KEY RATE SECONDS PER_REQUEST  -> JSON {"sent", "errors"}
"""

from __future__ import annotations

import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import orjson
import requests

from bench.payloads import batch_body, track


def main() -> None:
    url, key, rate, seconds, per = (
        sys.argv[1],
        sys.argv[2],
        float(sys.argv[3]),
        float(sys.argv[4]),
        int(sys.argv[5]),
    )
    interval = per / rate
    local = threading.local()
    errors = 0
    sent = 0
    lock = threading.Lock()

    def post(n: int) -> None:
        nonlocal errors, sent
        session = getattr(local, "s", None)
        if session is None:
            session = local.s = requests.Session()
            session.auth = (key, "")
        now_ns = time.time_ns()
        events = [track(f"e2e-{n}-{i}", n, message_id=f"e2e-{now_ns}-{n}-{i}") for i in range(per)]
        data = orjson.dumps(batch_body(events))
        try:
            r = session.post(
                url + "/v1/batch", data=data, headers={"Content-Type": "application/json"}, timeout=10
            )
            ok = r.status_code == 200
        except requests.RequestException:
            ok = False
        with lock:
            if ok:
                sent += per
            else:
                errors += 1

    start = time.monotonic()
    with ThreadPoolExecutor(16) as pool:
        n = 0
        while True:
            due = start + n * interval
            if due - start >= seconds:
                break
            delay = due - time.monotonic()
            if delay > 0:
                time.sleep(delay)
            pool.submit(post, n)
            n += 1
    print(orjson.dumps({"sent": sent, "errors": errors, "seconds": time.monotonic() - start}).decode())


if __name__ == "__main__":
    main()
