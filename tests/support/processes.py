"""Real processes for integration tests: gunicorn, Celery workers, the scheduler, Redis.

Each process writes to a log file in the test's tmp dir (shown when a test fails) and is always
stopped, also when the test fails.  Environment is explicit: tests never inherit a developer's
CONNECTIONS_FILE by accident.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import requests

from ops.embedded import free_port
from tests.support import secrets

ROOT = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent


# For stacks whose tests read the per-connection series of /metrics.
METRICS_TOKEN = "metrics-token-for-integration-tests"


def base_env(redis_url: str, connections_file: Path | None = None, **extra: str) -> dict[str, str]:
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("VOUCHERIFY_", "SEGMENT_", "INGEST_", "CONNECTIONS_", "CONNECTOR_", "WORKER_"))
    }
    env.update(
        {
            "REDIS_URL": redis_url,
            "LOG_FORMAT": "json",
            "PYTHONUNBUFFERED": "1",
            "PATH": f"{BIN}{os.pathsep}{env.get('PATH', '')}",
        }
    )
    # The session's empty run dir (tests/conftest.py): a developer's running `make run` must not
    # redirect or annotate the CLI a test runs.  A test of `make run` passes its own.
    if os.environ.get("CONNECTOR_RUN_DIR"):
        env["CONNECTOR_RUN_DIR"] = os.environ["CONNECTOR_RUN_DIR"]
    if connections_file is not None:
        env["CONNECTIONS_FILE"] = str(connections_file)
    env.update(extra)
    return env


def wait_until(
    predicate: Callable[[], Any], timeout: float = 20.0, interval: float = 0.05, what: str = ""
) -> Any:
    deadline = time.monotonic() + timeout
    last: Any = None
    while time.monotonic() < deadline:
        try:
            last = predicate()
        except Exception as exc:
            last = exc
        else:
            if last:
                return last
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout}s waiting for {what or predicate}: last={last!r}")


def celery_worker_args(node: str, pool: str = "gevent", concurrency: int = 20) -> list[str]:
    """A Celery worker as the Procfile starts one (pool, concurrency), quiet about its peers."""
    return [
        str(BIN / "celery"),
        "-A",
        "workers.worker",
        "worker",
        "--pool",
        pool,
        "--concurrency",
        str(concurrency),
        "--loglevel",
        "INFO",
        "--without-gossip",
        "--without-mingle",
        "--without-heartbeat",
        "-n",
        node,
    ]


class Proc:
    def __init__(self, name: str, args: list[str], env: dict[str, str], log_dir: Path) -> None:
        self.name = name
        self.args = args
        self.env = env
        self.log_path = log_dir / f"{name}.log"
        self.proc: subprocess.Popen[bytes] | None = None
        self._terminated = False

    def start(self) -> Proc:
        log = open(self.log_path, "ab")  # noqa: SIM115 - lives as long as the process
        self.proc = subprocess.Popen(
            self.args, env=self.env, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
        )
        log.close()
        self._terminated = False
        return self

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def signal(self, sig: int) -> None:
        if self.alive():
            assert self.proc is not None
            os.killpg(self.proc.pid, sig)

    def terminate(self) -> None:
        """SIGTERM to the process group, without waiting (see :meth:`Stack.close`)."""
        if self.alive() and not self._terminated:
            assert self.proc is not None
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, signal.SIGTERM)
            self._terminated = True

    def stop(self, timeout: float = 10.0) -> None:
        if not self.alive():
            return
        assert self.proc is not None
        try:
            self.terminate()
            self.proc.wait(timeout)
        except (subprocess.TimeoutExpired, ProcessLookupError):
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(5)

    def kill(self) -> None:
        self.signal(signal.SIGKILL)
        if self.proc is not None:
            self.proc.wait(10)

    def log(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except FileNotFoundError:
            return ""


class Stack:
    """The processes of one test; ``close()`` stops them all."""

    def __init__(self, tmp: Path, env: dict[str, str]) -> None:
        self.tmp = tmp
        self.env = env
        # One metrics directory shared by the stack's processes (gunicorn workers, Celery, the
        # scheduler), as `make run` does: /metrics of the web merges them all.
        if "PROMETHEUS_MULTIPROC_DIR" not in env:
            metrics_dir = tmp / f"prometheus-{id(self):x}"
            metrics_dir.mkdir(parents=True, exist_ok=True)
            env["PROMETHEUS_MULTIPROC_DIR"] = str(metrics_dir)
        self.procs: list[Proc] = []
        self.web_url = ""

    def add(self, name: str, args: list[str], env: dict[str, str] | None = None) -> Proc:
        secrets.register_env(env or self.env)  # the session-end log scan looks for them
        proc = Proc(name, args, env or self.env, self.tmp).start()
        self.procs.append(proc)
        return proc

    def web(self, workers: int = 1, extra_env: dict[str, str] | None = None) -> Proc:
        port = free_port()
        env = {**self.env, "PORT": str(port), "WEB_CONCURRENCY": str(workers), **(extra_env or {})}
        proc = self.add("web", [str(BIN / "gunicorn"), "ops.wsgi:app", "--config", "gunicorn.conf.py"], env)
        self.web_url = f"http://127.0.0.1:{port}"
        wait_until(
            lambda: requests.get(self.web_url + "/healthz", timeout=1).status_code == 200 or not proc.alive(),
            what="gunicorn /healthz",
        )
        assert proc.alive(), proc.log()
        return proc

    def worker(
        self,
        name: str = "worker",
        queues: list[str] | None = None,
        concurrency: int = 20,
        pool: str = "gevent",
        **extra: str,
    ) -> Proc:
        args = celery_worker_args(f"{name}-{os.getpid()}-{len(self.procs)}@%h", pool, concurrency)
        env = {**self.env, **extra}
        if queues:
            env["WORKER_QUEUES"] = ",".join(queues)
        proc = self.add(name, args, env)
        wait_until(lambda: "ready" in proc.log() or not proc.alive(), timeout=30, what=f"celery {name} ready")
        assert proc.alive(), proc.log()
        return proc

    def metrics(self) -> requests.Response:
        """``GET /metrics``, with the stack's METRICS_TOKEN when it has one (without it the
        answer names no connection: totals only)."""
        token = self.env.get("METRICS_TOKEN")
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        return requests.get(self.web_url + "/metrics", headers=headers, timeout=10)

    def scheduler(self, **extra: str) -> Proc:
        return self.add("scheduler", [str(BIN / "connector"), "scheduler"], {**self.env, **extra})

    def logs(self) -> str:
        return "\n".join(f"===== {p.name} =====\n{p.log()[-6000:]}" for p in self.procs)

    def close(self, grace: float = 1.0) -> None:
        """Stop every process: SIGTERM to all at once, SIGKILL to what is still running after
        ``grace`` seconds.  The test is over: a Celery worker's warm shutdown (~4 s idle, here)
        proves nothing more, and how processes stop is tested where it matters (SIGTERM as
        Heroku sends it, kill -9)."""
        for proc in reversed(self.procs):
            proc.terminate()
        deadline = time.monotonic() + grace
        for proc in reversed(self.procs):
            proc.stop(timeout=max(0.1, deadline - time.monotonic()))
