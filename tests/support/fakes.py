"""Run the sandbox fakes as real subprocesses on loopback, for tests.

Typical use::

    from tests.support.fakes import FakeVoucherify

    @pytest.fixture
    def voucherify(tmp_path):
        with FakeVoucherify(log_dir=tmp_path) as fake:   # started, on a free port
            yield fake                                   # killed afterwards, even on failure

    def test_x(voucherify):
        voucherify.set_faults(path="/v1/customers", statuses=[503, 429], headers={"Retry-After": "1"})
        ...  # point the connector at voucherify.url
        assert [r["status"] for r in voucherify.requests(path="/v1/customers")] == [503, 429, 200]

Or ``pytest_plugins = ["tests.support.fakes"]`` in a conftest for the ready-made
``fake_voucherify`` / ``fake_segment`` fixtures.

``stop()`` then ``start()`` simulates an outage: the new process listens on the same port. A
restart is a fresh process (empty store, no faults), but the handle keeps what the old one
recorded: ``requests()`` and ``events()`` return the records of every run, oldest first, each
with a ``run`` number (0 for the first process).
"""

from __future__ import annotations

import atexit
import base64
import contextlib
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from types import TracebackType
from typing import Any, ClassVar, Self

import pytest
import requests

from tests.support import secrets

PROJECT_ROOT = Path(__file__).resolve().parents[2]
HOST = "127.0.0.1"
CONTROL_TIMEOUT = 5.0

_live: set[FakeProcess] = set()


@atexit.register
def _kill_leftovers() -> None:
    # Last resort for handles nobody stopped (the fakes also exit when their parent dies).
    for fake in list(_live):
        fake.stop(kill=True, keep_records=False)


class FakeStartError(RuntimeError):
    pass


class FakeProcess:
    """One fake server subprocess. Subclasses set ``module`` and the credentials."""

    module: ClassVar[str]

    def __init__(
        self,
        *,
        name: str,
        log_dir: Path | str | None = None,
        port: int = 0,
        args: Sequence[str] = (),
        env: Mapping[str, str] | None = None,
        startup_timeout: float = 15.0,
    ) -> None:
        self.name = name
        self.log_dir = (
            Path(log_dir) if log_dir is not None else Path(tempfile.mkdtemp(prefix=f"fake-{name}-"))
        )
        self.log_dir.mkdir(parents=True, exist_ok=True)
        secrets.watch_dir(self.log_dir)  # scanned for leaked secrets at the end of the session
        self.log_path = self.log_dir / f"{name}.log"
        self.port = port  # 0 until the first start picks a free port; then fixed for restarts
        self.startup_timeout = startup_timeout
        self._extra_args = list(args)
        self._extra_env = dict(env or {})
        self._proc: subprocess.Popen[bytes] | None = None
        self._paused = False
        self._run = -1
        self._archived_requests: list[dict[str, Any]] = []
        self._archived_events: list[dict[str, Any]] = []
        self._http = requests.Session()

    # -- to override -------------------------------------------------------------------------

    def _cli_args(self) -> list[str]:
        return []

    def _cli_env(self) -> dict[str, str]:
        """Credentials go through the environment: they stay out of ``ps`` and the log."""
        return {}

    # -- life cycle ---------------------------------------------------------------------------

    @property
    def url(self) -> str:
        if not self.port:
            raise RuntimeError(f"fake {self.name} has not been started yet")
        return f"http://{HOST}:{self.port}"

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc is not None else None

    @property
    def running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    def start(self) -> Self:
        """Start the process (same port as before on a restart) and wait until it is healthy."""
        if self.running:
            return self
        port_file = self.log_dir / f"{self.name}.port"
        port_file.unlink(missing_ok=True)
        cmd = [
            sys.executable,
            "-m",
            self.module,
            "--host",
            HOST,
            "--port",
            str(self.port),
            "--port-file",
            str(port_file),
            "--name",
            self.name,
            "--exit-with-parent",
            *self._cli_args(),
            *self._extra_args,
        ]
        env = {**os.environ, "PYTHONUNBUFFERED": "1", **self._cli_env(), **self._extra_env}
        secrets.process_started()
        with open(self.log_path, "ab") as log:
            self._proc = subprocess.Popen(
                cmd, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, cwd=PROJECT_ROOT, env=env
            )
        _live.add(self)
        self._run += 1
        self._paused = False
        self._http = requests.Session()  # no pooled sockets from the previous process
        try:
            self._wait_ready(port_file)
        except BaseException:
            self.stop(kill=True, keep_records=False)
            raise
        return self

    def _wait_ready(self, port_file: Path) -> None:
        deadline = time.monotonic() + self.startup_timeout
        while time.monotonic() < deadline:
            assert self._proc is not None
            if self._proc.poll() is not None:
                raise FakeStartError(f"fake {self.name} exited ({self._proc.returncode}):\n{self.log_tail()}")
            if port_file.exists():
                self.port = int(port_file.read_text())
                with contextlib.suppress(requests.RequestException):
                    if self._http.get(f"{self.url}/__fake/health", timeout=1).status_code == 200:
                        return
            time.sleep(0.02)
        raise FakeStartError(
            f"fake {self.name} not healthy after {self.startup_timeout}s:\n{self.log_tail()}"
        )

    def stop(self, *, kill: bool = False, timeout: float = 5.0, keep_records: bool = True) -> None:
        """Stop the process (SIGTERM, or SIGKILL with ``kill``); idempotent.

        With ``keep_records`` the requests and events recorded so far are fetched first, so
        ``requests()``/``events()`` still include them after a restart.
        """
        proc = self._proc
        if proc is None:
            return
        if proc.poll() is None:
            if self._paused:
                self.resume()
            if keep_records:
                with contextlib.suppress(requests.RequestException, ValueError):
                    self._archive()
            with contextlib.suppress(ProcessLookupError):
                proc.send_signal(signal.SIGKILL if kill else signal.SIGTERM)
            try:
                proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout=timeout)
        self._proc = None
        self._http.close()
        _live.discard(self)

    def restart(self) -> Self:
        self.stop()
        return self.start()

    def pause(self) -> None:
        """SIGSTOP: connections are accepted by the kernel but never answered (timeouts)."""
        if self._proc is not None and self.running:
            self._proc.send_signal(signal.SIGSTOP)
            self._paused = True

    def resume(self) -> None:
        if self._proc is not None and self._paused:
            self._proc.send_signal(signal.SIGCONT)
            self._paused = False

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop(keep_records=False)

    def __repr__(self) -> str:  # no credentials
        return f"<{type(self).__name__} {self.name} port={self.port} running={self.running}>"

    # -- control API --------------------------------------------------------------------------

    def _control(self, method: str, path: str, **kw: Any) -> Any:
        resp = self._http.request(method, f"{self.url}/__fake/{path}", timeout=CONTROL_TIMEOUT, **kw)
        if resp.status_code != 200:
            raise RuntimeError(f"{method} /__fake/{path} -> {resp.status_code}: {resp.text}")
        return resp.json()

    def _archive(self) -> None:
        run = self._run
        self._archived_requests += [{**r, "run": run} for r in self._control("GET", "requests")]

    def health(self) -> dict[str, Any]:
        result: dict[str, Any] = self._control("GET", "health")
        return result

    def requests(self, path: str | None = None, method: str | None = None) -> list[dict[str, Any]]:
        """Recorded requests of every run (oldest first); the live part is fetched now."""
        archived = [
            r
            for r in self._archived_requests
            if (path is None or r["path"] == path) and (method is None or r["method"] == method.upper())
        ]
        if not self.running:
            return archived
        params = {k: v for k, v in (("path", path), ("method", method)) if v is not None}
        run = self._run
        return archived + [{**r, "run": run} for r in self._control("GET", "requests", params=params)]

    def wait_for_requests(
        self,
        count: int,
        *,
        path: str | None = None,
        method: str | None = None,
        where: Callable[[dict[str, Any]], bool] | None = None,
        timeout: float = 10.0,
    ) -> list[dict[str, Any]]:
        """Poll until at least ``count`` matching requests are recorded; return them."""
        deadline = time.monotonic() + timeout
        while True:
            found = [r for r in self.requests(path, method) if where is None or where(r)]
            if len(found) >= count or time.monotonic() > deadline:
                if len(found) < count:
                    raise TimeoutError(f"{self.name}: {len(found)} of {count} requests after {timeout}s")
                return found
            time.sleep(0.05)

    def clear(self) -> None:
        """Forget recorded requests (and events), of this run and archived ones. Faults stay."""
        self._archived_requests.clear()
        self._archived_events.clear()
        if self.running:
            self._control("DELETE", "requests")

    def set_faults(self, **spec: Any) -> dict[str, Any]:
        """POST /__fake/faults: a script (with ``statuses``) or global settings (see sandbox.core)."""
        result: dict[str, Any] = self._control("POST", "faults", json=spec)
        return result

    def faults(self) -> dict[str, Any]:
        result: dict[str, Any] = self._control("GET", "faults")
        return result

    def reset_faults(self) -> None:
        self._control("DELETE", "faults")

    def reset(self) -> None:
        """Everything back to a fresh start: records, faults, store, archive."""
        self._archived_requests.clear()
        self._archived_events.clear()
        self._control("POST", "reset")

    def log_text(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def log_tail(self, lines: int = 40) -> str:
        return "\n".join(self.log_text().splitlines()[-lines:])


class FakeVoucherify(FakeProcess):
    module = "sandbox.fake_voucherify"

    def __init__(
        self,
        *,
        app_id: str = "test-vf-app-id",
        secret_key: str = "test-vf-secret-key",
        name: str = "voucherify",
        strict_nulls: bool = False,
        quota: Mapping[str, Any] | None = None,
        bulk_delay_s: float = 0.0,
        **kw: Any,
    ) -> None:
        """``quota``: the start-up quota (a ``POST /__fake/quota`` body, see sandbox.quota);
        ``bulk_delay_s``: how long a bulk async action takes to be DONE."""
        super().__init__(name=name, **kw)
        self.app_id = app_id
        self.secret_key = secret_key
        secrets.register(app_id, secret_key)
        self.strict_nulls = strict_nulls
        self.quota_spec = dict(quota or {})
        self.bulk_delay_s = bulk_delay_s

    def _cli_args(self) -> list[str]:
        args = ["--strict-nulls"] if self.strict_nulls else []
        if self.quota_spec:
            args += ["--quota", json.dumps(self.quota_spec)]
        if self.bulk_delay_s:
            args += ["--bulk-delay-s", str(self.bulk_delay_s)]
        return args

    def _cli_env(self) -> dict[str, str]:
        return {"FAKE_VOUCHERIFY_APP_ID": self.app_id, "FAKE_VOUCHERIFY_SECRET_KEY": self.secret_key}

    def rest_headers(self) -> dict[str, str]:
        """The headers of an authenticated REST call."""
        return {"X-App-Id": self.app_id, "X-App-Token": self.secret_key}

    def segmentio_headers(self) -> dict[str, str]:
        """The headers of an authenticated segmentio call (as the Actions destination sends)."""
        return {
            "authorization": "Basic " + base64.b64encode(self.app_id.encode()).decode(),
            "secret-key": base64.b64encode(self.secret_key.encode()).decode(),
        }

    def customers(self) -> list[dict[str, Any]]:
        """The fake's customer store (current run only)."""
        result: list[dict[str, Any]] = self._control("GET", "customers")
        return result

    def set_metadata_schemas(self, schemas: list[dict[str, Any]], *, enforce: bool) -> None:
        """What ``GET /v1/metadata-schemas`` lists; ``enforce``: refuse undefined customer metadata."""
        self._control("POST", "metadata-schemas", json={"schemas": schemas, "enforce": enforce})

    # -- quota, credentials, bulk async actions (sandbox.voucherify_admin) -----------------------

    def quota(self, *, history: bool = False) -> dict[str, Any]:
        """GET /__fake/quota: configuration, buckets (used/limit/remaining/reset), calls, refusals;
        ``history``: each bucket's past windows (``used_by``/``refused_by`` connector and shop)."""
        params = {"history": "1"} if history else None
        result: dict[str, Any] = self._control("GET", "quota", params=params)
        return result

    def set_quota(self, **spec: Any) -> dict[str, Any]:
        """POST /__fake/quota, e.g. ``set_quota(plan="business", period_scale=0.1, align="now")``."""
        result: dict[str, Any] = self._control("POST", "quota", json=spec)
        return result

    def reset_quota(self) -> dict[str, Any]:
        """DELETE /__fake/quota: the start-up quota, every counter emptied."""
        result: dict[str, Any] = self._control("DELETE", "quota")
        return result

    def shop_burst(self, calls: int, kind: str = "rest") -> dict[str, int]:
        """The shop makes ``calls`` calls now: ``{"accepted", "refused"}``."""
        result: dict[str, int] = self._control("POST", "quota/shop", json={"calls": calls, "kind": kind})
        return result

    def set_auth(self, state: str, for_s: float | None = None) -> dict[str, Any]:
        """``"revoked"`` (401), ``"forbidden"`` (403) or ``"ok"``; ``for_s``: restored after that."""
        result: dict[str, Any] = self._control("POST", "auth", json={"state": state, "for_s": for_s})
        return result

    def auth(self) -> dict[str, Any]:
        result: dict[str, Any] = self._control("GET", "auth")
        return result

    def set_async_actions(self, **spec: Any) -> dict[str, Any]:
        """POST /__fake/async-actions: ``delay_s``, ``fail_next``, ``failures`` (sandbox.async_actions)."""
        result: dict[str, Any] = self._control("POST", "async-actions", json=spec)
        return result

    def async_actions(self) -> dict[str, Any]:
        result: dict[str, Any] = self._control("GET", "async-actions")
        return result


class FakeSegment(FakeProcess):
    module = "sandbox.fake_segment"

    def __init__(
        self,
        *,
        write_keys: Sequence[str] = ("test-segment-write-key",),
        name: str = "segment",
        **kw: Any,
    ) -> None:
        super().__init__(name=name, **kw)
        if not write_keys:
            raise ValueError("at least one write key")
        self.write_keys = list(write_keys)
        secrets.register(*self.write_keys)

    @property
    def write_key(self) -> str:
        return self.write_keys[0]

    def _cli_env(self) -> dict[str, str]:
        return {"FAKE_SEGMENT_WRITE_KEYS": ",".join(self.write_keys)}

    def auth_headers(self, write_key: str | None = None) -> dict[str, str]:
        token = base64.b64encode(f"{write_key or self.write_key}:".encode()).decode()
        return {"Authorization": f"Basic {token}"}

    def _archive(self) -> None:
        super()._archive()
        run = self._run
        self._archived_events += [{**e, "run": run} for e in self._control("GET", "events")]

    def events(self) -> list[dict[str, Any]]:
        """Every event accepted, of every run: ``{"time", "request_seq", "write_key",
        "duplicate", "event", "run"}``."""
        if not self.running:
            return list(self._archived_events)
        run = self._run
        return self._archived_events + [{**e, "run": run} for e in self._control("GET", "events")]

    def wait_for_events(
        self,
        count: int,
        *,
        where: Callable[[dict[str, Any]], bool] | None = None,
        timeout: float = 10.0,
    ) -> list[dict[str, Any]]:
        """Poll until at least ``count`` events (``where`` filters the inner event) arrived."""
        deadline = time.monotonic() + timeout
        while True:
            found = [e for e in self.events() if where is None or where(e["event"])]
            if len(found) >= count or time.monotonic() > deadline:
                if len(found) < count:
                    raise TimeoutError(f"{self.name}: {len(found)} of {count} events after {timeout}s")
                return found
            time.sleep(0.05)


@pytest.fixture
def fake_voucherify(tmp_path: Path) -> Iterator[FakeVoucherify]:
    with FakeVoucherify(log_dir=tmp_path / "fakes") as fake:
        yield fake


@pytest.fixture
def fake_segment(tmp_path: Path) -> Iterator[FakeSegment]:
    with FakeSegment(log_dir=tmp_path / "fakes") as fake:
        yield fake


@contextlib.contextmanager
def voucherify_fakes(
    specs: Mapping[str, Mapping[str, Any]], log_dir: Path
) -> Iterator[dict[str, FakeVoucherify]]:
    """One fake Voucherify per name of ``specs`` (each spec's ``app_id`` and ``secret``), all
    stopped afterwards (also when one fails to start)."""
    started: dict[str, FakeVoucherify] = {}
    try:
        for name, spec in specs.items():
            started[name] = FakeVoucherify(
                app_id=spec["app_id"], secret_key=spec["secret"], name=f"vf-{name}", log_dir=log_dir
            ).start()
        yield started
    finally:
        for fake in started.values():
            fake.stop(kill=True)
