"""Redis behind Sentinel, the master killed -9 mid-stream (SPEC 16).

A master, two replicas and three sentinels (real redis-server processes; tests.support.sentinel)
serve the whole stack -- gunicorn, a gevent Celery worker, the scheduler -- configured only
through REDIS_SENTINELS (REDIS_URL points at a port nothing listens on: it must be ignored), with
REDIS_MIN_REPLICAS=1.  Two replicas, not one: with REDIS_MIN_REPLICAS=1 the promoted replica
needs a replica of its own, or refusing (503) would be the right answer until one is back.

While 3,000 events stream from a client that retries every refusal (as Segment's libraries do),
the master is killed with SIGKILL.  Then: every event answered 200 is delivered (none lost; a
second delivery only for calls on the wire around the failover), the ingest answers 200 again by
itself within 30 s, and the same processes -- never restarted -- keep working on the new master.
"""

from __future__ import annotations

import json
import signal
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import requests

from connector import redisenv
from tests.conftest import make_stack
from tests.support.fakes import FakeVoucherify
from tests.support.faultkit import (
    FAST_ENV,
    auth,
    batches,
    caught_up,
    connector_cli,
    delivered_ids,
    double_deliveries,
    track,
    write_connections,
)
from tests.support.processes import wait_until
from tests.support.sentinel import SentinelGroup

pytestmark = pytest.mark.integration

EVENTS = 3000
BATCH = 20
PASSWORD = "sentinel-pw-3f9c1a7e"
# Nothing listens there: a client that used REDIS_URL instead of the sentinels would fail.
UNUSED_REDIS_URL = "redis://127.0.0.1:9/0"


@pytest.fixture
def voucherify(tmp_path: Path) -> Iterator[FakeVoucherify]:
    with FakeVoucherify(log_dir=tmp_path / "fakes") as fake:
        fake.set_faults(latency_ms=20)
        yield fake


@pytest.fixture
def group(tmp_path: Path) -> Iterator[SentinelGroup]:
    g = SentinelGroup(tmp_path / "sentinel", password=PASSWORD, replicas=2, down_after_ms=2000)
    try:
        yield g.start()
    finally:
        g.stop()


class RetryingSender:
    """Posts each batch until it is answered 200 (503 and no answer are retried after a short
    pause, as Segment's libraries retry); keeps every answer with its time."""

    def __init__(self, web_url: str) -> None:
        self.web_url = web_url
        self.session = requests.Session()
        self.accepted: list[str] = []
        self.answers: list[tuple[float, int]] = []  # (time, status; -1: no answer)
        self.retry_after: list[str | None] = []  # of the 503s

    def send(self, events: list[dict[str, Any]]) -> None:
        while True:
            try:
                answer = self.session.post(
                    self.web_url + "/v1/batch", json={"batch": events}, headers=auth(), timeout=10
                )
                status = answer.status_code
            except requests.RequestException:
                answer, status = None, -1
            self.answers.append((time.time(), status))
            if status == 200:
                self.accepted.extend(str(e["messageId"]) for e in events)
                return
            assert status in (503, -1), (status, answer.text if answer is not None else "")
            if answer is not None:
                self.retry_after.append(answer.headers.get("Retry-After"))
            time.sleep(0.2)  # shorter than Retry-After: the test measures the recovery


def test_master_killed_mid_stream_loses_no_accepted_event(
    tmp_path: Path, stack_factory: list, voucherify: FakeVoucherify, group: SentinelGroup
) -> None:
    env = {**FAST_ENV, **group.env, "REDIS_MIN_REPLICAS": "1"}
    stack = make_stack(
        stack_factory, tmp_path, UNUSED_REDIS_URL, write_connections(tmp_path, voucherify), **env
    )
    web = stack.web(workers=2)
    worker = stack.worker("worker", concurrency=8)
    scheduler = stack.scheduler()
    sender = RetryingSender(stack.web_url)
    events = [track(f"sen-{i:05d}") for i in range(EVENTS)]

    def stream() -> None:
        for chunk in batches(events, BATCH):
            sender.send(chunk)
            time.sleep(0.03)

    thread = threading.Thread(target=stream)
    thread.start()
    wait_until(lambda: len(sender.accepted) >= EVENTS // 4, timeout=60, what="the stream under way")
    old = group.kill_master()
    killed_at = time.time()
    thread.join(180)
    assert not thread.is_alive(), "the stream never finished"

    # The failover was seen at the door, and the ingest came back by itself within 30 s.
    refused = [t for t, status in sender.answers if status != 200 and t >= killed_at]
    assert refused, "no request was refused: the kill came too late to test anything"
    back_at = min(t for t, status in sender.answers if status == 200 and t > killed_at)
    assert back_at - killed_at < 30, f"the ingest answered 200 again only after {back_at - killed_at:.1f} s"
    assert all(value for value in sender.retry_after), "a 503 without Retry-After"
    assert group.master_port() != old
    up_at = caught_up(voucherify)

    # Every event answered 200 is delivered: none lost with the master.
    assert len(sender.accepted) == EVENTS
    try:
        wait_until(lambda: delivered_ids(voucherify) >= set(sender.accepted), timeout=120, interval=0.5)
    except AssertionError:
        missing = set(sender.accepted) - delivered_ids(voucherify)
        raise AssertionError(
            f"{len(missing)} accepted events not delivered: {sorted(missing)[:10]}"
        ) from None
    explained, unexplained = double_deliveries(voucherify, [(killed_at, up_at)])
    assert unexplained == [], f"delivered twice, not explained by the failover: {unexplained[:10]}"

    # The same processes, never restarted, work on the new master: more events go all the way.
    after = [track(f"sen-after-{i:03d}") for i in range(BATCH)]
    sender.send(after)
    wait_until(lambda: delivered_ids(voucherify) >= {str(e["messageId"]) for e in after}, timeout=60)
    for proc in (web, worker, scheduler):
        assert proc.alive(), proc.log()[-3000:]
    # The workers' heartbeat reaches the new master (their state client followed the failover).
    client = group.client(group.master_port())
    assert client.zcard(b"connector:workers") >= 1
    print(f"failover: 200 again after {back_at - killed_at:.1f} s; re-sent: {len(explained)}")


def test_min_replicas_refuses_what_no_replica_acknowledged(
    tmp_path: Path, stack_factory: list, voucherify: FakeVoucherify, group: SentinelGroup
) -> None:
    """REDIS_MIN_REPLICAS=2 with both replicas frozen (SIGSTOP): WAIT counts none, the ingest
    answers 503 not_replicated with Retry-After; once they run again, 200.  (A 2 s wait: on a
    loaded machine a running replica's acknowledgement took over 300 ms.)"""
    env = {**FAST_ENV, **group.env, "REDIS_MIN_REPLICAS": "2", "REDIS_MIN_REPLICAS_TIMEOUT_MS": "2000"}
    stack = make_stack(
        stack_factory, tmp_path, UNUSED_REDIS_URL, write_connections(tmp_path, voucherify), **env
    )
    stack.web(workers=1)
    url = stack.web_url + "/v1/batch"
    first = requests.post(url, json={"batch": [track("rep-0")]}, headers=auth(), timeout=10)
    assert first.status_code == 200, first.text
    replicas = [p for p in group.nodes if p != group.master_port()]
    for port in replicas:
        group.nodes[port].send_signal(signal.SIGSTOP)
    try:
        refused = requests.post(url, json={"batch": [track("rep-1")]}, headers=auth(), timeout=10)
        assert refused.status_code == 503, refused.text
        assert refused.json()["code"] == "not_replicated"
        assert refused.headers.get("Retry-After")
    finally:
        for port in replicas:
            group.nodes[port].send_signal(signal.SIGCONT)
    again = requests.post(url, json={"batch": [track("rep-1")]}, headers=auth(), timeout=10)
    assert again.status_code == 200, again.text
    assert redisenv.redis_target({**group.env, "REDIS_URL": UNUSED_REDIS_URL}) != UNUSED_REDIS_URL

    # `connector check` reports the topology the sentinels see, without the password.
    done = connector_cli(stack.env, "check", "--offline", "--json")
    assert PASSWORD not in done.stdout + done.stderr
    master = f"127.0.0.1:{group.master_port()}"
    topology = [f for f in json.loads(done.stdout) if "sentinels report" in f["message"]]
    assert topology, done.stdout
    assert f"master {master}" in topology[0]["message"]
    for port in replicas:
        assert f"127.0.0.1:{port}" in topology[0]["message"]
