"""Segment's gates end to end (SPEC 14): events sent with Segment's official Python client
through gunicorn, a Celery worker and the fake Voucherify.  An event kept out by its
``integrations`` object or by consent answers 200 at the ingest, is never delivered, and is
counted and traced as skipped with its reason; the others are delivered as usual."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path
from typing import Any

import pytest
import requests
from segment.analytics.client import Client

from tests.conftest import make_stack
from tests.support import secrets
from tests.support.fakes import FakeVoucherify
from tests.support.faultkit import connector_cli
from tests.support.processes import Stack, wait_until

pytestmark = pytest.mark.integration

CONNECTION = "gated"
WRITE_KEY = "wk_gates_e2e_write_key_14"
APP_ID = "gates-e2e-app-id"
SECRET = "gates-e2e-vf-secret-key-5f1a"
STATUS_TOKEN = "gates-e2e-status-token-0456"
FAST = {
    "CONNECTOR_RETRY_BASE_SECONDS": "0.3",
    "CONNECTOR_RETRY_CAP_SECONDS": "1",
    "CONNECTOR_SCHEDULER_INTERVAL": "0.2",
    "STATUS_TOKEN": STATUS_TOKEN,
}


def connections(url: str) -> str:
    return f"""
[[connection]]
id = "{CONNECTION}"
write_keys = ["{WRITE_KEY}"]
[connection.voucherify]
app_id = "{APP_ID}"
secret_key = "{SECRET}"
region = "eu"
api_url = "{url}"
[connection.destination]
consent_categories = ["Analytics"]
"""


def _consent(analytics: bool) -> dict[str, Any]:
    return {"consent": {"categoryPreferences": {"Analytics": analytics, "Advertising": False}}}


# name -> (integrations, context, delivered?, skip reason)
CASES: dict[str, tuple[dict[str, Any] | None, dict[str, Any] | None, bool, str | None]] = {
    "all-false": ({"All": False}, None, False, "integrations"),
    "all-false-voucherify-true": ({"All": False, "Voucherify": True}, None, True, None),
    "all-false-actions-true": ({"All": False, "Voucherify (Actions)": True}, None, True, None),
    "voucherify-false": ({"Voucherify": False}, None, False, "integrations"),
    "lower-case-name": ({"All": False, "voucherify": True}, None, False, "integrations"),
    "consent-false": (None, _consent(False), False, "consent"),
    "consent-true": (None, _consent(True), True, None),
    "no-consent": (None, None, True, None),
}


def cli(stack: Stack, *args: str) -> subprocess.CompletedProcess[str]:
    return connector_cli(stack.env, *args, log=stack.tmp / "cli.log")


def traced(stack: Stack, event_id: str) -> dict[str, Any]:
    result = cli(stack, "trace", event_id, "--json")
    return json.loads(result.stdout) if result.returncode == 0 else {"outcome": None}


def test_integrations_and_consent_decide_what_reaches_voucherify(
    tmp_path: Path, redis_url: str, stack_factory: list
) -> None:
    secrets.register(SECRET, WRITE_KEY, APP_ID, STATUS_TOKEN)
    fake = FakeVoucherify(app_id=APP_ID, secret_key=SECRET, name="vf-gates", log_dir=tmp_path).start()
    try:
        path = tmp_path / "connections.toml"
        path.write_text(connections(fake.url))
        stack = make_stack(stack_factory, tmp_path, redis_url, path, **FAST)
        stack.web(workers=1)
        stack.worker(concurrency=4)
        stack.scheduler()

        # --- the official client: each case its own event name and message id ------------------
        errors: list[Exception] = []
        client = Client(WRITE_KEY, host=stack.web_url, on_error=lambda e, _b: errors.append(e), max_retries=2)
        for name, (integrations, context, _, _) in CASES.items():
            client.track(
                f"user-{name}",
                f"Gate {name}",
                {"metadata": {"case": name}},
                context=context,
                integrations=integrations,
                message_id=f"gate-{name}",
            )
        client.flush()
        client.join()
        assert errors == []  # every event answered 200 at the ingest, skipped or not

        # --- batch-level integrations merge into each item (the item's own names win) ----------
        batch = {
            "integrations": {"All": False},
            "batch": [
                {
                    "type": "track",
                    "userId": "user-batch",
                    "event": "Gate batch-all-false",
                    "messageId": "gate-batch-1",
                },
                {
                    "type": "track",
                    "userId": "user-batch",
                    "event": "Gate batch-item-enables",
                    "messageId": "gate-batch-2",
                    "integrations": {"Voucherify": True},
                },
            ],
        }
        answer = requests.post(f"{stack.web_url}/v1/batch", json=batch, auth=(WRITE_KEY, ""), timeout=10)
        assert answer.status_code == 200, answer.text

        outcomes = {
            f"gate-{name}": ("delivered" if sent else "skipped", reason)
            for name, (_, _, sent, reason) in CASES.items()
        }
        outcomes["gate-batch-1"] = ("skipped", "integrations")
        outcomes["gate-batch-2"] = ("delivered", None)
        found: dict[str, dict[str, Any]] = {}

        def all_settled() -> bool:
            for event_id in outcomes:
                if found.get(event_id, {}).get("outcome") is None:
                    trace = traced(stack, event_id)
                    if trace.get("outcome") in ("delivered", "skipped", "dead_letter"):
                        found[event_id] = trace
            return len(found) == len(outcomes)

        wait_until(all_settled, timeout=60, what="every gated event delivered or skipped")
        for event_id, (outcome, reason) in outcomes.items():
            trace = found[event_id]
            assert trace["outcome"] == outcome, (event_id, trace)
            if reason is not None:
                assert trace["reason"] == reason, (event_id, trace)
                assert not [r for r in trace["records"] if r["kind"] == "attempt"]

        # What reached Voucherify: exactly the events the gates let through.
        names = sorted(r["body"]["event"] for r in fake.requests(path="/v1/events") if r["status"] == 200)
        assert names == sorted(
            [f"Gate {n}" for n, (_, _, sent, _) in CASES.items() if sent] + ["Gate batch-item-enables"]
        )

        # `connector trace` says why, in words.
        text = cli(stack, "trace", "gate-lower-case-name").stdout
        assert "skipped (integrations)" in text, text
        assert "none of 'Voucherify', 'Voucherify (Actions)' is true" in text, text
        text = cli(stack, "trace", "gate-voucherify-false").stdout
        assert "integrations['Voucherify'] is false" in text, text
        text = cli(stack, "trace", "gate-consent-false").stdout
        assert "skipped (consent)" in text and "does not consent to 'Analytics'" in text, text

        # --- counted by reason: /status.json, the status page and `connector overview` ----------
        def counted() -> bool:
            answer = requests.get(
                f"{stack.web_url}/status.json", headers={"Authorization": f"Bearer {STATUS_TOKEN}"}, timeout=5
            )
            return answer.json()["overview"][CONNECTION]["last_hour"]["skipped"] == {
                "integrations": 4,
                "consent": 1,
            }

        wait_until(counted, timeout=10, what="the skips counted by reason")
        page = requests.get(f"{stack.web_url}/", auth=("", STATUS_TOKEN), timeout=5)
        assert page.status_code == 200
        assert (
            'data-field="skipped:integrations"' in page.text and 'data-field="skipped:consent"' in page.text
        )
        overview = cli(stack, "overview").stdout
        assert "skipped: consent 1, integrations 4" in overview, overview
    finally:
        fake.stop()
