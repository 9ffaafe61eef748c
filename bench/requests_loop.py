"""The delivery baseline: a plain ``requests`` loop, gevent, N greenlets, one process, the same
fake and the same kind of request as the worker sends.  Prints JSON {"requests", "seconds", "rate"}.

    python -m bench.requests_loop URL GREENLETS SECONDS
"""

from gevent import monkey

monkey.patch_all()

import sys  # noqa: E402
import time  # noqa: E402

import gevent  # noqa: E402
import orjson  # noqa: E402
import requests  # noqa: E402
from requests.adapters import HTTPAdapter  # noqa: E402


def main() -> None:
    url, greenlets, seconds = sys.argv[1], int(sys.argv[2]), float(sys.argv[3])
    session = requests.Session()
    session.mount("http://", HTTPAdapter(pool_connections=1, pool_maxsize=greenlets, max_retries=0))
    body = orjson.dumps(
        {"event": "Order Completed", "customer": {"source_id": "u-1"}, "metadata": {"total": 1}}
    )
    headers = {"Content-Type": "application/json", "X-App-Id": "bench", "X-App-Token": "bench"}
    count = 0
    stop = time.monotonic() + seconds

    def loop(n: int) -> None:
        nonlocal count
        while time.monotonic() < stop:
            r = session.post(
                url, data=body, headers={**headers, "Idempotency-Key": f"k-{n}-{count}"}, timeout=10
            )
            r.content  # noqa: B018 - read the body as the worker does
            count += 1

    started = time.monotonic()
    gevent.joinall([gevent.spawn(loop, i) for i in range(greenlets)])
    elapsed = time.monotonic() - started
    print(orjson.dumps({"requests": count, "seconds": elapsed, "rate": count / elapsed}).decode())


if __name__ == "__main__":
    main()
