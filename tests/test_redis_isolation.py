"""The suite talks only to redis-servers it started, never to the machine's Redis (6379).

Three proofs: the fixtures' servers are processes this session started (pid and port asked of
the server itself); a connection to the machine's Redis from this process is refused before its
socket opens and would fail the session (tests/conftest.py); and no test file names the
machine's Redis for a connection (children get their URL from the fixtures, so a source check
covers what the in-process guard cannot see).
"""

from __future__ import annotations

import ast
import os
import re
from collections.abc import Callable
from pathlib import Path

import pytest
import redis

from tests import conftest
from tests.support.delivery import redis_db_url  # noqa: F401 - fixture
from tests.support.redisdb import MACHINE_REDIS_PORT, OwnRedis, fresh_database, owned

pytest_plugins = ["tests.support.private_redis"]

TESTS = Path(__file__).resolve().parent


def _server_of(url: str) -> OwnRedis:
    server = owned(url)
    assert server is not None, f"{url} is not a server this session started"
    assert server.port != MACHINE_REDIS_PORT
    client = redis.Redis.from_url(url)
    try:
        info = client.info("server")
    finally:
        client.close()
    # The server answering is the process we started, on the port we chose, and our child.
    assert info["process_id"] == server.pid
    assert info["tcp_port"] == server.port
    stat = Path(f"/proc/{server.pid}/stat")
    if stat.exists():
        parent = int(stat.read_text().rsplit(")", 1)[1].split()[1])
        assert parent == os.getpid()
    return server


def test_every_redis_fixture_is_a_server_this_session_started(
    redis_base: str,
    redis_url: str,
    redis_db_url: str,  # noqa: F811 - the fixture imported above
    private_redis: str,
) -> None:
    base = _server_of(redis_base)
    assert _server_of(redis_url) == base
    assert _server_of(redis_db_url) == base
    assert _server_of(private_redis) != base  # the fault tests' server is a second one


def test_only_servers_of_the_session_are_flushed() -> None:
    before = list(conftest.MACHINE_REDIS_ATTEMPTS)
    for base in (f"redis://127.0.0.1:{MACHINE_REDIS_PORT}", "redis://localhost:6390"):
        refused = pytest.raises(RuntimeError, match="not a redis-server this test session started")
        with refused, fresh_database(base, [2]):
            pass
    assert before == conftest.MACHINE_REDIS_ATTEMPTS  # refused before any connection


@pytest.mark.parametrize(
    "client",
    [
        lambda: redis.Redis(),  # redis-py's defaults: localhost:6379
        lambda: redis.Redis(host="127.0.0.1", port=MACHINE_REDIS_PORT, db=13),
        lambda: redis.Redis.from_url("redis://localhost/14"),
    ],
    ids=["defaults", "127.0.0.1:6379", "url-without-port"],
)
def test_a_connection_to_the_machine_redis_is_refused_and_recorded(client: Callable[[], redis.Redis]) -> None:
    before = len(conftest.MACHINE_REDIS_ATTEMPTS)
    try:
        with pytest.raises(redis.ConnectionError, match="never connects to the machine's Redis"):
            client().ping()
        assert len(conftest.MACHINE_REDIS_ATTEMPTS) > before  # the session would fail on it
    finally:
        del conftest.MACHINE_REDIS_ATTEMPTS[before:]  # this test's own, deliberate attempt


# --- no test file names the machine's Redis for a connection --------------------------------------

_MACHINE_URL = re.compile(r"(127\.0\.0\.1|localhost|\[::1\])(:6379\b|/|$)")


def _machine_url(value: str) -> bool:
    if "TEST_REDIS_URL" in value:
        return True
    scheme, sep, rest = value.partition("://")
    return bool(sep) and scheme in {"redis", "rediss"} and bool(_MACHINE_URL.match(rest.split("@")[-1]))


def _default_client(node: ast.Call) -> str | None:
    name = node.func.attr if isinstance(node.func, ast.Attribute) else getattr(node.func, "id", "")
    chosen = {k.arg for k in node.keywords} & {"host", "port", "unix_socket_path", None}
    return name if name in {"Redis", "StrictRedis"} and not node.args and not chosen else None


def machine_redis_uses(source: str) -> list[str]:
    """Where ``source`` would connect to the machine's Redis: a loopback URL on 6379 or without a
    port, ``port=6379``, a Redis client built with no host at all, or the old opt-in variable."""
    tree = ast.parse(source)
    docstrings = {
        id(node.body[0].value)
        for node in ast.walk(tree)
        if isinstance(node, ast.Module | ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef)
        and node.body
        and isinstance(node.body[0], ast.Expr)
        and isinstance(node.body[0].value, ast.Constant)
    }
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Constant) and isinstance(node.value, str) and id(node) not in docstrings:
            if _machine_url(node.value):
                found.append(f"line {node.lineno}: {node.value!r}")
        elif (
            isinstance(node, ast.keyword)
            and node.arg == "port"
            and isinstance(node.value, ast.Constant)
            and node.value.value == MACHINE_REDIS_PORT
        ):
            found.append(f"line {node.value.lineno}: port={MACHINE_REDIS_PORT}")
        elif isinstance(node, ast.Call) and (name := _default_client(node)):
            found.append(f"line {node.lineno}: {name}() with redis-py's default host and port")
    return found


def test_the_source_check_finds_each_way_to_name_the_machine_redis() -> None:
    """The check below can fail: each spelling is found, and the harmless ones are not."""
    bad = {
        'redis.Redis.from_url("redis://127.0.0.1:6379/13")': 1,
        'url = "redis://localhost:6379"': 1,
        'url = "redis://localhost/0"': 1,
        'redis.Redis(host="127.0.0.1", port=6379)': 1,
        "redis.Redis()": 1,
        "redis.StrictRedis(db=14)": 1,
        'os.environ.get("TEST_REDIS_URL", "x")': 1,
    }
    for source, count in bad.items():
        assert len(machine_redis_uses(source)) == count, source
    good = [
        'redis.Redis(host="127.0.0.1", port=1)',
        'env = {"REDIS_URL": "redis://redis:6379/0"}',  # a compose service name, parsed only
        'load_settings({"REDIS_URL": "redis://127.0.0.1:6390/0"})',
        'redis.Redis.from_url(f"{redis_base}/13")',
        '"""Never the machine\'s Redis (redis://127.0.0.1:6379)."""',
    ]
    for source in good:
        assert machine_redis_uses(source) == [], source


def test_no_test_file_connects_to_the_machine_redis() -> None:
    found = {
        str(path.relative_to(TESTS)): uses
        for path in sorted(TESTS.rglob("*.py"))
        if path != Path(__file__).resolve()  # its examples above are the check's own test
        and (uses := machine_redis_uses(path.read_text()))
    }
    assert found == {}
