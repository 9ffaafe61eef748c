"""Shared fixtures: the suite's own redis-server(s), process stacks, isolation from the machine.

The suite never talks to a Redis it did not start (the machine's 127.0.0.1:6379 holds a
developer's data; see tests/support/redisdb.py), and never finds a developer's running
``make run`` (its run file would redirect the CLI and add a note to its output).
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import redis

from tests.support import secrets
from tests.support.processes import Stack, base_env
from tests.support.redisdb import MACHINE_REDIS_PORT, fresh_database, own_redis_server

_LOOPBACK = {"127.0.0.1", "localhost", "::1", "0.0.0.0", "::"}
# Connections the guard refused: the session fails on them even when the code under test
# swallowed the ConnectionError it got.
MACHINE_REDIS_ATTEMPTS: list[str] = []
_RUN_DIR_KEY = "_connector_isolated_run_dir"
_ORIGINAL_CONNECT = redis.connection.Connection._connect


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "integration: runs real processes (gunicorn, celery, redis, fakes)")
    # Before collection (ops.run reads its run dir at import): the CLI and `ops.run`, in process
    # and in every child (tests.support.processes.base_env carries it), look for a running
    # `make run` in an empty directory of this session's, never in the checkout's .run/.
    run_dir = tempfile.mkdtemp(prefix="connector-test-run-")
    os.environ["CONNECTOR_RUN_DIR"] = run_dir
    setattr(config, _RUN_DIR_KEY, run_dir)
    redis.connection.Connection._connect = _guarded_connect  # type: ignore[method-assign]


# The longest files first, in this order (seconds each on 2 cores, ``--durations=0``: 300, 160,
# 140, 130, 125, 110, 110, 95, 85), then the other integration files, then the rest.  ``make
# test`` hands each file to an xdist worker whole (``--dist loadfile``) in collection order
# (``--no-loadscope-reorder``; xdist's own order puts the files with most tests first): a long
# file handed out last was the run's tail, a minute and more past the others.
LONGEST_FILES = (
    "test_replay_e2e.py",
    "test_quota_bursts_e2e.py",
    "test_process_stops.py",
    "test_faults_redis.py",
    "test_faults_quota.py",
    "test_fewer_calls_e2e.py",
    "test_faults_workers.py",
    "test_memory_budget_e2e.py",
    "test_backfill_bulk_e2e.py",
)


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    def rank(item: pytest.Item) -> tuple[int, int]:
        name = item.path.name
        if name in LONGEST_FILES:
            return 0, LONGEST_FILES.index(name)
        return (1 if item.get_closest_marker("integration") else 2), 0

    items.sort(key=rank)  # stable: a file's tests stay together and in their order


def pytest_unconfigure(config: pytest.Config) -> None:
    redis.connection.Connection._connect = _ORIGINAL_CONNECT  # type: ignore[method-assign]
    run_dir = getattr(config, _RUN_DIR_KEY, None)
    if run_dir:
        shutil.rmtree(run_dir, ignore_errors=True)


_PROBLEMS_FILE = "session-problems.json"


@pytest.hookimpl(trylast=True)
def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    """No connection to the machine's Redis, and no secret in any log written during the
    session (every process, every fake).

    Under ``pytest -n`` (xdist, as ``make test`` runs) each worker process checks what it
    started and writes its findings into its base temp dir; the controller -- last, after its
    workers are gone (``trylast``) -- reads every worker's file and fails the run.  A worker's
    own exit status would not reach the controller."""
    problems = {
        "machine redis": list(MACHINE_REDIS_ATTEMPTS),
        "secret scan": secrets.problems(),
    }
    base = session.config._tmp_path_factory.getbasetemp()  # type: ignore[attr-defined]
    if hasattr(session.config, "workerinput"):  # an xdist worker: the controller reports
        (base / _PROBLEMS_FILE).write_text(json.dumps(problems))
        return
    for path in sorted(base.glob(f"*/{_PROBLEMS_FILE}")):
        for title, lines in json.loads(path.read_text()).items():
            problems[title].extend(lines)
    headers = {"machine redis": "CONNECTIONS TO THE MACHINE'S REDIS:", "secret scan": "SECRET SCAN FAILED:"}
    for title, lines in problems.items():
        if lines:
            _fail_session(session, title, headers[title], lines)


def _fail_session(session: pytest.Session, title: str, header: str, lines: list[str]) -> None:
    reporter = session.config.pluginmanager.get_plugin("terminalreporter")
    message = "\n".join([header, *lines])
    if reporter is not None:
        reporter.write_sep("=", title, red=True)
        reporter.write_line(message)
    else:
        print(message)
    session.exitstatus = pytest.ExitCode.TESTS_FAILED


def machine_redis(host: str, port: Any) -> bool:
    try:
        return host in _LOOPBACK and int(port) == MACHINE_REDIS_PORT
    except (TypeError, ValueError):
        return False


def _guarded_connect(self: redis.connection.Connection) -> Any:
    """Every redis-py connection of this process (tests, in-process apps, kombu) to the
    machine's Redis is refused before its socket opens, and fails the session (children get
    their own server's URL: tests.support.processes.base_env)."""
    if machine_redis(self.host, self.port):
        MACHINE_REDIS_ATTEMPTS.append(f"{self.host}:{self.port}/{self.db}")
        raise redis.ConnectionError(
            f"the test suite never connects to the machine's Redis ({self.host}:{self.port})"
        )
    return _ORIGINAL_CONNECT(self)


@pytest.fixture(scope="session", autouse=True)
def _scan_the_session_logs(tmp_path_factory: pytest.TempPathFactory) -> None:
    """Process logs live under the session's base temp dir: the end-of-session scan reads it."""
    secrets.watch_dir(tmp_path_factory.getbasetemp())


@pytest.fixture(scope="session")
def redis_base(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """``redis://127.0.0.1:PORT`` of a redis-server this session started (never the machine's)."""
    with own_redis_server(tmp_path_factory.mktemp("redis")) as server:
        yield server.base


# Integration tests own databases 2..9; helpers' unit tests use 13 with key prefixes.
_DB_POOL = list(range(2, 10))


@pytest.fixture
def redis_url(redis_base: str) -> Iterator[str]:
    """A database of our own, empty before and after the test."""
    with fresh_database(redis_base, _DB_POOL) as url:
        yield url


@pytest.hookimpl(tryfirst=True, hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]):  # type: ignore[no-untyped-def]
    outcome = yield
    report = outcome.get_result()
    setattr(item, f"rep_{report.when}", report)


@pytest.fixture
def stack_factory(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[list[Stack]]:
    stacks: list[Stack] = []
    yield stacks
    failed = getattr(request.node, "rep_call", None) is not None and request.node.rep_call.failed
    for stack in stacks:
        if failed:
            print(stack.logs())
        stack.close()


def make_stack(
    stacks: list[Stack], tmp: Path, redis_url: str, connections: Path | None = None, **env: str
) -> Stack:
    stack = Stack(tmp, base_env(redis_url, connections, **env))
    stacks.append(stack)
    return stack
