"""``make run``'s sandbox, as a newcomer sees it: the status page at ``/`` rendered by a real
headless Chromium, with the deliveries the sandbox's fakes received on it (bodies included,
fetched by the server: the page works through a port forward), the delivery overview with sample
ids, and the trace view its search box opens.

``ops.run`` runs as ``make run`` does (honcho, web + worker + scheduler + the two fakes);
only the run directory, the port and the Redis database are the test's own.  Chromium comes
from the system (``make test`` installs it with apt-get when missing and running as root).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest
import requests

from ops.embedded import free_port
from ops.run import SANDBOX
from tests.support import secrets
from tests.support.processes import Proc, base_env, wait_until

pytestmark = pytest.mark.integration

CHROMIUM_FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-dev-shm-usage",
]


def chromium() -> str:
    found = shutil.which("chromium") or shutil.which("chromium-browser")
    if found is None and Path("/usr/bin/chromium").exists():
        found = "/usr/bin/chromium"
    if found is None:
        if os.geteuid() == 0:
            pytest.fail("chromium is missing: `make test` installs it (apt-get install -y chromium)")
        pytest.skip("chromium is not installed and we are not root to install it")
    return found


def render(url: str, tmp: Path) -> str:
    """The DOM after the page's JavaScript ran (fetches included)."""
    profile = tmp / "chromium-profile"
    profile.mkdir(exist_ok=True)
    result = subprocess.run(
        [
            chromium(),
            *CHROMIUM_FLAGS,
            f"--user-data-dir={profile}",
            "--virtual-time-budget=5000",
            "--dump-dom",
            url,
        ],
        capture_output=True,
        text=True,
        timeout=90,
        check=False,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    return result.stdout


def test_sandbox_status_page_shows_connections_queues_and_deliveries(tmp_path: Path, redis_url: str) -> None:
    # The sandbox's inbound write key is public on purpose (the banner prints it for the curl);
    # the others must stay out of every log.
    secrets.register(*(value for key, value in SANDBOX.items() if key != "write_key"))
    port = free_port()
    run_dir = tmp_path / "run"
    env = base_env(redis_url, None, PORT=str(port), CONNECTOR_RUN_DIR=str(run_dir), WEB_CONCURRENCY="2")
    env.pop("PROMETHEUS_MULTIPROC_DIR", None)
    proc = Proc("make-run", [sys.executable, "-m", "ops.run"], env, tmp_path).start()
    web = f"http://127.0.0.1:{port}"
    try:
        wait_until(
            lambda: requests.get(web + "/healthz", timeout=1).ok or not proc.alive(),
            timeout=60,
            what="sandbox web",
        )
        assert proc.alive(), proc.log()[-4000:]
        wait_until(lambda: "ready" in proc.log(), timeout=60, what="sandbox worker")
        connection = tomllib.loads((run_dir / "sandbox-connections.toml").read_text())["connection"][0]
        vf_url = connection["voucherify"]["api_url"]

        # What the banner tells a newcomer to paste.
        answer = requests.post(
            web + "/v1/track",
            auth=(SANDBOX["write_key"], ""),
            json={"userId": "user-1", "event": "Order Completed", "properties": {"total": 42}},
            timeout=10,
        )
        assert answer.status_code == 200, answer.text
        # One that the ingest refuses (its id is the overview's sample), one with markup in it.
        refused = requests.post(
            web + "/v1/batch",
            auth=(SANDBOX["write_key"], ""),
            json={"batch": [{"type": "track", "event": "x", "messageId": "page-bad-1"}]},
            timeout=10,
        )
        assert refused.status_code == 400
        marked = {
            "userId": "user-2",
            "event": "<b>Bold</b>",
            "messageId": "page-ok-1",
            "properties": {"note": "<i>x</i>"},
        }
        assert requests.post(web + "/v1/track", auth=(SANDBOX["write_key"], ""), json=marked, timeout=10).ok
        wait_until(
            lambda: any(
                r["path"] == "/v1/events" for r in requests.get(vf_url + "/__fake/requests", timeout=2).json()
            ),
            timeout=30,
            what="the fake Voucherify received the event",
        )
        assert "sandbox-secret-key" not in requests.get(web + "/", timeout=5).text

        wait_until(
            lambda: (
                sum(
                    r["path"] == "/v1/events"
                    for r in requests.get(vf_url + "/__fake/requests", timeout=2).json()
                )
                >= 2
            ),
            timeout=30,
            what="the fake Voucherify received both events",
        )

        def overview_counted() -> bool:
            hour = requests.get(web + "/status.json", timeout=5).json()["overview"]["sandbox"]["last_hour"]
            return hour["delivered"] >= 2 and hour["rejected"].get("missing_identity") == 1

        wait_until(overview_counted, timeout=20, what="the overview counts the events")

        dom = render(web + "/", tmp_path)
        (tmp_path / "status-dom.html").write_text(dom)
        assert 'data-connection="sandbox"' in dom
        assert "voucherify.eu" in dom  # the queue table
        assert 'data-deliveries-loaded="1"' in dom, dom[-3000:]
        assert 'class="delivery" data-fake="voucherify"' in dom
        assert "POST /v1/events" in dom
        assert '<td class="ok status">200</td>' in dom or '<td class="ok status">201</td>' in dom
        # Bodies, as the Event Tester shows them: rendered server-side and escaped.
        assert '<pre class="body">' in dom and "Order Completed" in dom
        assert "&lt;b&gt;Bold&lt;/b&gt;" in dom and "<b>Bold</b>" not in dom
        # The overview: counts per field, the refused event's id as a sample linking to its trace.
        assert '<table class="overview" data-connection="sandbox">' in dom
        assert '<tr data-field="rejected:missing_identity">' in dom
        assert 'href="/trace?id=page-bad-1"' in dom
        assert 'id="trace-search"' in dom
        for secret in (SANDBOX["secret_key"], SANDBOX["webhook_secret"], SANDBOX["segment_write_key"]):
            assert secret not in dom

        # The search box's target: the delivered event's journey, server-rendered.
        trace_dom = render(web + "/trace?id=page-ok-1", tmp_path)
        (tmp_path / "trace-dom.html").write_text(trace_dom)
        assert 'data-outcome="delivered"' in trace_dom
        assert 'data-kind="attempt"' in trace_dom and "POST /v1/events -&gt; 20" in trace_dom
        for secret in (SANDBOX["secret_key"], SANDBOX["webhook_secret"], SANDBOX["segment_write_key"]):
            assert secret not in trace_dom

        # The whole pipeline's metrics, merged (make run sets PROMETHEUS_MULTIPROC_DIR).
        metrics = requests.get(web + "/metrics", timeout=5).text
        assert 'connector_events_received_total{connection="sandbox"' in metrics
        assert 'connector_deliveries_total{connection="sandbox"' in metrics
        assert "multiprocess mode" in proc.log()
    finally:
        proc.stop(timeout=20)
