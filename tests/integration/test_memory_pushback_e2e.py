"""The ingest's two memory refusals (SPEC 16, issue #20), with real processes: gunicorn, a Celery
worker, a fake Voucherify and a redis-server.

1. ``429 dead_letters_full``: a connection whose dead letters passed its
   ``dead_letter_bytes_limit`` refuses new work, naming the cause in the answer, the web's log
   and ``connector_events_rejected_total{reason}``; after ``connector dlq purge`` it accepts again.
2. ``503 redis_memory_full``: a redis-server of the test's own, filled past
   ``REDIS_MEMORY_HIGH_WATER`` of its ``maxmemory`` -> 503 with Retry-After, nothing enqueued;
   once memory is freed, the client's retry gets 200 and the event is delivered.
"""

from __future__ import annotations

import base64
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import redis
import requests
from prometheus_client.parser import text_string_to_metric_families

from ops.embedded import start_redis
from tests.conftest import make_stack
from tests.support.fakes import FakeVoucherify
from tests.support.faultkit import broker_state, connector_cli
from tests.support.processes import Stack, wait_until

pytestmark = pytest.mark.integration

WRITE_KEY = "wk_memory_pushback"
METRICS_TOKEN = "metrics-token-of-pushback"
DEAD_LETTER_LIMIT = 1024 * 1024  # the smallest the configuration allows

CONNECTIONS = """
[[connection]]
id = "push"
write_keys = ["{write_key}"]
dead_letter_bytes_limit = {limit}
[connection.voucherify]
coalesce_window_seconds = 0
app_id = "{app_id}"
secret_key = "{secret_key}"
region = "eu"
api_url = "{api_url}"
"""


def connections(tmp_path: Path, vf: FakeVoucherify) -> Path:
    path = tmp_path / "connections.toml"
    path.write_text(
        CONNECTIONS.format(
            write_key=WRITE_KEY,
            limit=DEAD_LETTER_LIMIT,
            app_id=vf.app_id,
            secret_key=vf.secret_key,
            api_url=vf.url,
        )
    )
    return path


def post(stack: Stack, events: list[dict[str, Any]]) -> requests.Response:
    auth = "Basic " + base64.b64encode(f"{WRITE_KEY}:".encode()).decode()
    return requests.post(
        stack.web_url + "/v1/batch", json={"batch": events}, headers={"Authorization": auth}, timeout=30
    )


def identify(mid: str, *, valid: bool = True, fat: int = 0) -> dict[str, Any]:
    # An object where the customer's email (a string) is expected: a mapping error, dead-lettered.
    email: Any = f"{mid}@example.com" if valid else {"not": "an email"}
    traits: dict[str, Any] = {"email": email, "name": "U"}
    if fat:
        traits["notes"] = "n" * fat
    return {"type": "identify", "userId": f"user-{mid}", "messageId": mid, "traits": traits}


def rejected_total(stack: Stack, reason: str) -> float:
    text = stack.metrics().text
    return sum(
        sample.value
        for family in text_string_to_metric_families(text)
        if family.name == "connector_events_rejected"
        for sample in family.samples
        if sample.name == "connector_events_rejected_total" and sample.labels.get("reason") == reason
    )


def nothing_queued(url: str) -> bool:
    state = broker_state(url)
    return sum(state["queues"].values()) == 0 and state["unacked"] == 0


# --- 1. dead letters over their bound ----------------------------------------------------------


def test_dead_letters_over_their_bound_refuse_new_work_until_purged(
    tmp_path: Path, redis_url: str, stack_factory: list
) -> None:
    client = redis.Redis.from_url(redis_url)
    with FakeVoucherify(log_dir=tmp_path / "fakes") as vf:
        stack = make_stack(
            stack_factory, tmp_path, redis_url, connections(tmp_path, vf), METRICS_TOKEN=METRICS_TOKEN
        )
        web = stack.web()
        stack.worker()

        # ~1.2 MB of dead letters: 60 identifies with 20 KB of traits each and an invalid email.
        for batch in range(3):
            answer = post(stack, [identify(f"bad-{batch}-{i}", valid=False, fat=20_000) for i in range(20)])
            assert answer.status_code == 200, answer.text
        wait_until(
            lambda: int(client.hget("connector:dlq:counts", "push") or 0) == 60,
            timeout=60,
            what="60 dead letters",
        )
        assert int(client.hget("connector:dlq:bytes", "push") or 0) >= DEAD_LETTER_LIMIT
        wait_until(lambda: nothing_queued(redis_url), timeout=30, what="the queues drained")
        before = rejected_total(stack, "dead_letters_full")

        answer = post(stack, [identify("after-1"), identify("after-2")])
        assert answer.status_code == 429, answer.text
        assert answer.json()["code"] == "dead_letters_full"
        assert "dead letters" in answer.json()["message"] and "connector dlq" in answer.json()["message"]
        assert int(answer.headers["Retry-After"]) > 0
        # Nothing of it was taken: no backlog reserved, no task published.
        assert client.get("connector:backlog:push") is None and nothing_queued(redis_url)
        # Named in the log and the refusals metric (both events of the refused request).
        wait_until(
            lambda: any(
                "dead letters over their bound" in line and "push" in line for line in web.log().splitlines()
            ),
            timeout=10,
            what="the refusal's log line",
        )
        assert rejected_total(stack, "dead_letters_full") == before + 2

        # The operator purges them: the ingest takes work again, and it is delivered.
        purged = connector_cli(stack.env, "dlq", "purge", "--all", "--yes", log=tmp_path / "cli.log")
        assert purged.returncode == 0, purged.stdout + purged.stderr
        assert client.hget("connector:dlq:bytes", "push") is None
        answer = post(stack, [identify("after-1")])
        assert answer.status_code == 200, answer.text
        wait_until(
            lambda: any("after-1" in str(r) for r in vf.requests()), timeout=30, what="after-1 delivered"
        )


# --- 2. Redis over its high water ---------------------------------------------------------------


@pytest.fixture
def own_redis(tmp_path: Path) -> Iterator[str]:
    proc: subprocess.Popen[bytes]
    proc, url = start_redis(tmp_path / "redis", appendonly=False)
    try:
        yield url
    finally:
        proc.kill()
        proc.wait(10)


def test_redis_over_its_high_water_answers_503_then_a_retry_is_delivered(
    tmp_path: Path, own_redis: str, stack_factory: list
) -> None:
    url = own_redis
    client = redis.Redis.from_url(url)
    with FakeVoucherify(log_dir=tmp_path / "fakes") as vf:
        stack = make_stack(
            stack_factory,
            tmp_path,
            url,
            connections(tmp_path, vf),
            METRICS_TOKEN=METRICS_TOKEN,
            REDIS_MEMORY_HIGH_WATER="0.5",
        )
        web = stack.web()
        stack.worker()
        time.sleep(1.0)  # heartbeats, the broker's bindings
        used = int(client.info("memory")["used_memory"])
        cap = used + 32 * 1024 * 1024
        client.config_set("maxmemory", cap)
        client.config_set("maxmemory-policy", "noeviction")
        # A neighbour's data: past 50% of maxmemory, still below maxmemory itself (in small keys:
        # one big SET would also count its own query buffer against maxmemory).
        fillers = 0
        while int(client.info("memory")["used_memory"]) < cap * 0.6:
            client.set(f"neighbour:filler:{fillers}", b"f" * (256 * 1024))
            fillers += 1
        time.sleep(1.2)  # the web looks at INFO memory at most once a second
        before = rejected_total(stack, "redis_memory_full")

        event = identify("retried-1")
        answer = post(stack, [event])
        assert answer.status_code == 503, answer.text
        assert answer.json()["code"] == "redis_memory_full"
        assert "memory" in answer.json()["message"]
        assert int(answer.headers["Retry-After"]) > 0
        assert client.get("connector:backlog:push") is None and nothing_queued(url)
        wait_until(lambda: "redis memory over its high water" in web.log(), timeout=10, what="the log line")
        assert rejected_total(stack, "redis_memory_full") == before + 1
        time.sleep(1.0)
        assert vf.requests() == []  # nothing was taken, so nothing is delivered

        # The neighbour goes: the client's retry (the same event) is accepted and delivered.
        client.delete(*(f"neighbour:filler:{i}" for i in range(fillers)))

        def retried() -> bool:
            return post(stack, [event]).status_code == 200

        wait_until(retried, timeout=15, interval=0.5, what="the retry accepted")
        wait_until(lambda: any("retried-1" in str(r) for r in vf.requests()), timeout=30, what="delivered")
        assert not any("OOM" in k for k in client.info("errorstats")), client.info("errorstats")
