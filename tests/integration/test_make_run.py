"""``make run`` as a newcomer meets it: the sandbox on the embedded Redis, the CLI from a second
shell, Ctrl-C, a restart within the minute, a taken port.

``ops.run`` runs exactly as ``make run`` runs it (honcho, web + worker + scheduler + the two
fakes, the embedded redis-server); only the run directory and the preferred ports are the test's
own (``CONNECTOR_RUN_DIR``, ``PORT``, ``EMBEDDED_REDIS_PORT``, ``FAKE_*_PORT``), so that it never
collides with a developer's real ``make run``.  Ctrl-C is SIGINT to the whole process group, as a
terminal sends it.
"""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
import tomllib
from pathlib import Path

import pytest
import redis
import requests

from ops import run as make_run
from ops import runfile
from ops.embedded import free_port, port_free, redis_answers, start_redis
from tests.support import secrets
from tests.support.faultkit import connector_cli, idem_key, message_id_of, taken_from_broker
from tests.support.processes import BIN, ROOT, Proc, base_env, wait_until

SANDBOX_SECRETS = [value for key, value in make_run.SANDBOX.items() if key != "write_key"]


def launcher_env(run_dir: Path, ports: dict[str, int]) -> dict[str, str]:
    nowhere = f"redis://127.0.0.1:{free_port()}/0"  # nothing answers: the embedded broker starts
    env = base_env(
        nowhere,
        None,
        PORT=str(ports["web"]),
        EMBEDDED_REDIS_PORT=str(ports["redis"]),
        FAKE_VOUCHERIFY_PORT=str(ports["fake_voucherify"]),
        FAKE_SEGMENT_PORT=str(ports["fake_segment"]),
        CONNECTOR_RUN_DIR=str(run_dir),
        WEB_CONCURRENCY="1",
        WORKER_CONCURRENCY="10",
    )
    env.pop("PROMETHEUS_MULTIPROC_DIR", None)
    return env


def another_shell(run_dir: Path) -> dict[str, str]:
    """A second terminal: no REDIS_URL, no connection configured (only where the run dir is)."""
    env = base_env("unused", None, CONNECTOR_RUN_DIR=str(run_dir))
    del env["REDIS_URL"]
    return env


def readme_blocks() -> list[str]:
    """The README's shell blocks marked as tested (``<!-- tested: tests/test_make_run.py ...``)."""
    text = (ROOT / "README.md").read_text()
    blocks = re.findall(r"<!-- tested: tests/test_make_run.py[^>]*-->\n```sh\n(.*?)```", text, re.DOTALL)
    assert len(blocks) == 2, "the README's signed-webhook and fault-injection examples"
    return blocks


def run_readme_block(block: str, ports: dict[str, int], tmp: Path) -> str:
    """Run a README block as a user pastes it, on this test's ports (the README says 8000/8100/8200)."""
    for readme_port, name in ((8000, "web"), (8100, "fake_voucherify"), (8200, "fake_segment")):
        block = block.replace(f"127.0.0.1:{readme_port}", f"127.0.0.1:{ports[name]}")
    block = block.replace("/tmp/voucherify-webhook.json", str(tmp / "voucherify-webhook.json"))
    result = subprocess.run(
        ["bash", "-euo", "pipefail", "-c", block],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    return result.stdout


def connector(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    result = connector_cli(env, *args)
    for secret in SANDBOX_SECRETS:
        assert secret not in result.stdout + result.stderr
    return result


def start(name: str, env: dict[str, str], tmp: Path) -> Proc:
    proc = Proc(name, [sys.executable, "-m", "ops.run"], env, tmp).start()
    web = f"http://127.0.0.1:{env['PORT']}"
    wait_until(
        lambda: requests.get(web + "/healthz", timeout=1).ok or not proc.alive(), timeout=60, what="web"
    )
    assert proc.alive(), proc.log()[-4000:]
    wait_until(lambda: "celery@" in proc.log() and " ready." in proc.log(), timeout=60, what="worker ready")
    return proc


def ctrl_c(proc: Proc, timeout: float = 60) -> int:
    """SIGINT to the foreground process group, as a terminal's Ctrl-C; the exit code."""
    assert proc.proc is not None
    os.killpg(proc.pid, signal.SIGINT)
    return proc.proc.wait(timeout)


def started_pids(log: str) -> list[int]:
    return [int(pid) for pid in re.findall(r"started \(pid=(\d+)\)", log)]


def alive_in_group(pgid: int) -> list[str]:
    """Live (not zombie) processes of a process group: honcho starts each process in its own."""
    found = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except (OSError, IndexError):
            continue  # exited meanwhile
        state, pgrp = fields[0], int(fields[2])
        if pgrp == pgid and state != "Z":  # a zombie has exited; only its reaping is left
            found.append(stat.parent.name)
    return found


@pytest.mark.integration
def test_cli_from_another_shell_ctrl_c_and_a_quick_restart(tmp_path: Path) -> None:
    secrets.register(*SANDBOX_SECRETS)
    ports = {name: free_port() for name in ("web", "redis", "fake_voucherify", "fake_segment")}
    run_dir = tmp_path / "run"
    env = launcher_env(run_dir, ports)
    web = f"http://127.0.0.1:{ports['web']}"

    first = start("make-run-1", env, tmp_path)
    try:
        # The banner's curl, then the CLI from a shell that knows nothing of the run.
        answer = requests.post(
            web + "/v1/track",
            auth=(make_run.SANDBOX["write_key"], ""),
            json={"userId": "user-1", "event": "Order Completed", "properties": {"total": 42}},
            timeout=10,
        )
        assert answer.status_code == 200, answer.text
        vf_url = f"http://127.0.0.1:{ports['fake_voucherify']}"
        wait_until(
            lambda: [
                r
                for r in requests.get(vf_url + "/__fake/requests", timeout=2).json()
                if r["path"] == "/v1/events"
            ],
            timeout=30,
            what="the fake Voucherify got the event",
        )
        banner = first.log()
        assert ".venv/bin/connector stats" in banner or f"{BIN}/connector stats" in banner
        shell = another_shell(run_dir)
        stats = connector(shell, "stats", "--json")
        assert stats.returncode == 0, stats.stderr
        assert "using the running `make run`" in stats.stderr
        assert f"redis://127.0.0.1:{ports['redis']}/0" in stats.stderr
        snapshot = json.loads(stats.stdout)
        assert [c["id"] for c in snapshot["connections"]] == ["sandbox"]
        assert "voucherify.eu" in snapshot["queues"]
        mapped = connector(shell, "map", "-c", "sandbox", "--event", "examples/segment-track.json")
        assert mapped.returncode == 0, mapped.stderr
        assert f"POST {vf_url}/v1/events" in mapped.stdout

        # The README's signed webhook, pasted: accepted, and the fake Segment gets the track call.
        webhook_block, faults_block = readme_blocks()
        output = run_readme_block(webhook_block, ports, tmp_path)
        assert '"accepted":true' in output.replace(" ", ""), output
        seg_url = f"http://127.0.0.1:{ports['fake_segment']}"
        wait_until(
            lambda: [
                e
                for e in requests.get(seg_url + "/__fake/events", timeout=2).json()
                if e["event"]["event"] == "Customer Redemption Succeeded"
            ],
            timeout=30,
            what="the fake Segment got the webhook's track call",
        )
        # ...and the README's "where is my event?": its trace by the event id the answer gave,
        # and by the messageId of the README's curl, from the second shell.
        event_id = json.loads(output.strip().splitlines()[0])["event_id"]
        wait_until(
            lambda: "delivered" in connector(shell, "trace", event_id).stdout.splitlines()[0],
            timeout=30,
            what="connector trace of the README's webhook",
        )
        assert "via voucherify_webhook on connection sandbox" in connector(shell, "trace", event_id).stdout
        curl = {"userId": "user-1", "event": "Order Completed", "messageId": "my-first-event"}
        assert requests.post(web + "/v1/track", auth=("sandbox-write-key", ""), json=curl, timeout=5).ok
        wait_until(
            lambda: "POST /v1/events -> 20" in connector(shell, "trace", "my-first-event").stdout,
            timeout=30,
            what="connector trace my-first-event",
        )
        overview = connector(shell, "overview")
        assert overview.returncode == 0 and overview.stdout.startswith("sandbox"), overview.stderr
        # The README's fault injection, pasted: the scripts it sets are shown, then cleared.
        output = run_readme_block(faults_block, ports, tmp_path)
        assert '"remaining":[503,503]' in output.replace(" ", ""), output
        assert requests.get(vf_url + "/__fake/faults", timeout=2).json()["scripts"] == []
    finally:
        rc = ctrl_c(first) if first.alive() else None
    log = first.log()
    assert rc == 0, log[-4000:]  # a requested stop is a normal end (make reports no error)
    assert "Traceback" not in log, log[-6000:]
    assert "SIGKILL" not in log, log[-4000:]
    # The broker stopped last, once every process that uses it had stopped.
    worker_stopped = log.index("worker.1 stopped")
    assert log.index("embedded Redis stopped") > worker_stopped
    assert not redis_answers(f"redis://127.0.0.1:{ports['redis']}/0", 0.5)
    left = [pid for pid in started_pids(log) if alive_in_group(pid)]
    assert not left
    assert not (run_dir / runfile.FILE_NAME).exists()
    # The CLI no longer finds a run, and says what it does instead of silently using another Redis.
    # (--help: the note comes before the command runs; the command itself would then read the
    # default Redis, 127.0.0.1:6379 -- the machine's, which the suite never touches.)
    after = connector(another_shell(run_dir), "dlq", "list", "--help")
    assert "no `make run` running" in after.stderr
    assert after.returncode == 0 and "Usage:" in after.stdout

    # Restarted within the minute: the fake's port still has TIME_WAIT connections of the first
    # run (a bind without SO_REUSEADDR fails: the condition that moved the ports before)...
    with socket.socket() as probe, pytest.raises(OSError):
        probe.bind(("127.0.0.1", ports["fake_voucherify"]))
    second = start("make-run-2", env, tmp_path)
    try:
        # ...and every README port is kept.
        connection = tomllib.loads((run_dir / "sandbox-connections.toml").read_text())["connection"][0]
        assert connection["voucherify"]["api_url"] == vf_url
        assert connection["segment"]["api_url"] == f"http://127.0.0.1:{ports['fake_segment']}"
        assert (
            runfile.parse(run_dir / runfile.FILE_NAME)["REDIS_URL"] == f"redis://127.0.0.1:{ports['redis']}/0"
        )
        assert requests.get(web + "/healthz", timeout=2).ok
        assert "WARNING" not in second.log().split("system")[0]  # no port moved
    finally:
        rc = ctrl_c(second) if second.alive() else None
    assert rc == 0 and "Traceback" not in second.log(), second.log()[-4000:]


def test_port_probe_ignores_time_wait_but_not_a_listener() -> None:
    with socket.socket() as server:
        server.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        server.bind(("127.0.0.1", 0))
        port = server.getsockname()[1]
        server.listen()
        assert not port_free(port)  # a listener: taken
        client = socket.create_connection(("127.0.0.1", port))
        accepted, _ = server.accept()
        accepted.close()  # the server side closes first: TIME_WAIT on the server's port
        time.sleep(0.1)
        client.close()
    with socket.socket() as plain, pytest.raises(OSError):
        plain.bind(("127.0.0.1", port))  # what the old probe did: "taken"
    assert port_free(port)  # what the servers (SO_REUSEADDR) see: free


def test_a_taken_web_port_is_an_error_not_a_curl(tmp_path: Path) -> None:
    with socket.socket() as squatter:
        squatter.bind(("127.0.0.1", 0))
        squatter.listen()
        port = squatter.getsockname()[1]
        env = launcher_env(
            tmp_path / "run", {"web": port, "redis": 1, "fake_voucherify": 1, "fake_segment": 1}
        )
        result = subprocess.run(
            [sys.executable, "-m", "ops.run"],
            env=env,
            cwd=ROOT,
            capture_output=True,
            text=True,
            timeout=60,
        )
    assert result.returncode == 1
    assert f"port {port} (PORT) is already in use; nothing was started" in result.stderr
    assert f"PORT={port + 1} make run" in result.stderr
    assert "curl" not in result.stdout + result.stderr
    assert "Traceback" not in result.stderr


def test_taken_fake_ports_move_and_the_banner_says_so(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(make_run, "RUN_DIR", tmp_path)
    with socket.socket() as squatter:
        squatter.bind(("127.0.0.1", 0))
        squatter.listen()
        taken = squatter.getsockname()[1]
        plan = make_run.plan_run(
            {
                "PATH": os.environ["PATH"],
                "PORT": str(free_port()),
                "REDIS_URL": f"redis://127.0.0.1:{free_port()}/0",
                "EMBEDDED_REDIS_PORT": str(free_port()),
                "FAKE_VOUCHERIFY_PORT": str(taken),
                "FAKE_SEGMENT_PORT": str(free_port()),
            }
        )
    [warning] = plan.warnings
    assert f"port {taken} is in use by another program: the fake Voucherify listens on" in warning
    moved = int(warning.split("listens on ")[1].split()[0])
    assert moved != taken
    assert any(f"--port {moved}" in line for line in plan.procfile if line.startswith("fake_voucherify:"))
    text = make_run.banner(plan)
    assert text.index("WARNING") < text.index("curl")
    assert f"http://127.0.0.1:{moved}/__fake/requests" in text


def test_dotenv_is_read_as_honcho_reads_it_and_the_shell_wins(tmp_path: Path) -> None:
    dotenv = tmp_path / ".env"
    dotenv.write_text("# comment\nPORT=9000\nINGEST_WRITE_KEYS='wk_a,wk_b'\nLOG_LEVEL=DEBUG\n")
    env = make_run.environment(dotenv, {"PORT": "8001", "PATH": "/bin"})
    assert env["PORT"] == "8001"  # the shell's
    assert env["INGEST_WRITE_KEYS"] == "wk_a,wk_b" and env["LOG_LEVEL"] == "DEBUG"
    assert make_run.environment(tmp_path / "missing.env", {"A": "1"}) == {"A": "1"}


@pytest.mark.integration
def test_ctrl_c_with_calls_on_the_wire_then_a_restart_delivers_every_event(tmp_path: Path) -> None:
    """Ctrl-C while the worker holds events and its calls are on the wire: the embedded Redis
    keeps what the worker gave back (AOF), and the restarted sandbox delivers all of it."""
    secrets.register(*SANDBOX_SECRETS)
    ports = {name: free_port() for name in ("web", "redis", "fake_voucherify", "fake_segment")}
    env = launcher_env(tmp_path / "run", ports)
    web = f"http://127.0.0.1:{ports['web']}"
    vf_url = f"http://127.0.0.1:{ports['fake_voucherify']}"

    def delivered_by_the_fake() -> set[str]:
        records = requests.get(vf_url + "/__fake/requests", timeout=2).json()
        return {
            message_id_of(idem_key(r))
            for r in records
            if r["path"] == "/v1/events" and 200 <= r["status"] < 300 and idem_key(r)
        }

    first = start("make-run-1", env, tmp_path)
    try:
        requests.post(vf_url + "/__fake/faults", json={"latency_ms": 5000}, timeout=5).raise_for_status()
        ids = [f"ctrl-c-{i:03d}" for i in range(30)]
        batch = [
            {"type": "track", "userId": f"u-{i}", "event": "Order Completed", "messageId": m}
            for i, m in enumerate(ids)
        ]
        answer = requests.post(
            web + "/v1/batch", auth=(make_run.SANDBOX["write_key"], ""), json={"batch": batch}, timeout=10
        )
        assert answer.status_code == 200, answer.text
        broker = f"redis://127.0.0.1:{ports['redis']}/0"
        wait_until(lambda: taken_from_broker(broker, 1), timeout=30, what="the worker took the batch")
        time.sleep(1.0)  # its calls are on the wire (5 s each)
        before = delivered_by_the_fake()  # answered before the Ctrl-C (none, at 5 s each)
    finally:
        rc = ctrl_c(first) if first.alive() else None
    assert rc == 0, first.log()[-4000:]
    assert "Traceback" not in first.log(), first.log()[-6000:]

    second = start("make-run-2", env, tmp_path)
    try:
        wait_until(
            lambda: before | delivered_by_the_fake() >= set(ids),
            timeout=90,
            interval=0.5,
            what="every event delivered after the restart",
        )
    finally:
        rc = ctrl_c(second) if second.alive() else None
    assert rc == 0 and "Traceback" not in second.log(), second.log()[-4000:]


@pytest.mark.parametrize("appendonly", [False, True])
def test_a_redis_already_answering_is_named_and_its_missing_aof_is_a_warning(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, appendonly: bool
) -> None:
    """``make run`` with a Redis answering at REDIS_URL (this test's own redis-server stands in
    for the machine's 6379) uses it: the banner names it (password hidden) and warns when it
    keeps no AOF."""
    monkeypatch.setattr(make_run, "RUN_DIR", tmp_path)
    proc, url = start_redis(tmp_path / "machine-redis", appendonly=appendonly)
    try:
        password = "machine-redis-password-123"
        secrets.register(password)
        redis.Redis.from_url(url).config_set("requirepass", password)
        with_password = url.replace("redis://", f"redis://:{password}@")
        plan = make_run.plan_run(
            {
                "PATH": os.environ["PATH"],
                "PORT": str(free_port()),
                "REDIS_URL": with_password,
                "FAKE_VOUCHERIFY_PORT": str(free_port()),
                "FAKE_SEGMENT_PORT": str(free_port()),
            }
        )
    finally:
        proc.terminate()
        proc.wait(10)
    text = make_run.banner(plan)
    assert plan.redis_port is None  # no embedded broker: the one answering is used
    shown = url.replace("redis://", "redis://:****@")
    assert f"Redis: the one already answering at {shown}" in text
    assert password not in text
    warned = [w for w in plan.warnings if "no AOF persistence" in w]
    if appendonly:
        assert not warned, plan.warnings
    else:
        assert len(warned) == 1 and shown in warned[0]
        assert text.index("WARNING: the Redis at") < text.index("curl")


def test_the_banner_curl_has_a_message_id_to_trace(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(make_run, "RUN_DIR", tmp_path)
    plan = make_run.plan_run(
        {
            "PATH": os.environ["PATH"],
            "PORT": str(free_port()),
            "REDIS_URL": f"redis://127.0.0.1:{free_port()}/0",
            "EMBEDDED_REDIS_PORT": str(free_port()),
            "FAKE_VOUCHERIFY_PORT": str(free_port()),
            "FAKE_SEGMENT_PORT": str(free_port()),
        }
    )
    text = make_run.banner(plan)
    [body] = re.findall(r"-d '(\{.*\})'", text)
    message_id = json.loads(body)["messageId"]
    assert re.search(rf"connector trace {re.escape(message_id)}$", text, re.MULTILINE), text
    # The curl comes first, then how to follow it.
    assert text.index("curl") < text.index(f"trace {message_id}")
