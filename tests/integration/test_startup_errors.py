"""A bad configuration stops every process at start-up, before it takes any work (README,
"Configuration": every configuration problem is reported at once, naming the connection and the
key; the process exits with status 2 before taking any work).

For each process of the Procfile -- ``web`` (gunicorn), ``worker`` (Celery) and ``scheduler`` --
started as the Procfile starts it, with a connections file holding two mistakes: the process
exits with a non-zero status within seconds, its log names both mistakes (connection and key),
and work that was waiting for it is still waiting: the web never answers, a queued task stays in
its queue (nothing unacknowledged), a due retry stays in the delayed store.
"""

from __future__ import annotations

import time
from pathlib import Path

import pytest
import redis
import requests

from connector.celery_app import create_celery
from connector.contract import TASK_SEGMENT_EVENTS
from connector.keys import Keys
from ops.embedded import free_port
from tests.support.processes import BIN, Proc, base_env, celery_worker_args
from workers.delivery.store import DelayedStore, Parked

pytestmark = pytest.mark.integration

# Two mistakes in one file: an unknown region, and a variable that is not set.
BAD = """
[[connection]]
id = "broken-one"
write_keys = ["wk_broken_one_key"]
[connection.voucherify]
app_id = "app-id-broken-one"
secret_key = "secret-key-broken-one"
region = "mars"

[[connection]]
id = "broken-two"
write_keys = ["wk_broken_two_key"]
[connection.voucherify]
app_id = "app-id-broken-two"
secret_key = "${H3_SURELY_UNSET_VARIABLE}"
region = "eu"
"""
EXIT_TIMEOUT = 30.0


def start_with_bad_config(tmp_path: Path, redis_url: str, name: str, args: list[str], **env: str) -> Proc:
    config = tmp_path / "bad.toml"
    config.write_text(BAD)
    return Proc(name, args, base_env(redis_url, config, **env), tmp_path).start()


def wait_exit(proc: Proc) -> int:
    assert proc.proc is not None
    try:
        return proc.proc.wait(EXIT_TIMEOUT)
    except Exception:
        proc.kill()
        raise AssertionError(f"{proc.name} still running {EXIT_TIMEOUT}s after a bad configuration") from None


def assert_reported(proc: Proc) -> None:
    log = proc.log()
    # Both problems, each naming its connection and key; never a secret.
    assert "broken-one" in log and "region" in log and "mars" in log, log[-3000:]
    assert "broken-two" in log and "H3_SURELY_UNSET_VARIABLE" in log, log[-3000:]
    assert "secret-key-broken-one" not in log


def test_web_exits_and_never_answers(tmp_path: Path, redis_url: str) -> None:
    port = free_port()
    proc = start_with_bad_config(
        tmp_path,
        redis_url,
        "web",
        [str(BIN / "gunicorn"), "ops.wsgi:app", "--config", "gunicorn.conf.py"],
        PORT=str(port),
        WEB_CONCURRENCY="1",
    )
    try:
        assert wait_exit(proc) != 0
        assert_reported(proc)
        with pytest.raises(requests.ConnectionError):
            requests.get(f"http://127.0.0.1:{port}/healthz", timeout=2)
    finally:
        proc.stop()


def test_worker_exits_and_leaves_queued_work_alone(tmp_path: Path, redis_url: str) -> None:
    # A task waiting in the region queue the broken worker would consume.
    celery = create_celery(redis_url)
    event = {"type": "track", "userId": "u1", "event": "E", "messageId": "waiting-1"}
    celery.send_task(TASK_SEGMENT_EVENTS, args=["broken-two", [event]], queue="voucherify.eu")
    client = redis.Redis.from_url(redis_url)
    assert client.llen("voucherify.eu") == 1

    proc = start_with_bad_config(
        tmp_path,
        redis_url,
        "worker",
        [*celery_worker_args("broken@%h", concurrency=4), "-Q", "voucherify.eu"],
        REMAP_SIGTERM="SIGQUIT",
    )
    try:
        assert wait_exit(proc) != 0
        assert_reported(proc)
        assert "ready" not in proc.log()
        assert client.llen("voucherify.eu") == 1  # still there, untouched
        assert client.zcard("unacked_index") == 0
    finally:
        proc.stop()


def test_scheduler_exits_and_leaves_due_work_parked(tmp_path: Path, redis_url: str) -> None:
    client = redis.Redis.from_url(redis_url)
    keys = Keys.from_env()
    item = {"request": {"message_id": "parked-1"}, "payload": {}, "backlog": 1}
    [entry_id] = DelayedStore(client, keys).add(
        [Parked("broken-two", "destination", "voucherify.eu", [item], due=time.time() - 5)]
    )
    proc = start_with_bad_config(tmp_path, redis_url, "scheduler", [str(BIN / "connector"), "scheduler"])
    try:
        assert wait_exit(proc) != 0
        assert_reported(proc)
        # The due entry was not moved back onto a queue.
        assert client.zscore(keys.delayed, entry_id) is not None
        assert client.llen("voucherify.eu") == 0
    finally:
        proc.stop()
