"""Shared fixtures: a real Redis (the machine's, or one the suite starts), process stacks."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from ops.embedded import redis_answers, start_redis
from tests.support import secrets
from tests.support.processes import Stack, base_env
from tests.support.redisdb import fresh_database

MACHINE_REDIS = os.environ.get("TEST_REDIS_URL", "redis://127.0.0.1:6379")


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "integration: runs real processes (gunicorn, celery, redis, fakes)")


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    """No secret in any log written during the session (every process, every fake)."""
    found = secrets.problems()
    if not found:
        return
    reporter = session.config.pluginmanager.get_plugin("terminalreporter")
    message = "SECRET SCAN FAILED:\n" + "\n".join(found)
    if reporter is not None:
        reporter.write_sep("=", "secret scan", red=True)
        reporter.write_line(message)
    else:
        print(message)
    session.exitstatus = pytest.ExitCode.TESTS_FAILED


@pytest.fixture(scope="session", autouse=True)
def _scan_the_session_logs(tmp_path_factory: pytest.TempPathFactory) -> None:
    """Process logs live under the session's base temp dir: the end-of-session scan reads it."""
    secrets.watch_dir(tmp_path_factory.getbasetemp())


@pytest.fixture(scope="session")
def redis_base(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """``redis://host:port`` of a real server; started by the suite when none answers."""
    if redis_answers(MACHINE_REDIS + "/0"):
        yield MACHINE_REDIS
        return
    proc, url = start_redis(tmp_path_factory.mktemp("redis"), appendonly=False)
    try:
        yield url.rsplit("/", 1)[0]
    finally:
        proc.terminate()
        proc.wait(10)


# Integration tests own databases 2..9; helpers' unit tests use 13 and 14 with key prefixes.
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
