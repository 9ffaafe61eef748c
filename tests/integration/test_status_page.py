"""``make run``'s sandbox, as a newcomer sees it: the status page at ``/`` rendered by a real
headless Chromium, with the deliveries the sandbox's fakes received on it.

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
        wait_until(
            lambda: any(
                r["path"] == "/v1/events" for r in requests.get(vf_url + "/__fake/requests", timeout=2).json()
            ),
            timeout=30,
            what="the fake Voucherify received the event",
        )
        assert "sandbox-secret-key" not in requests.get(web + "/", timeout=5).text

        dom = render(web + "/", tmp_path)
        (tmp_path / "status-dom.html").write_text(dom)
        assert 'data-connection="sandbox"' in dom
        assert "voucherify.eu" in dom  # the queue table
        assert 'data-deliveries-loaded="1"' in dom, dom[-3000:]
        assert 'class="delivery" data-fake="voucherify"' in dom
        assert "POST /v1/events" in dom
        assert '<td class="ok status">200</td>' in dom or '<td class="ok status">201</td>' in dom
        for secret in (SANDBOX["secret_key"], SANDBOX["webhook_secret"], SANDBOX["segment_write_key"]):
            assert secret not in dom

        # The whole pipeline's metrics, merged (make run sets PROMETHEUS_MULTIPROC_DIR).
        metrics = requests.get(web + "/metrics", timeout=5).text
        assert 'connector_events_received_total{connection="sandbox"' in metrics
        assert 'connector_deliveries_total{connection="sandbox"' in metrics
        assert "multiprocess mode" in proc.log()
    finally:
        proc.stop(timeout=20)
