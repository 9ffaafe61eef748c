"""``rediss://`` with a self-signed certificate, as Heroku Redis serves it: ``REDIS_TLS_VERIFY``
reaches every Redis client (the web's client and publisher, the worker's broker connection and
state client, the scheduler's client and publisher, the CLI's).

A redis-server of the test's own listens with TLS only, its certificate self-signed (openssl).
With ``REDIS_TLS_VERIFY=none`` a whole stack works on it: an event is accepted, the first
delivery attempt fails (503), the scheduler brings the retry back, the worker delivers it, and
the CLI reads the state.  With verification required (the default) the same certificate is
refused by the web's readiness, the CLI and ``check``, clearly.
"""

from __future__ import annotations

import json
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
import requests

from connector import redisconn
from connector.celery_app import celery_config
from ops.embedded import free_port, redis_binary
from tests.conftest import make_stack
from tests.support.fakes import FakeVoucherify
from tests.support.faultkit import connector_cli
from tests.support.processes import wait_until

APP_ID = "tls-app-id"
SECRET = "tls-vf-secret-3f1"
WRITE_KEY = "wk_tls_write_key"
FAST = {
    "CONNECTOR_RETRY_BASE_SECONDS": "0.3",
    "CONNECTOR_RETRY_CAP_SECONDS": "1",
    "CONNECTOR_SCHEDULER_INTERVAL": "0.2",
}


def test_tls_options_apply_to_rediss_urls_only() -> None:
    assert redisconn.tls_options("redis://h:6379/0", "none") == {}
    assert redisconn.tls_options("rediss://h:6380/0", "none") == {"ssl_cert_reqs": "none"}
    assert redisconn.tls_options("rediss://h:6380/0") == {"ssl_cert_reqs": "required"}
    assert celery_config("redis://h/0", "none")["broker_use_ssl"] is None
    import ssl

    assert celery_config("rediss://h/0", "none")["broker_use_ssl"] == {"ssl_cert_reqs": ssl.CERT_NONE}
    assert celery_config("rediss://h/0")["broker_use_ssl"] == {"ssl_cert_reqs": ssl.CERT_REQUIRED}


@pytest.fixture
def tls_redis(tmp_path: Path) -> Iterator[str]:
    """``rediss://127.0.0.1:PORT`` of a TLS-only redis-server with a self-signed certificate."""
    if shutil.which("openssl") is None:
        pytest.skip("openssl is needed to make a self-signed certificate")
    cert, key = tmp_path / "redis.crt", tmp_path / "redis.key"
    subprocess.run(
        [
            *("openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2"),
            *("-subj", "/CN=redis-self-signed", "-keyout", str(key), "-out", str(cert)),
        ],
        check=True,
        capture_output=True,
        timeout=60,
    )
    port = free_port()
    args = [redis_binary(), "--port", "0", "--tls-port", str(port), "--bind", "127.0.0.1"]
    args += ["--tls-cert-file", str(cert), "--tls-key-file", str(key), "--tls-auth-clients", "no"]
    args += [
        "--save",
        "",
        "--appendonly",
        "no",
        "--dir",
        str(tmp_path),
        "--logfile",
        str(tmp_path / "redis.log"),
    ]
    proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    url = f"rediss://127.0.0.1:{port}/0"
    try:
        wait_until(
            lambda: proc.poll() is not None or redisconn.client(url, "none", socket_timeout=1).ping(),
            timeout=15,
            what="TLS redis-server",
        )
        if proc.poll() is not None:
            assert proc.stderr is not None
            pytest.skip(f"this redis-server has no TLS support: {proc.stderr.read().decode()[-300:]}")
        yield url
    finally:
        proc.terminate()
        proc.wait(10)


@pytest.mark.integration
def test_every_client_honours_redis_tls_verify(tmp_path: Path, tls_redis: str, stack_factory: list) -> None:
    with FakeVoucherify(app_id=APP_ID, secret_key=SECRET, log_dir=tmp_path) as fake:
        path = tmp_path / "connections.toml"
        path.write_text(
            f"""
[[connection]]
id = "tls"
write_keys = ["{WRITE_KEY}"]
[connection.voucherify]
app_id = "{APP_ID}"
secret_key = "{SECRET}"
region = "eu"
api_url = "{fake.url}"
"""
        )
        stack = make_stack(stack_factory, tmp_path, tls_redis, path, REDIS_TLS_VERIFY="none", **FAST)
        stack.web()
        assert requests.get(stack.web_url + "/readyz", timeout=5).status_code == 200
        stack.worker(concurrency=5)
        stack.scheduler()
        fake.set_faults(path="/v1/events", statuses=[503])  # the retry needs the scheduler
        answer = requests.post(
            stack.web_url + "/v1/track",
            auth=(WRITE_KEY, ""),
            json={"userId": "tls-user", "event": "Order Completed", "messageId": "tls-1"},
            timeout=10,
        )
        assert answer.status_code == 200, answer.text
        wait_until(
            lambda: [r["status"] for r in fake.requests(path="/v1/events")] == [503, 200],
            timeout=30,
            what="the retry delivered through the scheduler",
        )
        stats = connector_cli(stack.env, "stats", "--json")
        assert stats.returncode == 0, stats.stderr
        assert json.loads(stats.stdout)["queues"] == {"voucherify.eu": 0}
        check = connector_cli(stack.env, "check", "--offline", "--json")
        redis_findings = [f for f in json.loads(check.stdout) if f["subject"].startswith("redis")]
        assert redis_findings[0]["level"] == "ok", redis_findings
        assert "TLS, certificate verification none" in redis_findings[0]["subject"]
        for proc in stack.procs:
            assert proc.alive(), proc.log()[-3000:]
            assert "CERTIFICATE_VERIFY_FAILED" not in proc.log()

        # Verification required (the default): the self-signed chain is refused, and said so.
        strict = {k: v for k, v in stack.env.items() if k != "REDIS_TLS_VERIFY"}
        stats = connector_cli(strict, "stats")
        assert stats.returncode == 1 and "certificate verify failed" in stats.stderr, stats.stderr
        check = connector_cli(strict, "check", "--offline")
        assert (
            "FAIL  redis rediss://127.0.0.1" in check.stdout and "certificate verify failed" in check.stdout
        )
        stack.web(extra_env={"REDIS_TLS_VERIFY": "required"})
        assert requests.get(stack.web_url + "/readyz", timeout=5).status_code == 503

        bad = connector_cli({**stack.env, "REDIS_TLS_VERIFY": "maybe"}, "check", "--offline")
        assert "REDIS_TLS_VERIFY: must be one of required, none, not 'maybe'" in bad.stdout
