"""``connector trace`` and the delivery overview against a real stack (gunicorn, a Celery worker,
the scheduler, the fake Voucherify): a delivered event (after one 503), a skipped one, a
dead-lettered one (400) and one refused at ingest, each traced with its door, its attempts'
path and status and its reason; the overview's counts move as the events flow, in
``/status.json`` and ``connector overview``."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path
from typing import Any

import pytest
import requests

from tests.conftest import make_stack
from tests.support import secrets
from tests.support.fakes import FakeSegment, FakeVoucherify
from tests.support.faultkit import connector_cli
from tests.support.processes import Stack, wait_until
from tests.support.webhooks import V2024, iso_now, load_example, signed_request, wrap

pytestmark = pytest.mark.integration

CONNECTION = "traced"
WRITE_KEY = "wk_trace_e2e_write_key_51"
APP_ID = "trace-e2e-app-id"
SECRET = "trace-e2e-vf-secret-key-9c2d"
STATUS_TOKEN = "trace-e2e-status-token-0123"
WEBHOOK_SECRET = "trace-e2e-webhook-secret-77"
SEGMENT_KEY = "trace-e2e-segment-write-key-3"
FAST = {
    "CONNECTOR_RETRY_BASE_SECONDS": "0.3",
    "CONNECTOR_RETRY_CAP_SECONDS": "1",
    "CONNECTOR_SCHEDULER_INTERVAL": "0.2",
    "STATUS_TOKEN": STATUS_TOKEN,
}


def connections(url: str, segment_url: str) -> str:
    return f"""
[[connection]]
id = "{CONNECTION}"
write_keys = ["{WRITE_KEY}"]
[connection.voucherify]
app_id = "{APP_ID}"
secret_key = "{SECRET}"
region = "eu"
api_url = "{url}"
webhook_secret = "{WEBHOOK_SECRET}"
[connection.segment]
write_key = "{SEGMENT_KEY}"
region = "us"
api_url = "{segment_url}"
"""


def cli(stack: Stack, *args: str) -> subprocess.CompletedProcess[str]:
    # Kept with the processes' logs: the session-end secret scan reads trace output too.
    result = connector_cli(stack.env, *args, log=stack.tmp / "cli.log")
    for secret in (SECRET, WRITE_KEY, APP_ID, STATUS_TOKEN, WEBHOOK_SECRET, SEGMENT_KEY):
        assert secret not in result.stdout + result.stderr
    return result


def traced(stack: Stack, event_id: str) -> dict[str, Any]:
    result = cli(stack, "trace", event_id, "--json")
    return json.loads(result.stdout) if result.returncode == 0 else {"outcome": None}


def settled(stack: Stack, event_id: str, outcome: str) -> dict[str, Any]:
    found: dict[str, Any] = {}

    def done() -> bool:
        found.update(traced(stack, event_id))
        return found.get("outcome") == outcome

    wait_until(done, timeout=40, what=f"trace of {event_id}: {outcome}")
    return found


def status_json(stack: Stack) -> dict[str, Any]:
    answer = requests.get(
        stack.web_url + "/status.json", headers={"Authorization": f"Bearer {STATUS_TOKEN}"}, timeout=5
    )
    assert answer.status_code == 200, answer.text
    data: dict[str, Any] = answer.json()
    return data


def track(message_id: str, user: str) -> dict[str, Any]:
    return {"userId": user, "event": "Order Completed", "messageId": message_id, "properties": {"total": 5}}


def test_trace_and_overview_follow_delivered_skipped_dead_and_refused_events(
    tmp_path: Path, redis_url: str, stack_factory: list
) -> None:
    secrets.register(SECRET, WRITE_KEY, APP_ID, STATUS_TOKEN, WEBHOOK_SECRET, SEGMENT_KEY)
    fake = FakeVoucherify(app_id=APP_ID, secret_key=SECRET, name="vf-trace", log_dir=tmp_path).start()
    segment = FakeSegment(write_keys=(SEGMENT_KEY,), name="segment-trace", log_dir=tmp_path).start()
    try:
        path = tmp_path / "connections.toml"
        path.write_text(connections(fake.url, segment.url))
        stack = make_stack(stack_factory, tmp_path, redis_url, path, **FAST)
        stack.web(workers=1)
        worker = stack.worker(concurrency=10)
        stack.scheduler()
        auth = (WRITE_KEY, "")
        web = stack.web_url

        # Nothing yet: an unknown id says so (exit 1), and the overview is all zeros.
        missing = cli(stack, "trace", "never-sent-id")
        assert missing.returncode == 1 and "no trace for 'never-sent-id'" in missing.stdout
        assert status_json(stack)["overview"][CONNECTION]["last_hour"]["received"] == 0

        # --- delivered after one 503 --------------------------------------------------------
        fake.set_faults(path="/v1/events", statuses=[503])
        assert requests.post(f"{web}/v1/track", json=track("trace-ok-1", "u-ok"), auth=auth, timeout=10).ok
        ok = settled(stack, "trace-ok-1", "delivered")
        kinds = [r["kind"] for r in ok["records"]]
        assert kinds[:2] == ["received", "mapping"], kinds
        received = ok["records"][0]
        assert (received["door"], received["connection"]) == ("tracking_api", CONNECTION)
        attempts = [r for r in ok["records"] if r["kind"] == "attempt"]
        assert [(a["method"], a["path"], a["status"]) for a in attempts] == [
            ("POST", "/v1/events", 503),
            ("POST", "/v1/events", 200),
        ]
        assert all(isinstance(a["latency_ms"], int) for a in attempts)
        assert any(r["kind"] == "wait" and r["reason"] == "retry" and r["until"] > 0 for r in ok["records"])
        mapping = ok["records"][1]
        assert mapping["requests"] == ["POST /v1/events"] and mapping["matched"], mapping
        text = cli(stack, "trace", "trace-ok-1")
        assert text.returncode == 0
        assert "trace trace-ok-1: delivered" in text.stdout
        assert "POST /v1/events -> 503" in text.stdout and "POST /v1/events -> 200" in text.stdout
        assert "via tracking_api on connection traced" in text.stdout
        # The 503's outcome reads as not final, and "received" is stamped first (the acceptance).
        assert "failed (will retry at " in text.stdout, text.stdout
        stamps = [line.split()[0] for line in text.stdout.splitlines()[1:]]
        assert stamps == sorted(stamps) and "received" in text.stdout.splitlines()[1], text.stdout

        # --- skipped: an alias has no Voucherify effect ---------------------------------------
        alias = {"userId": "u-ok", "previousId": "anon-1", "messageId": "trace-skip-1"}
        assert requests.post(f"{web}/v1/alias", json=alias, auth=auth, timeout=10).ok
        skipped = settled(stack, "trace-skip-1", "skipped")
        assert skipped["reason"] == "alias_no_effect"
        assert not [r for r in skipped["records"] if r["kind"] == "attempt"]
        assert "skipped (alias_no_effect)" in cli(stack, "trace", "trace-skip-1").stdout

        # --- dead-lettered: a 400 is permanent -------------------------------------------------
        fake.set_faults(path="/v1/events", statuses=[400])
        assert requests.post(
            f"{web}/v1/track", json=track("trace-dead-1", "u-dead"), auth=auth, timeout=10
        ).ok
        dead = settled(stack, "trace-dead-1", "dead_letter")
        assert dead["reason"] == "rejected"
        assert [(a["path"], a["status"]) for a in dead["records"] if a["kind"] == "attempt"] == [
            ("/v1/events", 400)
        ]
        text = cli(stack, "trace", "trace-dead-1").stdout
        assert "dead_letter (rejected)" in text and "POST /v1/events -> 400" in text

        # --- refused at ingest (one item of a batch) ------------------------------------------
        batch = {"batch": [{"type": "track", "event": "No Identity", "messageId": "trace-bad-1"}]}
        refused = requests.post(f"{web}/v1/batch", json=batch, auth=auth, timeout=10)
        assert refused.status_code == 400
        bad = settled(stack, "trace-bad-1", "rejected")
        assert bad["reason"] == "missing_identity" and bad["records"][0]["door"] == "tracking_api"

        # --- the overview moved with them -----------------------------------------------------
        def overview_settled() -> bool:
            hour = status_json(stack)["overview"][CONNECTION]["last_hour"]
            return hour["received"] == 3 and hour["rejected"].get("missing_identity") == 1

        wait_until(overview_settled, timeout=10, what="the overview counts the events")
        info = status_json(stack)["overview"][CONNECTION]
        hour = info["last_hour"]
        assert hour["delivered"] == 1 and hour["failed"] == 1  # the 503 (the 400 is not retried)
        assert hour["skipped"] == {"alias_no_effect": 1}
        assert hour["dead_letter"] == {"rejected": 1}
        assert info["last_day"]["received"] == 3
        assert info["samples"]["dead_letter:rejected"] == ["trace-dead-1"]
        assert info["samples"]["skipped:alias_no_effect"] == ["trace-skip-1"]
        assert info["samples"]["rejected:missing_identity"] == ["trace-bad-1"]
        as_cli = json.loads(cli(stack, "overview", "--json").stdout)
        assert as_cli[CONNECTION]["last_hour"] == hour

        # The status page's search box opens the trace, server-rendered and escaped.
        page = requests.get(f"{web}/trace", params={"id": "trace-dead-1"}, auth=("", STATUS_TOKEN), timeout=5)
        assert page.status_code == 200 and 'data-outcome="dead_letter"' in page.text
        assert "POST /v1/events -&gt; 400" in page.text
        assert (
            requests.get(f"{web}/trace", params={"id": "<x>"}, auth=("", STATUS_TOKEN), timeout=5).status_code
            == 404
        )
        for secret in (SECRET, APP_ID, WRITE_KEY):
            assert secret not in page.text

        # --- the other direction: a Voucherify webhook traced by its event id ---------------------
        body = wrap(load_example("customer.created"), "customer.created", V2024, "evt_trace_1", iso_now())
        raw, headers = signed_request(body, WEBHOOK_SECRET)
        hook = requests.post(f"{web}/webhooks/voucherify/{CONNECTION}", data=raw, headers=headers, timeout=10)
        assert hook.status_code == 202, hook.text
        webhook = settled(stack, "evt_trace_1", "delivered")
        assert webhook["records"][0]["door"] == "voucherify_webhook"
        assert webhook["direction"] == "voucherify_to_segment"
        assert [(a["path"], a["status"]) for a in webhook["records"] if a["kind"] == "attempt"] == [
            ("/v1/batch", 200)
        ]
        assert "/v1/batch -> 200" in cli(stack, "trace", "evt_trace_1").stdout

        # --- workers alive, from their heartbeats, in /metrics ---------------------------------
        def alive(queue: str) -> float | None:
            for line in requests.get(f"{web}/metrics", timeout=5).text.splitlines():
                if line.startswith(f'connector_workers_alive{{queue="{queue}"}}'):
                    return float(line.rsplit(" ", 1)[1])
            return None

        assert alive("voucherify.eu") == 1 and alive("segment.us") == 1
        worker.stop(timeout=20)  # a worker stopping says goodbye: absent at once
        wait_until(lambda: alive("voucherify.eu") == 0, timeout=10, what="the stopped worker is gone")
    finally:
        fake.stop()
        segment.stop(kill=True)
