"""Hardening (issue 10) where the behaviour is a process's: real gunicorn, Celery, the scheduler,
Redis and fake Segment -- slow clients, bytes stored in Redis, restart and replay of webhooks,
processes refusing a broken configuration, the backlog bound in bytes."""

from __future__ import annotations

import base64
import gzip
import json
import socket
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import orjson
import pytest
import redis
import requests

from app.ingest import STORED_FACTOR, STORED_SLACK
from tests.conftest import make_stack
from tests.support.fakes import FakeSegment
from tests.support.processes import BIN, ROOT, base_env, wait_until
from tests.support.webhooks import iso, load_example, signed_request, wrap
from workers.mapping.source.mapping import message_id_for

pytestmark = pytest.mark.integration

CONNECTIONS = """
[[connection]]
id = "acme"
write_keys = ["wk_acme_hardening"]
segment_webhook_secret = "seg-secret"
[connection.voucherify]
coalesce_window_seconds = 0  # not about the hold window: every request as it comes
api_calls_per_minute = 10000000  # not about quotas: no budget in the way
bulk_calls_per_hour = 10000000
app_id = "hardening-app-id"
secret_key = "hardening-secret-key"
region = "eu"
api_url = "http://127.0.0.1:9"
webhook_secret = "vf-secret"
[connection.segment]
write_key = "seg-out-key"
api_url = "{segment_url}"

[[connection]]
id = "tight"
write_keys = ["wk_tight"]
backlog_bytes_limit = 1048576
[connection.voucherify]
coalesce_window_seconds = 0  # not about the hold window: every request as it comes
api_calls_per_minute = 10000000  # not about quotas: no budget in the way
bulk_calls_per_hour = 10000000
app_id = "hardening-app-id"
secret_key = "hardening-secret-key"
region = "us1"
api_url = "http://127.0.0.1:9"
"""


def auth(key: str = "wk_acme_hardening") -> dict[str, str]:
    return {"Authorization": "Basic " + base64.b64encode(f"{key}:".encode()).decode()}


def write_connections(tmp_path: Path, segment_url: str = "http://127.0.0.1:9") -> Path:
    path = tmp_path / "connections.toml"
    path.write_text(CONNECTIONS.format(segment_url=segment_url))
    return path


# --- slow clients -----------------------------------------------------------------------------


class Dribbler:
    """Many sockets, each sending its request a byte at a time (one thread drives them all)."""

    def __init__(self, host: str, port: int) -> None:
        self.host, self.port = host, port
        self.sockets: list[tuple[socket.socket, bytes, list[int]]] = []
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)

    def add(self, payload: bytes, already: int = 0) -> socket.socket:
        sock = socket.create_connection((self.host, self.port), timeout=5)
        sock.sendall(payload[:already])
        self.sockets.append((sock, payload, [already]))
        return sock

    def _run(self) -> None:
        while not self.stop.wait(0.5):
            for sock, payload, sent in self.sockets:
                if sent[0] < len(payload) - 1:  # never the last byte: the request never completes
                    try:
                        sock.send(payload[sent[0] : sent[0] + 1])
                        sent[0] += 1
                    except OSError:
                        sent[0] = len(payload)

    def close(self) -> None:
        self.stop.set()
        self.thread.join(5)
        for sock, _, _ in self.sockets:
            sock.close()


def _response_of(sock: socket.socket, timeout: float) -> bytes:
    sock.settimeout(timeout)
    data = b""
    try:
        while b"\r\n\r\n" not in data:
            chunk = sock.recv(4096)
            if not chunk:
                break
            data += chunk
    except TimeoutError:
        pass
    return data


def test_many_slow_clients_do_not_starve_ingest_or_healthz(
    tmp_path: Path, redis_url: str, stack_factory: list
) -> None:
    stack = make_stack(
        stack_factory, tmp_path, redis_url, write_connections(tmp_path), CONNECTOR_BODY_TIMEOUT_SECONDS="3"
    )
    stack.web(workers=2)
    port = int(stack.web_url.rsplit(":", 1)[1])
    body = json.dumps({"batch": [{"type": "track", "userId": "u", "event": "E"}] * 50}).encode()
    post = (
        b"POST /v1/batch HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
        + f"Authorization: {auth()['Authorization']}\r\nContent-Length: {len(body)}\r\n\r\n".encode()
        + body
    )
    header_end = post.index(b"\r\n\r\n") + 4
    dribbler = Dribbler("127.0.0.1", port)
    try:
        # 150 bodies trickling in, 60 request heads trickling in, 40 Voucherify webhooks half-sent:
        # five times what took a two-worker sync web process down twice over.
        bodies = [dribbler.add(post, header_end + 10) for _ in range(150)]
        heads = [dribbler.add(post, 5) for _ in range(60)]
        hook = (
            b"POST /webhooks/voucherify/acme HTTP/1.1\r\nHost: x\r\nx-voucherify-signature: "
            + b"ab" * 32
            + b"\r\nContent-Length: 5000\r\n\r\n{"
        )
        hooks = [dribbler.add(hook + b" " * 4000, len(hook)) for _ in range(40)]
        dribbler.thread.start()
        time.sleep(1.0)
        started = time.monotonic()
        for i in range(10):
            assert requests.get(stack.web_url + "/healthz", timeout=3).status_code == 200
            answer = requests.post(
                stack.web_url + "/v1/track",
                json={"userId": f"fast-{i}", "event": "Fast"},
                headers=auth(),
                timeout=3,
            )
            assert answer.status_code == 200, answer.text
        # Twenty round trips while 250 sockets dribble: seconds, not 30 s per blocked worker.
        assert time.monotonic() - started < 10
        # Past the body deadline (3 s), each dribbled body is answered 408 body_timeout...
        for sock in bodies[:20] + hooks[:5]:
            head = _response_of(sock, 10)
            assert head.startswith(b"HTTP/1.1 408"), head[:200]
        # ... and each trickling request head is closed by gunicorn (keepalive: 5 s).
        for sock in heads[:10]:
            assert _response_of(sock, 10) in (b"",) or b"400" in _response_of(sock, 1)
    finally:
        dribbler.close()
    assert requests.get(stack.web_url + "/healthz", timeout=3).status_code == 200


# What one web worker absorbs: half-open sockets (connected, a partial request head, never
# completed) below WEB_WORKER_CONNECTIONS (1,000) leave /healthz answering at once -- measured
# 0.00-0.03 s with 900 on a loaded 2-core machine, asserted under 3 s.  At or above it, gevent's
# pool is full and new connections wait in the listen backlog until gunicorn drops a head after
# ``keepalive`` (5 s): measured 4.95 s with 1,200 and 9.8 s with 2,000.  Hence docs/security.md: on the
# open internet a buffering proxy (or the platform's router) stands in front.
HALF_OPEN_PER_WORKER = 900
HALF_OPEN_HEALTHZ_SECONDS = 3.0


def test_half_open_sockets_below_worker_connections_leave_healthz_answering(
    tmp_path: Path, redis_url: str, stack_factory: list
) -> None:
    stack = make_stack(stack_factory, tmp_path, redis_url, write_connections(tmp_path))
    stack.web(workers=1)
    port = int(stack.web_url.rsplit(":", 1)[1])
    sockets: list[socket.socket] = []
    try:
        for _ in range(HALF_OPEN_PER_WORKER):
            sock = socket.create_connection(("127.0.0.1", port), timeout=5)
            sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Never-Ends: ")
            sockets.append(sock)
        slowest = 0.0
        for _ in range(5):  # over ~2.5 s, inside the 5 s gunicorn gives a head
            started = time.monotonic()
            answer = requests.get(stack.web_url + "/healthz", timeout=30)
            slowest = max(slowest, time.monotonic() - started)
            assert answer.status_code == 200
            time.sleep(0.5)
        print(f"{HALF_OPEN_PER_WORKER} half-open sockets: slowest /healthz {slowest:.2f} s")
        assert slowest < HALF_OPEN_HEALTHZ_SECONDS, slowest
    finally:
        for sock in sockets:
            sock.close()


def test_refusals_by_header_come_before_the_body_is_read(
    tmp_path: Path, redis_url: str, stack_factory: list
) -> None:
    """A wrong write key (or a webhook without its signature) is answered at once, while the
    client is still 'sending' a large body it will never finish."""
    stack = make_stack(stack_factory, tmp_path, redis_url, write_connections(tmp_path))
    stack.web()
    port = int(stack.web_url.rsplit(":", 1)[1])
    heads = [
        b"POST /v1/batch HTTP/1.1\r\nHost: x\r\nAuthorization: "
        + auth("wk_nope")["Authorization"].encode()
        + b"\r\nContent-Length: 400000\r\n\r\n{",
        b"POST /webhooks/segment/acme HTTP/1.1\r\nHost: x\r\nContent-Length: 400000\r\n\r\n[",
        b"POST /webhooks/voucherify/acme HTTP/1.1\r\nHost: x\r\nContent-Length: 400000\r\n\r\n{",
    ]
    for head in heads:
        with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
            sock.sendall(head)
            started = time.monotonic()
            answer = _response_of(sock, 5)
            assert answer.startswith(b"HTTP/1.1 401"), (head[:40], answer[:200])
            assert time.monotonic() - started < 2


# --- stored bytes -------------------------------------------------------------------------------


def test_bytes_stored_in_redis_are_bounded_by_the_request(
    tmp_path: Path, redis_url: str, stack_factory: list
) -> None:
    """The review's attack: a tiny gzip body whose batch-level context every item inherits."""
    stack = make_stack(stack_factory, tmp_path, redis_url, write_connections(tmp_path))
    stack.web()
    client = redis.Redis.from_url(redis_url)
    context = {"page": {"url": "https://shop.example/" + "a" * 30_000}, "userAgent": "b" * 1500}
    body = orjson.dumps(
        {"batch": [{"type": "page", "userId": "u", "name": "P"} for _ in range(2500)], "context": context}
    )
    raw = gzip.compress(body, 9)
    assert len(raw) < 4096  # a few KB on the wire
    answer = requests.post(
        stack.web_url + "/v1/batch",
        data=raw,
        headers={**auth(), "Content-Encoding": "gzip", "Content-Type": "application/json"},
        timeout=30,
    )
    assert answer.status_code == 200, answer.text
    stored = client.memory_usage("voucherify.eu", samples=0)
    assert stored is not None
    # Was 2,500 copies of the context (~80 MB).  Now: the items, ONE context, kombu's envelope
    # (base64: 4/3) -- within the request's own bound.
    assert stored < 4 / 3 * (STORED_FACTOR * len(body) + STORED_SLACK) + 64 * 1024, (stored, len(body))
    # The context is in there once, not once per item (that would be 2,500 x 31 KB).
    assert stored < 20 * len(orjson.dumps(context)), stored
    # The connection's backlog counts those bytes.
    stored_counter = int(client.get("connector:backlog_bytes:acme") or 0)
    assert len(body) / 2 < stored_counter <= STORED_FACTOR * len(body) + STORED_SLACK
    assert client.ttl("connector:backlog_bytes:acme") == -1 and client.ttl("connector:backlog:acme") == -1


def test_backlog_bound_in_bytes_answers_429(tmp_path: Path, redis_url: str, stack_factory: list) -> None:
    stack = make_stack(stack_factory, tmp_path, redis_url, write_connections(tmp_path))
    stack.web()
    fat = [
        {"type": "track", "userId": f"u{i}", "event": "E", "properties": {"p": "x" * 20_000}}
        for i in range(20)
    ]
    statuses = []
    for _ in range(4):  # ~400 KB each, few events: the event bound (100,000) is far away
        answer = requests.post(
            stack.web_url + "/v1/batch", json={"batch": fat}, headers=auth("wk_tight"), timeout=10
        )
        statuses.append((answer.status_code, answer.json().get("code")))
    assert statuses[:2] == [(200, None), (200, None)], statuses
    assert statuses[-1] == (429, "backlog_full"), statuses


# --- Voucherify webhooks: dedupe across restarts for as long as a replay is accepted ----------


@pytest.fixture
def fake_segment(tmp_path: Path) -> Iterator[FakeSegment]:
    fake = FakeSegment(write_keys=("seg-out-key",), log_dir=tmp_path).start()
    try:
        yield fake
    finally:
        fake.stop(kill=True)


def test_webhook_replayed_after_a_restart_is_delivered_once(
    tmp_path: Path, redis_url: str, stack_factory: list, fake_segment: FakeSegment
) -> None:
    path = write_connections(tmp_path, fake_segment.url)
    example = load_example("customer.rewarded")
    # 30 hours old: accepted (48 h), older than the 28 h the dedupe memory used to last.
    old = wrap(example, "customer.rewarded", "2024-01-01", "ev-replayed", iso(time.time() - 30 * 3600))
    raw, headers = signed_request(old, "vf-secret")

    def start() -> Any:
        stack = make_stack(stack_factory, tmp_path, redis_url, path, CONNECTOR_SCHEDULER_INTERVAL="0.2")
        stack.web()
        stack.worker(concurrency=5)
        stack.scheduler()
        return stack

    stack = start()
    assert (
        requests.post(
            stack.web_url + "/webhooks/voucherify/acme", data=raw, headers=headers, timeout=10
        ).status_code
        == 202
    )
    wait_until(lambda: fake_segment.events(), timeout=30, what="the first delivery")
    stack.close()
    stack_factory.remove(stack)

    key = "connector:ledger:acme:" + message_id_for("acme", "ev-replayed")
    ttl = redis.Redis.from_url(redis_url).ttl(key)
    assert ttl > (48 + 4) * 3600, ttl  # longer than the accepted age plus the retry window

    stack = start()
    answer = requests.post(stack.web_url + "/webhooks/voucherify/acme", data=raw, headers=headers, timeout=10)
    assert answer.status_code == 202  # accepted (young enough) ...
    marker = wrap(example, "customer.rewarded", "2024-01-01", "ev-marker", iso(time.time()))
    raw2, headers2 = signed_request(marker, "vf-secret")
    assert (
        requests.post(
            stack.web_url + "/webhooks/voucherify/acme", data=raw2, headers=headers2, timeout=10
        ).status_code
        == 202
    )
    wait_until(lambda: len(fake_segment.events()) >= 2, timeout=30, what="the marker")
    time.sleep(1.0)
    ids = [e["event"]["messageId"] for e in fake_segment.events()]
    # ... but delivered once: the replay was a duplicate.
    assert sorted(ids) == sorted([message_id_for("acme", "ev-replayed"), message_id_for("acme", "ev-marker")])


# --- processes refuse a broken configuration, listing every problem once --------------------

BROKEN = """
[[connection]]
id = "broken"
write_keys = ["wk-broken"]
segment_webhook_secret = "trailing-newline\\n"
[connection.voucherify]
coalesce_window_seconds = 0  # not about the hold window: every request as it comes
api_calls_per_minute = 10000000  # not about quotas: no budget in the way
bulk_calls_per_hour = 10000000
app_id = "${BROKEN_APP_ID}"
secret_key = "s"
region = "mars"
webhook_secret = "${BROKEN_HOOK_SECRET}"
"""

PROBLEMS = (
    "connection 'broken': segment_webhook_secret: must not have leading or trailing whitespace",
    "connection 'broken': voucherify.app_id: environment variable BROKEN_APP_ID is not set",
    "connection 'broken': voucherify.region: unknown Voucherify region 'mars'",
    "connection 'broken': voucherify.webhook_secret: environment variable BROKEN_HOOK_SECRET is not set",
)


@pytest.mark.parametrize(
    ("process", "args"),
    [
        ("web", [str(BIN / "gunicorn"), "ops.wsgi:app", "--config", "gunicorn.conf.py"]),
        (
            "worker",
            [str(BIN / "celery"), "-A", "workers.worker", "worker", "--pool", "gevent", "--without-mingle"],
        ),
        ("scheduler", [str(BIN / "connector"), "scheduler"]),
    ],
)
def test_processes_exit_on_a_broken_configuration_with_the_list_once(
    tmp_path: Path, redis_url: str, process: str, args: list[str]
) -> None:
    path = tmp_path / "broken.toml"
    path.write_text(BROKEN)
    env = base_env(redis_url, path, PORT="0", LOG_FORMAT="json")
    done = subprocess.run(args, env=env, cwd=ROOT, capture_output=True, text=True, timeout=90)
    output = done.stdout + done.stderr
    assert done.returncode == 2, output[-3000:]
    assert f"connector {process}: invalid configuration (4 problems):" in output, output[-3000:]
    for problem in PROBLEMS:
        assert output.count(problem) == 1, (problem, output[-3000:])
    assert "Traceback" not in output, output[-3000:]
    assert "trailing-newline" not in output
    assert "started" not in output.lower() and "ready" not in output.lower()
    # Nothing was taken or published.
    assert redis.Redis.from_url(redis_url).dbsize() == 0
