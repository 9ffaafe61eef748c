"""Operations end to end (issue 7): /metrics aggregated across processes, one log line per
outcome, and the ``connector`` CLI (stats, send-test, dlq replay --progress, check) against a
real stack: gunicorn with 2 workers, a Celery worker, the scheduler and a fake Voucherify.
"""

from __future__ import annotations

import json
import re
import subprocess
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest
import requests
from prometheus_client.mmap_dict import MmapedDict
from prometheus_client.parser import text_string_to_metric_families

from tests.conftest import make_stack
from tests.support.fakes import FakeVoucherify
from tests.support.processes import BIN, METRICS_TOKEN, ROOT, Stack, wait_until

pytestmark = pytest.mark.integration

CONNECTION = "ops"
WRITE_KEY = "wk_ops_metrics_write_key"
APP_ID = "ops-app-id"
SECRET = "ops-vf-secret-key-7f3a"
FAST = {
    "METRICS_TOKEN": METRICS_TOKEN,  # the per-connection series of /metrics
    "CONNECTOR_RETRY_BASE_SECONDS": "0.3",
    "CONNECTOR_RETRY_CAP_SECONDS": "1",
    "CONNECTOR_SCHEDULER_INTERVAL": "0.2",
    "CONNECTOR_CONNECT_TIMEOUT": "1",
    "CONNECTOR_READ_TIMEOUT": "3",
}


def connections(url: str) -> str:
    return f"""
[[connection]]
id = "{CONNECTION}"
write_keys = ["{WRITE_KEY}"]
[connection.voucherify]
coalesce_window_seconds = 0  # not about the hold window: every request as it comes
app_id = "{APP_ID}"
secret_key = "{SECRET}"
region = "eu"
api_url = "{url}"
rate_limit_per_minute = 6000
"""


Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


def scrape(stack: Stack) -> Samples:
    response = stack.metrics()
    assert response.status_code == 200
    assert response.headers["Content-Type"].startswith("text/plain")
    samples: Samples = {}
    for family in text_string_to_metric_families(response.text):
        for sample in family.samples:
            samples[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return samples


def total(samples: Samples, name: str, **labels: str) -> float:
    return sum(
        value
        for (sample, sample_labels), value in samples.items()
        if sample == name and all(dict(sample_labels).get(k) == v for k, v in labels.items())
    )


def track(i: int) -> dict[str, Any]:
    return {
        "type": "track",
        "userId": f"ops-user-{i}",
        "event": "Order Completed",
        "messageId": f"ops-msg-{i}",
    }


def cli(stack: Stack, *args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    result = subprocess.run(
        [str(BIN / "connector"), *args],
        env=stack.env,
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )
    # Kept with the processes' logs: the session-end scan checks them for secrets too.
    with open(stack.tmp / "cli.log", "a") as log:
        log.write(f"$ connector {' '.join(args)}\n{result.stdout}{result.stderr}\n")
    assert SECRET not in result.stdout + result.stderr
    assert WRITE_KEY not in result.stdout + result.stderr
    return result


def outcome_lines(log: str) -> list[dict[str, Any]]:
    lines = []
    for line in log.splitlines():
        if line.startswith("{") and '"connector.outcome"' in line:
            lines.append(json.loads(line))
    return lines


def files_counting(directory: Path, metric: str) -> int:
    """How many processes' metric files hold a non-zero sample of ``metric``."""
    count = 0
    for path in directory.glob("counter_*.db"):
        for key, value, _ts, _pos in MmapedDict.read_all_values_from_file(str(path)):
            if json.loads(key)[1] == metric and value > 0:
                count += 1
                break
    return count


def test_metrics_logs_and_cli_follow_the_events(tmp_path: Path, redis_url: str, stack_factory: list) -> None:
    fake = FakeVoucherify(app_id=APP_ID, secret_key=SECRET, name="vf-ops", log_dir=tmp_path).start()
    try:
        path = tmp_path / "connections.toml"
        path.write_text(connections(fake.url))
        stack = make_stack(stack_factory, tmp_path, redis_url, path, **FAST)
        stack.web(workers=2)
        metrics_dir = Path(stack.env["PROMETHEUS_MULTIPROC_DIR"])

        # --- ingest, no worker yet: received / rejected counted, messages wait in the queue ---
        n = 24
        auth = (WRITE_KEY, "")

        def send(i: int) -> int:
            return requests.post(
                f"{stack.web_url}/v1/track", json=track(i), auth=auth, timeout=10
            ).status_code

        with ThreadPoolExecutor(8) as pool:  # concurrent: both gunicorn workers take requests
            assert set(pool.map(send, range(n))) == {200}
        batch = {"batch": [track(n), {"type": "track", "event": "No Identity"}]}
        answer = requests.post(f"{stack.web_url}/v1/batch", json=batch, auth=auth, timeout=10)
        assert answer.status_code == 200 and answer.json()["rejected"][0]["code"] == "missing_identity"
        assert (
            requests.post(
                f"{stack.web_url}/v1/track", json=track(99), auth=("nope-key", ""), timeout=10
            ).status_code
            == 401
        )
        sent = n + 1

        samples = scrape(stack)
        received = dict(connection=CONNECTION, direction="segment_to_voucherify", region="eu")
        assert total(samples, "connector_events_received_total", **received, source="tracking_api") == sent
        assert (
            total(
                samples, "connector_events_rejected_total", connection=CONNECTION, reason="missing_identity"
            )
            == 1
        )
        assert (
            total(
                samples, "connector_events_rejected_total", connection="unknown", reason="invalid_write_key"
            )
            == 1
        )
        assert (
            total(samples, "connector_queue_depth", queue="voucherify.eu") == n + 1
        )  # one message per request
        assert total(samples, "connector_backlog_events", connection=CONNECTION) == sent
        assert files_counting(metrics_dir, "connector_events_received_total") == 2  # both web workers
        for _ in range(4):  # whichever gunicorn worker answers, the totals are the merged ones
            again = scrape(stack)
            assert total(again, "connector_events_received_total", **received) == sent

        # --- delivery: one retry (503), one dead letter (400), the rest delivered --------------
        fake.set_faults(path="/v1/events", statuses=[503, 400])
        stack.worker(concurrency=20)
        stack.scheduler()

        def settled() -> bool:
            s = scrape(stack)
            done = total(s, "connector_deliveries_total", connection=CONNECTION, outcome="delivered")
            dead = total(s, "connector_dead_letters_total", connection=CONNECTION)
            return done + dead >= sent

        wait_until(settled, timeout=60, what="deliveries in /metrics")
        samples = scrape(stack)
        delivered = total(
            samples,
            "connector_deliveries_total",
            connection=CONNECTION,
            direction="segment_to_voucherify",
            region="eu",
            outcome="delivered",
        )
        assert delivered == sent - 1
        assert (
            total(samples, "connector_deliveries_total", connection=CONNECTION, outcome="retry", status="503")
            == 1
        )
        assert total(samples, "connector_deliveries_total", outcome="dead_letter", status="400") == 1
        assert total(samples, "connector_retries_scheduled_total", connection=CONNECTION) == 1
        assert total(samples, "connector_dead_letters_total", connection=CONNECTION, reason="rejected") == 1
        assert total(samples, "connector_dead_letter_entries", connection=CONNECTION) == 1
        assert (
            total(samples, "connector_delivery_latency_seconds_count", direction="segment_to_voucherify")
            == sent - 1
        )
        assert total(samples, "connector_queue_depth", queue="voucherify.eu") == 0
        assert total(samples, "connector_redis_up") == 1
        assert total(samples, "connector_events_received_total", **received) == sent  # web's still there

        # --- one JSON log line per outcome, with the SPEC 7 fields, no payload -----------------
        worker_log = next(p for p in stack.procs if p.name == "worker").log()
        lines = outcome_lines(worker_log)
        by_outcome = Counter(line["outcome"] for line in lines)
        assert (
            by_outcome["delivered"] == sent - 1
            and by_outcome["retry"] == 1
            and by_outcome["dead_letter"] == 1
        )
        for line in lines:
            # Fields that do not apply are left out, never written as null (a dead letter's
            # line has no latency of its own: it is about the event, not one answer).
            assert None not in line.values(), line
            fields = ["connection", "direction", "message_id", "action", "status", "attempt"]
            if line["outcome"] != "dead_letter":
                fields.append("latency_ms")
            for field in fields:
                assert field in line, line
            assert line["connection"] == CONNECTION and line["direction"] == "segment_to_voucherify"
            assert "Order Completed" not in json.dumps(line)  # no payload
        delivered_ids = {line["message_id"] for line in lines if line["outcome"] == "delivered"}
        dead_ids = {line["message_id"] for line in lines if line["outcome"] == "dead_letter"}
        assert delivered_ids | dead_ids == {f"ops-msg-{i}" for i in range(sent)}
        assert {line["status"] for line in lines if line["outcome"] == "delivered"} <= {200, 201, 202}

        # --- connector stats ----------------------------------------------------------------
        stats = cli(stack, "stats", "--json")
        assert stats.returncode == 0, stats.stderr
        data = json.loads(stats.stdout)
        assert data["queues"] == {"voucherify.eu": 0}
        assert data["dead_letters"] == 1
        [conn] = data["connections"]
        assert conn["id"] == CONNECTION and conn["dead_letters"] == 1
        # rate_limit_per_minute (the old name of api_calls_per_minute): the connector's share.
        minute = {rl["target"]: rl for rl in conn["rate_limits"]}["api_calls_minute"]
        assert minute["limit"] == 3000 and minute["used"] >= 1
        assert conn["paused"] is None
        human = cli(stack, "stats")
        assert human.returncode == 0 and "voucherify.eu" in human.stdout and CONNECTION in human.stdout

        # --- connector dlq replay with a progress bar: the 400 was one-off, now it lands -------
        replay = cli(stack, "dlq", "replay", "--all", "--progress")
        assert replay.returncode == 0, replay.stderr
        assert "replayed 1 dead letter(s)" in replay.stdout
        wait_until(
            lambda: total(scrape(stack), "connector_deliveries_total", outcome="delivered") == sent,
            timeout=30,
            what="replayed dead letter delivered",
        )
        assert total(scrape(stack), "connector_dead_letter_entries", connection=CONNECTION) == 0

        # --- connector send-test: through the queue, acknowledged by the fake ----------------
        before = len(fake.requests(path="/v1/events"))
        result = cli(stack, "send-test", "--connection", CONNECTION, "--timeout", "30")
        assert result.returncode == 0, result.stdout + result.stderr
        assert "delivered" in result.stdout
        assert len(fake.requests(path="/v1/events")) == before + 1
        assert re.search(r"enqueued send-test-[0-9a-f-]+ on voucherify\.eu", result.stdout)

        # --- connector check: credentials good; the machine's Redis has no persistence --------
        check = cli(stack, "check")
        assert check.returncode == 0, check.stdout
        assert "credentials accepted" in check.stdout
        # The warning is the persistence one (the suite's Redis runs without AOF), not any WARN.
        assert re.search(
            r"WARN\s+redis redis://127\.0\.0\.1:\d+/\d+: (no persistence|AOF persistence is off)",
            check.stdout,
        ), check.stdout
    finally:
        fake.stop(kill=True)


def test_check_reports_a_wrong_secret_and_redis_without_persistence(
    tmp_path: Path, redis_url: str, stack_factory: list
) -> None:
    # The fake knows another secret than the configuration's; the machine's Redis (6379) runs
    # without AOF.  (A Redis the suite started itself runs without AOF too.)
    fake = FakeVoucherify(
        app_id=APP_ID, secret_key="the-real-secret-key-9", name="vf-check", log_dir=tmp_path
    )
    with fake:
        path = tmp_path / "connections.toml"
        path.write_text(connections(fake.url))
        stack = make_stack(stack_factory, tmp_path, redis_url, path)
        result = cli(stack, "check")
        assert result.returncode == 1, result.stdout
        out = result.stdout
        assert re.search(
            r"FAIL\s+connection 'ops' voucherify .*HTTP 401, the credentials are refused", out
        ), out
        assert re.search(
            r"WARN\s+redis redis://127\.0\.0\.1:\d+/\d+: (no persistence|AOF persistence is off)", out
        ), out
        assert "the-real-secret-key-9" not in out
        as_json = cli(stack, "check", "--json")
        findings = json.loads(as_json.stdout)
        assert as_json.returncode == 1
        assert {f["level"] for f in findings} >= {"ok", "warning", "error"}
        # A broken configuration is reported (all problems) and also fails.
        bad = tmp_path / "bad.toml"
        bad.write_text('[[connection]]\nid = "Bad Id"\n[connection.voucherify]\nregion = "mars"\n')
        broken = subprocess.run(
            [str(BIN / "connector"), "check", "--offline"],
            env={**stack.env, "CONNECTIONS_FILE": str(bad)},
            cwd=ROOT,
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        assert broken.returncode == 1
        assert "FAIL  configuration" in broken.stdout and "mars" in broken.stdout


def test_every_command_has_help() -> None:
    from click.testing import CliRunner

    from ops.cli import main

    runner = CliRunner()
    for args in (
        [],
        ["check"],
        ["send-test"],
        ["stats"],
        ["scheduler"],
        ["dlq"],
        ["dlq", "list"],
        ["dlq", "show"],
        ["dlq", "replay"],
        ["dlq", "purge"],
    ):
        result = runner.invoke(main, [*args, "--help"])
        assert result.exit_code == 0, (args, result.output)
        assert "Usage:" in result.output
    assert "--progress" in runner.invoke(main, ["dlq", "replay", "--help"]).output
