"""Refused credentials pause the connection (SPEC 10, "Other duties"), with real processes.

Voucherify answers 401 to everything (the fake's ``/__fake/auth`` revoke): the connection is
paused -- no dead letters, no retries spent, the work waits in the delayed store, ONE error is
logged, ``connector_connection_paused{reason="auth"}`` is 1 and ``connector stats --json`` says
since when.  Restored credentials: ``connector resume`` brings the work back at once, and the
scheduler's probe resumes by itself.  Every event is delivered exactly once.
"""

from __future__ import annotations

import json
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
import requests

from tests.conftest import make_stack
from tests.support.fakes import FakeVoucherify
from tests.support.faultkit import (
    FAST_ENV,
    Sender,
    by_key,
    calls,
    dead_letters,
    delivered_ids,
    parked_items,
    successes,
    track,
    write_connections,
)
from tests.support.processes import BIN, ROOT, Stack, wait_until

pytestmark = pytest.mark.integration
pytest_plugins = ["tests.support.private_redis"]


@pytest.fixture
def voucherify(tmp_path: Path) -> Iterator[FakeVoucherify]:
    with FakeVoucherify(log_dir=tmp_path / "fakes") as fake:
        yield fake


def cli(stack: Stack, *args: str) -> subprocess.CompletedProcess[str]:
    result = subprocess.run(
        [str(BIN / "connector"), *args], env=stack.env, cwd=ROOT, capture_output=True, text=True, timeout=60
    )
    with open(stack.tmp / "cli.log", "a") as log:
        log.write(f"$ connector {' '.join(args)}\n{result.stdout}{result.stderr}\n")
    return result


def paused_gauge(stack: Stack) -> float | None:
    text = requests.get(stack.web_url + "/metrics", timeout=5).text
    for line in text.splitlines():
        if line.startswith("connector_connection_paused{") and 'reason="auth"' in line:
            return float(line.rsplit(" ", 1)[1])
    return None


def paused_state(stack: Stack) -> object:
    stats = cli(stack, "stats", "--json")
    assert stats.returncode == 0, stats.stderr
    [conn] = json.loads(stats.stdout)["connections"]
    return conn["paused"]


def test_refused_credentials_pause_and_resume_delivers_everything_once(
    tmp_path: Path, private_redis: str, stack_factory: list, voucherify: FakeVoucherify
) -> None:
    config = write_connections(tmp_path, voucherify)
    env = {**FAST_ENV, "CONNECTOR_AUTH_PROBE_SECONDS": "3"}
    stack = make_stack(stack_factory, tmp_path, private_redis, config, **env)
    stack.web()
    workers = [stack.worker(name, concurrency=8) for name in ("w1", "w2")]
    sender = Sender(stack.web_url)
    assert paused_state(stack) is None and paused_gauge(stack) == 0

    voucherify.set_auth("revoked")
    first = [track(f"auth-a-{i:02d}") for i in range(30)]
    for chunk in range(0, 30, 10):
        assert sender.batch(first[chunk : chunk + 10]) == 200
    wait_until(lambda: len(parked_items(private_redis)) == 30, timeout=20, what="all 30 parked")
    refused = [r for r in calls(voucherify) if r["status"] == 401]
    # Paused at the first refusal: only calls already on their way then (or made with grants a
    # worker had taken ahead, which live a second at most) were refused, not one per event ever.
    first_answer = min(r["time"] for r in refused)
    assert all(r["time"] - r["duration_ms"] / 1000.0 <= first_answer + 1.0 for r in refused), refused
    assert dead_letters(private_redis) == []
    assert all(i["attempts"] == 0 for i in parked_items(private_redis))  # no retry spent
    pause = paused_state(stack)
    assert isinstance(pause, dict) and pause["reason"] == "auth" and pause["since"] > 0
    assert paused_gauge(stack) == 1
    errors = [
        line
        for w in workers
        for line in w.log().splitlines()
        if '"connection paused' in line or "connection paused until" in line
    ]
    assert len(errors) == 1 and '"level":"error"' in errors[0], errors

    # Still paused: new work waits without calling Voucherify at all.
    before = len(calls(voucherify))
    assert sender.batch([track("auth-b-00"), track("auth-b-01")]) == 200
    wait_until(lambda: len(parked_items(private_redis)) == 32, timeout=10, what="new work parked")
    assert len(calls(voucherify)) == before, [
        (r["method"], r["path"], r["status"]) for r in calls(voucherify)[before:]
    ]

    # Credentials restored; `connector resume` brings the work back at once (no scheduler probe
    # has run: the scheduler starts only after the resume -- on a loaded machine the CLI's start
    # outlasted the scheduler's first probe, which lifted the pause first -- and the work is due
    # minutes from now otherwise).
    voucherify.set_auth("ok")
    resumed = cli(stack, "resume", "acme")
    assert resumed.returncode == 0 and "resumed acme" in resumed.stdout, resumed.stdout + resumed.stderr
    stack.scheduler()
    accepted = set(sender.accepted)
    wait_until(lambda: delivered_ids(voucherify) == accepted, timeout=20, what="everything delivered")
    assert paused_state(stack) is None and paused_gauge(stack) == 0
    assert [k for k, records in by_key(successes(voucherify)).items() if len(records) > 1] == []
    assert dead_letters(private_redis) == []

    # Revoked again: paused again; the probe (every 3 s) resumes by itself once restored.
    voucherify.set_auth("forbidden")
    assert sender.batch([track("auth-c-00")]) == 200
    wait_until(lambda: paused_state(stack) is not None, timeout=15, what="paused again (403)")
    voucherify.set_auth("ok")
    wait_until(lambda: "auth-c-00" in delivered_ids(voucherify), timeout=20, what="the probe resumes")
    assert paused_state(stack) is None
    assert dead_letters(private_redis) == []
