"""Procfile under honcho, docker-compose.yml by parsing (no Docker engine here), .ci/run."""

from __future__ import annotations

import os
import shlex
import signal
import subprocess
from pathlib import Path

import pytest
import requests
import yaml

from connector.embedded import free_port
from tests.support import secrets
from tests.support.processes import BIN, ROOT, base_env, wait_until


def procfile() -> dict[str, str]:
    entries = {}
    for line in (ROOT / "Procfile").read_text().splitlines():
        if line.strip() and not line.startswith("#"):
            name, _, command = line.partition(":")
            entries[name.strip()] = command.strip()
    return entries


def test_procfile_names_the_processes_with_heroku_safe_worker() -> None:
    entries = procfile()
    assert set(entries) == {"web", "worker", "scheduler"}
    assert entries["web"].startswith("gunicorn app.wsgi:app")
    worker = entries["worker"]
    assert worker.startswith("REMAP_SIGTERM=SIGQUIT ")  # Heroku: SIGTERM then SIGKILL after 30 s
    assert "celery -A workers.worker worker" in worker and "--pool gevent" in worker
    assert entries["scheduler"] == "connector scheduler"


def test_docker_compose_parses_and_matches_the_procfile() -> None:
    compose = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
    services = compose["services"]
    assert set(services) == {"redis", "web", "worker", "scheduler"}
    redis_cmd = services["redis"]["command"]
    assert "--appendonly" in redis_cmd and redis_cmd[redis_cmd.index("--appendonly") + 1] == "yes"
    assert redis_cmd[redis_cmd.index("--maxmemory-policy") + 1] == "noeviction"
    entries = procfile()
    for name in ("web", "worker", "scheduler"):
        compose_cmd = services[name]["command"]
        proc_cmd = [part for part in shlex.split(entries[name]) if "=" not in part or part.startswith("-")]
        proc_cmd = [p.replace("${WORKER_CONCURRENCY:-100}", "100") for p in proc_cmd]
        assert compose_cmd == proc_cmd, name
        assert services[name]["environment"]["REDIS_URL"].startswith("redis://redis:6379")
        assert services[name]["depends_on"]["redis"]["condition"] == "service_healthy"
    assert services["worker"]["environment"]["REMAP_SIGTERM"] == "SIGQUIT"
    assert (ROOT / "Dockerfile").exists()


def test_ci_runs_make_test() -> None:
    text = (ROOT / ".ci" / "run").read_text()
    assert "make test" in text
    assert os.access(ROOT / ".ci" / "run", os.X_OK)


@pytest.mark.integration
def test_procfile_starts_under_honcho(tmp_path: Path, redis_url: str) -> None:
    conn = tmp_path / "c.toml"
    conn.write_text(
        """
[[connection]]
id = "honcho"
write_keys = ["wk_honcho_key"]
[connection.voucherify]
app_id = "app-id-honcho"
secret_key = "secret-key-honcho"
region = "eu"
api_url = "http://127.0.0.1:9"
"""
    )
    port = free_port()
    env = base_env(redis_url, conn, PORT=str(port), WEB_CONCURRENCY="1", WORKER_CONCURRENCY="5")
    secrets.register_env(env)  # honcho's log is scanned at the end of the session
    log_path = tmp_path / "honcho.log"
    with open(log_path, "wb") as log:
        proc = subprocess.Popen(
            [str(BIN / "honcho"), "start", "-f", str(ROOT / "Procfile"), "-d", str(ROOT)],
            cwd=ROOT,
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    try:
        wait_until(
            lambda: requests.get(f"http://127.0.0.1:{port}/healthz", timeout=1).ok, timeout=40, what="web"
        )
        wait_until(lambda: "ready" in log_path.read_text(), timeout=40, what="worker ready")
        text = log_path.read_text()
        for name in ("web.1", "worker.1", "scheduler.1"):
            assert f"{name} started (pid=" in text, text[-3000:]
        assert proc.poll() is None, text[-3000:]
        assert "scheduler.1 stopped" not in text, text[-3000:]
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
